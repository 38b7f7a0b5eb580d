"""Remote access: clients in other processes (TCP/TLS) and clients inside worker processes.

``open_connection(address)`` is the client side (remote/client.py; ``deploy/remote_cluster.py`` makes the
cluster manager ``Client("tcp://host:port")`` holds of it); ``serve_remote_clients(cluster)`` is the
scheduler side a cluster starts (remote/server.py); the message checks and encoding live in
remote/protocol.py.
"""

from ..comm.tcp import AuthenticationError
from .client import RemoteConnection, open_connection

__all__ = ["AuthenticationError", "RemoteConnection", "open_connection"]

"""Remote access: clients in other processes (TCP/TLS) and clients inside worker processes.

``connect_cluster(address)`` is what ``Client("tcp://host:port")`` calls (remote/client.py);
``serve_remote_clients(cluster)`` is the scheduler side a cluster starts (remote/server.py); the
message shapes and their encoding live in remote/protocol.py.
"""

from ..comm.tcp import AuthenticationError
from .client import RemoteCluster, connect_cluster

__all__ = ["AuthenticationError", "RemoteCluster", "connect_cluster"]

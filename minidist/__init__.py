"""minidist: a small, fast local task engine with the API of dask.distributed's Client.

    from minidist import Client
    client = Client()                       # a LocalCluster sized to this machine
    future = client.submit(pow, 2, 10)
    future.result()                         # 1024

Public names only; see docs/architecture.md for how the pieces fit.
"""

from .client import Client
from .context import default_client, get_client, get_worker, rejoin, secede, worker_client
from .deploy.local import LocalCluster
from .errors import CancelledError, CommClosedError, KilledWorker, TaskSerializationError
from .futures import Future, as_completed, fire_and_forget, wait
from .progress import progress

__version__ = "0.1.0"

__all__ = [
    "CancelledError",
    "Client",
    "CommClosedError",
    "Future",
    "KilledWorker",
    "LocalCluster",
    "progress",
    "TaskSerializationError",
    "as_completed",
    "default_client",
    "fire_and_forget",
    "get_client",
    "get_worker",
    "rejoin",
    "secede",
    "wait",
    "worker_client",
]

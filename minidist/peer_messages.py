"""The messages of the process links other than worker pipes: remote clients ◄─► the cluster's server,
the cluster ◄─► its template process, and SubprocessCluster ◄── its scheduler process::

    remote client ──► server  ClientHello  Register  Unregister  Fetch  Invoke  + the client messages
    server ──► remote client  Welcome  Reply  Reports
    cluster ──► template      ForkWorker          template ──► cluster   WorkerForked  ForkRefused  WorkerExited
    scheduler process ──► SubprocessCluster       ClusterStarted  ClusterFailed

Named tuples like those of ``messages.py`` (and pickled the same way), kept apart because none of them
travels on a worker pipe. Messages from remote peers are checked against the field annotations here
(``message_checks.check_fields``); only ``REMOTE_REQUESTS`` types are accepted from them.
"""

from typing import Any, NamedTuple, Optional

from .messages import CLIENT_MESSAGES, Key, pickled_as_fields

# -------------------------------------------------------------------------- remote client ◄─► server


@pickled_as_fields
class ClientHello(NamedTuple):
    """The first message of a remote link; ``machine`` tells whether shared memory is shared."""

    machine: str
    pid: Optional[int]


@pickled_as_fields
class Welcome(NamedTuple):
    """The answer to ``ClientHello``: the cluster's description."""

    info: dict


@pickled_as_fields
class Register(NamedTuple):
    """A client on this link wants reports under ``client``."""

    client: str


@pickled_as_fields
class Unregister(NamedTuple):
    """The client ``client`` on this link closed."""

    client: str


@pickled_as_fields
class Fetch(NamedTuple):
    """Ask for the stored value of ``key``; answered by a ``Reply``."""

    request_id: int
    key: Key


@pickled_as_fields
class Invoke(NamedTuple):
    """Call the named scheduler operation (``scheduler/operations.py``); answered by a ``Reply``."""

    request_id: int
    name: str
    args: tuple
    kwargs: dict


@pickled_as_fields
class Reply(NamedTuple):
    """The answer to a ``Fetch`` or ``Invoke``: a value when ``ok``, else the exception."""

    request_id: int
    ok: bool
    value: Any


@pickled_as_fields
class Reports(NamedTuple):
    """``TaskStatus`` items for the client ``client`` on this link."""

    client: str
    items: list


# ---------------------------------------------------------------- cluster ◄─► template process


@pickled_as_fields
class ForkWorker(NamedTuple):
    """Fork a worker with these settings; its descriptors travel beside the message."""

    request_id: int
    env: dict
    cwd: str
    running_board: bool  # the second descriptor, if sent, is the worker's running board


@pickled_as_fields
class WorkerForked(NamedTuple):
    """The template forked the worker of ``request_id``."""

    request_id: int
    pid: int


@pickled_as_fields
class ForkRefused(NamedTuple):
    """The template would not fork (e.g. it has threads): the cluster starts a fresh interpreter."""

    request_id: int
    reason: str


@pickled_as_fields
class WorkerExited(NamedTuple):
    """A worker the template forked has exited (the template reaps its children)."""

    pid: int
    returncode: int


# ------------------------------------------------------- SubprocessCluster ◄── scheduler process


@pickled_as_fields
class ClusterStarted(NamedTuple):
    """The scheduler process is up: ``info`` has its address, secret, security and pid."""

    info: dict


@pickled_as_fields
class ClusterFailed(NamedTuple):
    """The scheduler process could not start its cluster (it exits)."""

    error: Any


REMOTE_REQUESTS = (ClientHello, Register, Unregister, Fetch, Invoke, *CLIENT_MESSAGES)

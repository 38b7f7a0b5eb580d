"""The client side of the remote protocol: a connection whose proxies ``Client`` uses like a local cluster's.

``open_connection(address)`` returns a ``RemoteConnection`` whose ``scheduler`` and ``operations`` look
like a LocalCluster's to ``Client``, but forward over one link (``deploy/remote_cluster.py`` wraps it in
the cluster manager ``RemoteCluster``)::

    Client ──post(msg)──► RemoteScheduler ──► outbox ──► sender thread ──encode──► transport
    Client ◄─report(items)── sessions[client_id] ◄── dispatch ◄── reader (thread or worker pipe)
    fetch / invoke ──► request id + concurrent Future ──► ... ──► Reply(id, ok, value) sets it

Two transports share everything else (``ClientLink``):

- ``TCPLink``: a ``Connection`` to a scheduler's listener, with a reader thread of its own.
- ``WorkerLink``: inside a process worker, for ``get_client()`` in tasks. Frames travel in the worker's
  own messages (``ClientFrame(frame)`` up, ``ClientReply(frame)`` down) and the worker's main
  thread hands replies to ``receive``.

``post`` only appends to a queue (safe even from ``Future.__del__``); the sender thread drains it, so a
burst of submissions and releases costs one frame, and turns each ``ReleasePending`` into a ``Release``
of the keys its client hands over then. When the connection is lost every wait fails with
CommClosedError: pending requests, and the pending futures of every client on this link.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import queue
import threading
from typing import Callable, Optional

from ..comm.serialize import Payload
from ..comm.shm import SegmentStore
from ..data_plane import PickledPlane
from ..errors import CommClosedError
from ..messages import ClientFrame, Release, ReleasePending, TaskStatus
from ..peer_messages import (
    ClientHello,
    Fetch,
    Invoke,
    Register,
    Reply,
    Reports,
    Unregister,
    Welcome,
)
from .protocol import decode, encode, machine_id, next_batch

logger = logging.getLogger("minidist.client")

_DEFAULT_TIMEOUT = 10.0
_link_numbers = itertools.count(1)


class _Sessions(dict):
    """``scheduler.sessions`` of a remote cluster: registering a client tells the scheduler."""

    def __init__(self, link: ClientLink):
        super().__init__()
        self._link = link

    def __setitem__(self, client_id, client) -> None:
        super().__setitem__(client_id, client)
        self._link.enqueue(Register(client_id))

    def pop(self, client_id, *default):
        found = super().pop(client_id, *default)
        try:
            self._link.enqueue(Unregister(client_id))
        except CommClosedError:
            pass
        return found


class ClientLink:
    """Requests out through a sender thread, replies and reports in; transport-independent."""

    def __init__(self, peer: str):
        self.peer = peer
        self.sessions = _Sessions(self)
        self.info: dict = {}
        self._welcome = threading.Event()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: dict = {}  # request id -> concurrent.futures.Future
        self._request_ids = itertools.count(1)
        self._lock = threading.Lock()
        self.closed = False
        self.lost_reason: Optional[str] = None
        self._sender = threading.Thread(
            target=self._send_loop, daemon=True, name=f"minidist-client-send-{next(_link_numbers)}"
        )

    # --------------------------------------------------------------------------------------- sending

    def start(self, timeout: float) -> dict:
        """Start the sender, say hello, wait for the scheduler's welcome; returns its info."""
        self._sender.start()
        self.enqueue(ClientHello(machine_id(), None))
        if not self._welcome.wait(timeout):
            self.close()
            raise TimeoutError(f"The scheduler at {self.peer} did not answer within {timeout:g}s")
        if self.lost_reason is not None:
            raise CommClosedError(self.lost_reason)
        return self.info

    def enqueue(self, message) -> None:
        if self.closed:
            raise CommClosedError(self.lost_reason or f"The connection to {self.peer} is closed")
        self._outbox.put(message)

    def post(self, message) -> None:
        # a ReleasePending is queued as it is: the sender thread takes its batch of keys when it gets
        # to it (_releases_taken), in its place after the submissions of those keys, and the futures
        # dropped meanwhile are counted off there, off the thread that dropped them
        self.enqueue(message)

    def _releases_taken(self, batch: list) -> list:
        """(Sender thread.) ``batch`` with each ReleasePending turned into a Release of the keys its
        client hands over (none: left out)."""
        out = []
        for message in batch:
            if type(message) is ReleasePending:
                session = self.sessions.get(message.client)
                keys = session.take_releases() if session is not None else ()
                if not keys:
                    continue
                message = Release(message.client, tuple(keys))
            out.append(message)
        return out

    def request(self, kind, *fields) -> concurrent.futures.Future:
        """Send ``kind(request_id, *fields)`` (a Fetch or an Invoke); its Reply sets the future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        request_id = next(self._request_ids)
        with self._lock:
            if self.closed:
                future.set_exception(
                    CommClosedError(self.lost_reason or f"The connection to {self.peer} is closed")
                )
                return future
            self._pending[request_id] = future
        self._outbox.put(kind(request_id, *fields))
        return future

    def _send_loop(self) -> None:
        while True:
            batch, done = next_batch(self._outbox)
            batch = self._releases_taken(batch)
            if batch:
                try:
                    self.transmit(encode(batch))
                except Exception as exc:
                    self.lost(f"Lost the connection to the scheduler at {self.peer}: {exc}")
                    return
            if done:
                return

    def transmit(self, frame: bytes) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------- receiving

    def receive(self, frame: bytes) -> None:
        """A frame from the scheduler (reader thread, or a worker's main thread): never blocks."""
        for message in decode(frame):
            kind = type(message)
            if kind is Reports:
                client = self.sessions.get(message.client)
                if client is not None:
                    client.report(message.items)
            elif kind is Reply:
                with self._lock:
                    future = self._pending.pop(message.request_id, None)
                if future is None:
                    continue
                if message.ok:
                    future.set_result(message.value)
                else:
                    future.set_exception(message.value)
            elif kind is Welcome:
                self.info = message.info
                self._welcome.set()

    def lost(self, reason: str) -> None:
        """The connection is gone: every pending request and future fails with CommClosedError."""
        with self._lock:
            if self.lost_reason is None:
                self.lost_reason = reason
            was_closed, self.closed = self.closed, True
            pending, self._pending = self._pending, {}
        self._outbox.put(None)  # lets the sender leave
        self._welcome.set()
        error = CommClosedError(self.lost_reason)
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        if was_closed:
            return
        for client in list(dict.values(self.sessions)):
            keys = client.pending_keys()  # a session: report(), take_releases(), pending_keys()
            if keys:
                client.report(
                    [
                        TaskStatus(key, "erred", CommClosedError(self.lost_reason), "")
                        for key in keys
                    ]
                )

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued, then hang up. Idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self.lost_reason is None:
                self.lost_reason = f"The connection to {self.peer} was closed by this client"
        self._outbox.put(None)
        if self._sender.is_alive() and threading.current_thread() is not self._sender:
            self._sender.join(timeout)
        self.lost(self.lost_reason)
        self.hang_up(timeout)

    def hang_up(self, timeout: float) -> None:
        pass


class TCPLink(ClientLink):
    """A link over an authenticated TCP/TLS connection."""

    def __init__(self, conn, address: str):
        super().__init__(address)
        self.conn = conn
        self._reader = threading.Thread(
            target=self._read_loop, daemon=True, name=f"minidist-client-read-{next(_link_numbers)}"
        )

    def start(self, timeout: float) -> dict:
        self._reader.start()
        return super().start(timeout)

    def transmit(self, frame: bytes) -> None:
        self.conn.send_bytes(frame)

    def _read_loop(self) -> None:
        while True:
            try:
                frame = self.conn.recv_bytes()
            except Exception as exc:
                self.lost(f"Lost the connection to the scheduler at {self.peer}: {exc}")
                return
            try:
                self.receive(frame)
            except Exception as exc:  # a frame we cannot read: the stream can no longer be trusted
                self.conn.close()
                self.lost(f"The scheduler at {self.peer} sent an unreadable message: {exc}")
                return

    def hang_up(self, timeout: float) -> None:
        self.conn.close()
        if threading.current_thread() is not self._reader and self._reader.is_alive():
            self._reader.join(timeout)


class WorkerLink(ClientLink):
    """A link from a task inside a process worker, through the worker's pipe to the scheduler."""

    def __init__(self, worker_address: str, report: Callable[[ClientFrame], None]):
        super().__init__(f"the scheduler of worker {worker_address}")
        self._report = report  # the worker runtime's report(): up the pipe with its other messages

    def transmit(self, frame: bytes) -> None:
        self._report(ClientFrame(frame))

    def receive(self, frame: bytes) -> None:
        try:
            super().receive(frame)
        except Exception:  # the worker's main thread calls this: it must never fail
            logger.exception("a client inside worker %s could not read a reply", self.peer)


# ------------------------------------------------------------------------------------- the proxies


class RemoteScheduler:
    """What ``Client`` calls ``scheduler``: post, fetch and the sessions table, over a link."""

    def __init__(self, link: ClientLink, info: dict, data_plane: PickledPlane):
        self.link = link
        self.sessions = link.sessions
        self.cluster_id = info.get("cluster_id")
        self.address = info.get("scheduler_address")  # dask's client.scheduler.address
        # remote clients always pickle (the server converts for thread workers); large buffers go
        # to shared memory when the scheduler is on this machine
        self.data_plane = data_plane

    def post(self, message) -> None:
        self.link.post(message)

    def fetch_async(self, key) -> concurrent.futures.Future:
        """The stored value of ``key`` as a concurrent Future (KeyError if it is gone)."""
        return self.link.request(Fetch, key)

    def fetch(self, key) -> Payload:
        return self.fetch_async(key).result()


class RemoteOperations:
    """What ``Client`` calls ``operations``: named operations run by the scheduler's process."""

    def __init__(self, link: ClientLink):
        self.link = link

    def invoke(self, name: str, *args, **kwargs):
        return self.link.request(Invoke, name, args, kwargs).result()

    def invoke_async(self, name: str, *args, **kwargs) -> concurrent.futures.Future:
        return self.link.request(Invoke, name, args, kwargs)


class RemoteConnection:
    """One open link to a scheduler, with the two proxies ``Client`` uses: ``scheduler`` and
    ``operations``. ``deploy/remote_cluster.py`` makes a cluster manager of it (``RemoteCluster``)."""

    def __init__(self, link: ClientLink, info: dict, segment_store: Optional[SegmentStore] = None):
        self.link = link
        self.info = info  # what the scheduler said in its welcome (address, name, dashboard...)
        self.scheduler = RemoteScheduler(link, info, PickledPlane(segment_store))
        self.operations = RemoteOperations(link)
        self.segment_store = segment_store  # shared memory for arguments, on the same machine only

    def close(self, timeout: float = 2.0) -> None:
        """Hang up (the cluster itself goes on)."""
        self.link.close(timeout)
        if self.segment_store is not None:
            self.segment_store.close()  # stop watching this client's buffers for writes


def store_for(info: dict) -> Optional[SegmentStore]:
    """Shared memory for arguments and scatter, when the scheduler is a process-mode one on this machine."""
    if (
        not info.get("processes")
        or info.get("shm_threshold") is None
        or info.get("machine") != machine_id()
    ):
        return None
    return SegmentStore(info["cluster_id"], threshold=info["shm_threshold"])


def open_connection(
    address: str, security=None, timeout=None, secret: Optional[bytes] = None, **kwargs
) -> RemoteConnection:
    """Connect to the scheduler at ``address`` (``tcp://host:port`` or ``tls://host:port``).

    ``secret`` defaults to the one the scheduler published for this address (same user, same machine).
    Raises AuthenticationError for a wrong or missing secret, ConnectionRefusedError when nothing
    listens there.
    """
    from ..comm.tcp import connect

    if kwargs:
        raise TypeError(f"Client(address) takes no cluster keywords; got {sorted(kwargs)}")
    if security is True:
        raise ValueError(
            "security=True makes sense for a new cluster; to connect to one, pass its "
            "Security object (cluster.security)"
        )
    timeout = _DEFAULT_TIMEOUT if timeout is None else float(timeout)
    conn = connect(address, secret=secret, security=security or None, timeout=timeout)
    return start_link(TCPLink(conn, address), timeout)


def start_link(link: ClientLink, timeout: float) -> RemoteConnection:
    """Say hello over ``link`` and wait for the welcome; the link is closed if that fails."""
    try:
        info = link.start(timeout)
    except BaseException:
        link.close()
        raise
    return RemoteConnection(link, info, store_for(info))


def connect_worker(link: WorkerLink, store: Optional[SegmentStore]) -> RemoteConnection:
    """A connection to the cluster that owns a process worker, over the worker's own pipe (for the
    client of its tasks; the worker's main thread must already hand replies to ``link.receive``)."""
    info = link.start(_DEFAULT_TIMEOUT)
    return RemoteConnection(link, info, store)

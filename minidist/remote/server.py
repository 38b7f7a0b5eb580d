"""Serving clients in other processes: the scheduler side of minidist's remote protocol.

``serve_remote_clients(cluster)`` starts what the cluster's options ask for and returns a
``RemoteServer`` (``address``, ``security``, ``close()``), or None when no socket was asked for::

    accept thread ──Listener.accept()──► authenticated Connection ──► TCPSession
                    (bad secrets and garbage are logged on the scheduler logger and dropped there)

    TCPSession   reader thread: frame ──decode──► Session.handle(message)
                                 UpdateGraph... ──► scheduler.post(...)  (checked, converted by the codec)
                                 Fetch  ──► scheduler.fetch(key) ──► Reply
                                 Invoke ──► a short-lived thread ──► cluster.operations.invoke ──► Reply
                 writer thread: outbox ──► encode ──► Connection.send_bytes
                 scheduler.sessions[client_id] = _ClientSlot ──report(items)──► outbox

The scheduler thread only appends to an outbox, so a slow or stopped remote client never stalls the
cluster. The outbox is bounded (``comm/outbox.py``): answers to a client's own requests wait for room
(the client's requests are then read no faster than it reads the answers), and a client that lets
10,000 reports pile up has stopped reading: its connection is closed. Clients inside process workers use the same ``Session`` logic over the worker's pipe
(``route_worker_client``, installed as ``handle.client_router``); there the scheduler thread itself
reads the requests, and replies go back as ``ClientReply(frame)`` worker messages.

When a connection ends, whatever its clients still wanted is released. ``close()`` stops accepting,
closes every connection (remote clients then see CommClosedError) and removes the secret file.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any, Callable, Optional

from ..comm.addressing import format_address, parse_address, resolve_interface
from ..comm.outbox import MAX_OUTBOX_BYTES, MAX_OUTBOX_MESSAGES, Outbox
from ..errors import CommClosedError
from ..messages import CLIENT_MESSAGES, FIRE_AND_FORGET, ClientReply, ForgetClients, ReleasePending
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
from ..security import Security, new_secret
from .protocol import (
    MalformedMessage,
    ProcessModeCodec,
    ThreadModeCodec,
    check_request,
    decode,
    encode,
    inline_payload,
    machine_id,
    portable_exception,
    portable_items,
)

_connection_numbers = itertools.count(1)


def _scheduler_logger(cluster) -> logging.Logger:
    logs = getattr(cluster, "logs", None)
    found = getattr(logs, "scheduler_logger", None) if logs is not None else None
    return found if found is not None else logging.getLogger("minidist.scheduler")


def listen_address(options) -> Optional[tuple]:
    """``(address, security)`` the cluster should listen on, or None for no socket at all.

    Follows dask: processes=True listens on TCP; processes=False stays ``inproc://`` unless a port, a
    tcp/tls protocol, a host with a protocol, or encryption asks for a socket.
    """
    security = options.security
    host = options.host
    protocol = (options.protocol or "").lower().replace("://", "")
    if host and "://" in host:
        protocol, _, host = host.partition("://")
    if security is True:
        security = Security.temporary()
    elif security is False:
        security = None
    if not protocol:
        if security is not None and security.require_encryption:
            protocol = "tls"
        elif options.processes or options.scheduler_port:
            protocol = "tcp"
        else:
            protocol = "inproc"
    if protocol == "inproc":
        return None
    if protocol == "tls" and security is None:
        security = Security.temporary()  # tls:// alone: temporary credentials, as security=True
    if options.interface:
        host = resolve_interface(options.interface)
    if host and ":" in host and not host.startswith("["):  # "127.0.0.1:8786" given as host
        _, host, port = parse_address(host)
        return format_address(protocol, host, port), security
    return format_address(protocol, host or "127.0.0.1", options.scheduler_port or 0), security


def serve_remote_clients(cluster) -> Optional[RemoteServer]:
    """Start a listener for remote clients if the cluster's options ask for one."""
    plan = listen_address(cluster.options)
    if plan is None:
        return None
    address, security = plan
    return RemoteServer(cluster, address, security)


class RemoteServer:
    """The listening socket, its accept thread and the open sessions of one cluster."""

    def __init__(self, cluster, address: str, security: Optional[Security] = None):
        from ..comm.tcp import Listener

        self.cluster = cluster
        self.logger = _scheduler_logger(cluster)
        self.security = security
        self.secret = new_secret()
        self._listener = Listener(
            address, self.secret, security, on_reject=self._on_reject, publish_secret=True
        )
        self.address = self._listener.address
        # remote clients always send pickled work: a cluster of thread workers unpickles it on arrival
        self.codec = (
            ProcessModeCodec() if cluster.scheduler.data_plane.pickles else ThreadModeCodec()
        )
        self.machine = machine_id()
        self.sessions: set = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(
            target=self._accept_loop, name="minidist-remote-accept", daemon=True
        )
        self._thread.start()
        self.logger.info(
            "Scheduler listening for clients at %s (%s)",
            self.address,
            self._listener.frame_integrity,
        )

    def __repr__(self) -> str:
        return f"<RemoteServer {self.address} sessions={len(self.sessions)}>"

    def _on_reject(self, peer: str, reason: str) -> None:
        self.logger.warning("Refused a connection from %s: %s", peer, reason)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn = self._listener.accept()
            except CommClosedError:
                return
            except Exception:
                if self._closed:
                    return
                self.logger.exception("accepting a client connection failed; still listening")
                continue
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                session = TCPSession(self, conn)
                self.sessions.add(session)
            session.start()

    def forget(self, session) -> None:
        with self._lock:
            self.sessions.discard(session)

    def close(self, timeout: float = 2.0) -> None:
        """Stop accepting, close every session, remove the secret file. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sessions = list(self.sessions)
        self._listener.close()
        for session in sessions:
            session.close()
        for session in sessions:
            session.join(timeout)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self.logger.info("Scheduler stopped listening at %s", self.address)


class _ClientSlot:
    """What ``scheduler.sessions[client_id]`` holds for a remote client: reports go to its session."""

    __slots__ = ("session", "client_id")

    def __init__(self, session: Session, client_id: str):
        self.session = session
        self.client_id = client_id

    def report(self, items: list, wakes: Optional[list] = None) -> None:
        self.session.send(Reports(self.client_id, items))

    def take_releases(self) -> list:
        return []  # remote clients send their releases themselves (see remote/client.py)


class Session:
    """The transport-independent part of serving one connection."""

    def __init__(self, cluster, codec, logger: logging.Logger, peer: str):
        self.cluster = cluster
        self.scheduler = cluster.scheduler
        self.codec = codec
        self.logger = logger
        self.peer = peer
        self.client_ids: set = set()
        self.same_machine = False
        self.closed = False
        self._handlers: dict[type, Callable[[Any], None]] = {
            ClientHello: self._on_hello,
            Register: self._on_register,
            Unregister: self._on_unregister,
            Fetch: self._on_fetch,
            Invoke: self._on_invoke,
        }
        for kind in CLIENT_MESSAGES:
            self._handlers[kind] = self._on_client_message

    def send(self, message) -> None:
        raise NotImplementedError

    def welcome(self) -> dict:
        cluster = self.cluster
        store = getattr(cluster, "segment_store", None)
        return {
            "scheduler_address": cluster.scheduler_address,
            "cluster_id": cluster.cluster_id,
            "name": str(getattr(cluster, "name", "")),
            "type": type(cluster).__name__,
            "processes": self.scheduler.data_plane.pickles,
            "machine": machine_id(),
            "shm_threshold": store.threshold if store is not None else None,
            "dashboard_link": getattr(cluster, "dashboard_link", None),
        }

    def handle_frame(self, data) -> None:
        try:
            messages = decode(data)
        except MalformedMessage as exc:
            self.logger.warning("Dropped a malformed message from %s: %s", self.peer, exc)
            return
        for message in messages:
            try:
                self.handle(message)
            except MalformedMessage as exc:
                self.logger.warning("Dropped a malformed message from %s: %s", self.peer, exc)
            except Exception:
                self.logger.exception(
                    "Dropped a message from %s that could not be handled", self.peer
                )

    def handle(self, message) -> None:
        check_request(message, self.client_ids)
        self._handlers[type(message)](message)

    def _on_client_message(self, message) -> None:
        if type(message) is not ReleasePending:  # remote clients send their releases explicitly
            self.scheduler.post(self.codec.incoming(message))

    def _on_invoke(self, message: Invoke) -> None:
        threading.Thread(
            target=self._invoke,
            args=(message.request_id, message.name, message.args, message.kwargs),
            name="minidist-remote-op",
            daemon=True,
        ).start()

    def _on_register(self, message: Register) -> None:
        if message.client == FIRE_AND_FORGET or message.client in self.scheduler.sessions:
            raise MalformedMessage(f"client id {message.client!r} is taken")
        self.client_ids.add(message.client)
        self.scheduler.sessions[message.client] = _ClientSlot(self, message.client)

    def _on_unregister(self, message: Unregister) -> None:
        if message.client in self.client_ids:
            self.client_ids.discard(message.client)
            self.scheduler.sessions.pop(message.client, None)

    def _on_hello(self, message: ClientHello) -> None:
        self.same_machine = message.machine == machine_id()
        self.client_ids.add(FIRE_AND_FORGET)  # fire_and_forget posts under this pseudo-client
        self.send(Welcome(self.welcome()))

    def _on_fetch(self, message: Fetch) -> None:
        request_id = message.request_id
        try:
            value = self.codec.stored_value(self.scheduler.fetch(message.key))
            if not self.same_machine:
                value = inline_payload(value)
        except KeyError:
            self.send(Reply(request_id, False, KeyError(message.key)))
        except Exception as exc:
            self.send(Reply(request_id, False, portable_exception(exc)))
        else:
            self.send(Reply(request_id, True, value))

    def _invoke(self, request_id, name: str, args: tuple, kwargs: dict) -> None:
        try:
            args = self.codec.invoke_args(name, args)
            result = self.cluster.operations.invoke(name, *args, **kwargs)
            reply = Reply(request_id, True, self.codec.invoke_result(name, result))
        except BaseException as exc:  # noqa: B036 - every failure goes back to the caller
            reply = Reply(request_id, False, portable_exception(exc))
        try:
            self.send(reply)
        except Exception:
            self.logger.debug("could not answer %s: its connection is gone", self.peer)

    def release_clients(self) -> None:
        """The connection is gone: drop its clients and release whatever they still wanted."""
        client_ids = [c for c in self.client_ids if c != FIRE_AND_FORGET]
        self.client_ids.clear()
        for client_id in client_ids:
            self.scheduler.sessions.pop(client_id, None)
        if client_ids and not self.scheduler.closing:
            self.scheduler.post(ForgetClients(tuple(client_ids)))


class TCPSession(Session):
    """One authenticated connection: a reader thread and a writer thread."""

    max_outbox_bytes = MAX_OUTBOX_BYTES
    max_outbox_messages = MAX_OUTBOX_MESSAGES

    def __init__(self, server: RemoteServer, conn):
        super().__init__(server.cluster, server.codec, server.logger, conn.peer)
        self.server = server
        self.conn = conn
        self._outbox = Outbox(self.max_outbox_bytes, self.max_outbox_messages)
        number = next(_connection_numbers)
        self._reader = threading.Thread(
            target=self._read_loop, name=f"minidist-remote-read-{number}", daemon=True
        )
        self._writer = threading.Thread(
            target=self._write_loop, name=f"minidist-remote-write-{number}", daemon=True
        )

    def start(self) -> None:
        self.logger.info("Client connection from %s", self.peer)
        self._writer.start()
        self._reader.start()

    def send(self, message) -> None:
        if type(message) is Reports:  # from the scheduler thread, which must never wait
            message = Reports(message.client, portable_items(message.items))
            if not self._outbox.put(message, wait=False) and not self.closed:
                self.logger.warning(
                    "Closed the connection from %s: it stopped reading (%d messages waiting)",
                    self.peer,
                    self.max_outbox_messages,
                )
                self.close()
            return
        # answers to this client's own requests: wait for room (a closed outbox drops them)
        value = getattr(message, "value", None)  # a Payload, or bytes: a value without buffers
        size = len(value) if isinstance(value, bytes) else getattr(value, "nbytes", 0) or 0
        self._outbox.put(message, size)

    def _read_loop(self) -> None:
        from ..comm.tcp import ProtocolError

        conn = self.conn
        while True:
            try:
                data = conn.recv_bytes()
            except CommClosedError:
                break
            except ProtocolError as exc:
                self.logger.warning("Closed the connection from %s: %s", self.peer, exc)
                break
            except Exception:
                self.logger.exception("Reading from %s failed; closing its connection", self.peer)
                break
            self.handle_frame(data)
        self._finish()

    def _write_loop(self) -> None:
        while True:
            batch, done = self._outbox.take()
            if batch:
                try:
                    self.conn.send_bytes(encode(batch))
                except CommClosedError:
                    self._outbox.close()  # wakes whoever waits for room
                    return
                except Exception:
                    self.logger.exception("Could not send to %s; closing its connection", self.peer)
                    self._outbox.close()
                    self.conn.close()
                    return
            if done:
                return

    def _finish(self) -> None:
        if not self.closed:
            self.closed = True
            self.logger.info("Client connection from %s closed", self.peer)
        self.release_clients()
        self._outbox.finish()
        self.conn.close()
        self.server.forget(self)

    def close(self) -> None:
        self.closed = True
        self._outbox.close()
        self.conn.close()

    def join(self, timeout: float) -> None:
        for thread in (self._reader, self._writer):
            if thread is not threading.current_thread() and thread.is_alive():
                thread.join(timeout)


# ------------------------------------------------------------------------ clients inside workers


class WorkerSession(Session):
    """Serves the clients of tasks inside one process worker, over that worker's pipe."""

    def __init__(self, cluster, handle, thread_id: int):
        super().__init__(cluster, ProcessModeCodec(), _scheduler_logger(cluster), handle.address)
        self.worker = handle  # the ProcessWorkerHandle
        self.same_machine = True
        self._thread_id = thread_id  # the scheduler thread, which owns the handle's pipe

    def send(self, message) -> None:
        if type(message) is Reports:
            message = Reports(message.client, portable_items(message.items))
        if threading.get_ident() == self._thread_id:
            self._deliver(message)
        else:  # only the scheduler thread may write to a worker's pipe
            self.scheduler.call(lambda scheduler: self._deliver(message))

    def worker_gone(self) -> None:
        """The worker died, retired or was stopped (its handle closes): release what its clients held."""
        if not self.closed:
            self.closed = True
            self.release_clients()

    def _deliver(self, message) -> None:
        if self.closed:
            return
        if self.worker.address not in self.scheduler.workers:
            self.closed = True
            self.release_clients()  # the worker is gone, and so are its clients
            return
        try:
            self.worker.send_messages([ClientReply(encode([message]))])
        except (OSError, ValueError):
            self.logger.debug("could not answer a client in %s", self.worker.address)


def route_worker_client(cluster, scheduler, handle, frame) -> None:
    """``handle.client_router`` for process workers: a frame from a client inside a task."""
    session = getattr(handle, "client_session", None)
    if session is None:
        session = handle.client_session = WorkerSession(cluster, handle, threading.get_ident())
        _drop_dead_worker_sessions(scheduler)
    session.handle_frame(frame)


def _drop_dead_worker_sessions(scheduler) -> None:
    for slot in list(scheduler.sessions.values()):
        session = getattr(slot, "session", None)
        if isinstance(session, WorkerSession) and session.worker.address not in scheduler.workers:
            session.closed = True
            session.release_clients()

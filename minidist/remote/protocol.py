"""The remote protocol: which messages a link carries, their encoding, and the checks at the boundary.

Both transports (a TCP/TLS ``Connection``, and a worker's pipe for clients inside tasks) carry the same
frames: a pickled *list* of messages (the named types of ``minidist/messages.py``), so bursts cost one
frame::

    client ──► scheduler                           scheduler ──► client
    ClientHello(machine, pid)                      Welcome(info)                 answer to hello
    Register(client) / Unregister(client)          Reports(client, items)        futures resolve
    UpdateGraph Release Scatter Cancel Retry       (what a local client posts, checked: check_request)
    Fetch(request_id, key)                         Reply(request_id, ok, stored value or exception)
    Invoke(request_id, name, args, kwargs)         Reply(request_id, ok, SchedulerOperations.invoke's result)

A peer's message is checked against the field annotations of its type (``message_checks.check_fields``), plus
the few rules a type cannot say (remote tasks come pickled; a client posts only for ids it registered).
Pickle is safe here only because every peer has authenticated with the cluster secret (or is a worker
process the cluster started itself). Exceptions that cannot be pickled are replaced by a RuntimeError
carrying their text, so a strange exception never breaks a connection.

``ThreadModeCodec`` adapts a remote client (which always speaks process mode: pickled functions and
``Payload`` arguments) to a cluster whose workers are threads and whose stored values are plain objects.
"""

from __future__ import annotations

import os
import pickle
import queue
import socket
import traceback as traceback_module
from typing import Any

import cloudpickle

from ..comm.serialize import Payload, deserialize, loads_function, serialize
from ..comm.shm import SharedBuffer, open_segment
from ..message_checks import check_fields
from ..messages import (
    CLIENT_MESSAGES,
    MalformedMessage,
    NewTask,
    Scatter,
    TaskColumns,
    TaskStatus,
    UpdateGraph,
)
from ..peer_messages import REMOTE_REQUESTS, Reply, Reports
from ..tracebacks import encode_error

# ------------------------------------------------------------------------------------------- encoding


def encode(messages: list) -> bytes:
    """One frame for a list of messages; unpicklable exceptions or values are replaced, not fatal."""
    try:
        return pickle.dumps(messages, protocol=5)
    except Exception:
        pass
    portable = []
    for message in messages:
        try:
            pickle.dumps(message, protocol=5)
        except Exception:
            message = _portable_message(message)
        portable.append(message)
    return pickle.dumps(portable, protocol=5)


def next_batch(outbox: queue.SimpleQueue) -> tuple:
    """Block for one message, then take all that queued meanwhile: ``(messages, finished)``.

    ``None`` in the queue is the sender's signal to leave once what came before it is sent.
    """
    batch = [outbox.get()]
    while True:
        try:
            batch.append(outbox.get_nowait())
        except queue.Empty:
            break
    finished = batch[-1] is None
    return [m for m in batch if m is not None], finished


def decode(data: bytes) -> list:
    """The list of messages in a frame; MalformedMessage if it is not one."""
    try:
        messages = pickle.loads(data)
    except Exception as exc:
        raise MalformedMessage(
            f"undecodable frame of {len(data)} bytes ({type(exc).__name__}: {exc})"
        ) from None
    if type(messages) is not list:
        raise MalformedMessage(
            f"a frame must hold a list of messages, not {type(messages).__name__}"
        )
    return messages


def _portable_message(message):
    kind = type(message)
    if kind is Reply:
        if message.ok:
            try:
                value = serialize(
                    message.value, None
                )  # cloudpickle may manage what pickle could not
                pickle.dumps(value, protocol=5)
            except Exception as exc:
                error = RuntimeError(f"the result could not be sent: {exc}")
                return Reply(message.request_id, False, error)
            return Reply(message.request_id, True, value)
        return Reply(message.request_id, False, portable_exception(message.value))
    if kind is Reports:
        return Reports(message.client, portable_items(message.items))
    raise MalformedMessage(f"cannot encode a {kind.__name__} message")


def portable_exception(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError that keeps its type and text."""
    try:
        pickle.loads(pickle.dumps(exc, protocol=5))
        return exc
    except Exception:
        try:
            pickle.loads(cloudpickle.dumps(exc, protocol=5))
        except Exception:
            kind = type(exc)
            return RuntimeError(
                f"{kind.__module__}.{kind.__qualname__}: {exc} (could not be pickled)"
            )
        return exc


def portable_items(items: list) -> list:
    """Report items with text tracebacks and picklable exceptions (thread workers give objects)."""
    out = []
    for item in items:
        key, status, exception, tb = item
        if status == "erred":
            if tb is not None and not isinstance(tb, str):
                tb = "".join(traceback_module.format_tb(tb))
            if isinstance(exception, BaseException):
                exception = portable_exception(exception)
            item = TaskStatus(key, status, exception, tb)
        out.append(item)
    return out


def inline_payload(payload: Payload | bytes) -> Payload | bytes:
    """The same value with shared-memory buffers copied in: for a client on another machine."""
    if isinstance(payload, bytes) or not payload.segments():
        return payload
    buffers = tuple(
        bytes(open_segment(b.name, b.nbytes, b.offset, b.pooled))
        if isinstance(b, SharedBuffer)
        else b
        for b in payload.buffers
    )
    return Payload(payload.header, buffers, payload.nbytes)


def machine_id() -> str:
    """Who shares this machine's /dev/shm: same host, same boot, same /dev/shm mount, same user.

    Segments are 0600 and readers refuse other users' files (comm/shm.py), so a client of another user
    on the same machine must get its values inline.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    try:
        info = os.stat("/dev/shm")
        shm = f"{info.st_dev}:{info.st_ino}"
    except OSError:
        shm = "none"
    return f"{socket.gethostname()}/{boot}/{shm}/{os.geteuid()}"


# ---------------------------------------------------------------------------------- message checks


def check_request(message, client_ids) -> None:
    """Raise MalformedMessage unless ``message`` is one a remote peer may send, with well-typed fields.

    Only the types in ``peer_messages.REMOTE_REQUESTS`` pass (never ``Call``, which would run code on the
    scheduler thread and dodge blocked_handlers); client messages only for client ids this connection
    registered; tasks only in the pickled form (a ``RunSpec`` of bytes and a ``Payload`` or bytes).
    """
    kind = type(message)
    if kind not in REMOTE_REQUESTS:
        raise MalformedMessage(f"{kind.__name__} is not a message a remote client may send")
    check_fields(message)
    if kind in CLIENT_MESSAGES:
        client = getattr(message, "client", None)
        if client is not None and client not in client_ids:
            raise MalformedMessage(
                f"{kind.__name__} for client {client!r}, which did not register here"
            )
    if kind is UpdateGraph:
        if type(message.tasks) is TaskColumns:
            _check_columns(message.tasks)
        for spec in message.tasks:
            if type(spec) is not NewTask:
                raise MalformedMessage(f"malformed task in UpdateGraph: {spec!r:.200}")
            check_fields(spec)
            _check_pickled_run_spec(spec.run_spec)
    elif kind is Scatter:
        if set(message.values) != set(message.nbytes):
            raise MalformedMessage("Scatter needs matching dicts of values and sizes")
        if any(type(v) is not Payload and type(v) is not bytes for v in message.values.values()):
            raise MalformedMessage("scattered values must be Payloads or bytes")


def _check_columns(columns: TaskColumns) -> None:
    """A graph's tasks as columns: tuples of one length each, and a dict of whole tasks."""
    parts = (columns.keys, columns.dependencies, columns.run_specs, columns.prefixes)
    if any(type(part) is not tuple for part in parts) or type(columns.special) is not dict:
        raise MalformedMessage("TaskColumns needs four tuples and a dict")
    if len({len(part) for part in parts}) != 1:
        raise MalformedMessage("TaskColumns' columns differ in length")
    if any(type(prefix) is not str for prefix in columns.prefixes):
        raise MalformedMessage("TaskColumns' prefixes must be strings")


def _check_pickled_run_spec(run_spec) -> None:
    if type(run_spec) is not tuple or len(run_spec) != 3:
        raise MalformedMessage(
            "a task's run_spec must be a tuple (function_id, function, arguments), not "
            f"{type(run_spec).__name__}"
        )
    function_id, function, arguments = run_spec
    if type(function_id) is not bytes:
        raise MalformedMessage("a remote task's function_id must be bytes")
    if not (function is None or isinstance(function, bytes)):
        raise MalformedMessage("a remote task's function must be a pickle (bytes) or None")
    if type(arguments) is not Payload and type(arguments) is not bytes:
        raise MalformedMessage("a remote task's arguments must be a Payload or bytes")


# ------------------------------------------------------------------------------------------- codecs


class ProcessModeCodec:
    """The cluster stores Payloads and runs pickled functions: messages pass through unchanged."""

    def incoming(self, message):
        return message

    def stored_value(self, value) -> Any:
        return value

    def invoke_args(self, name: str, args: tuple) -> tuple:
        return args

    def invoke_result(self, name: str, result):
        return result


class ThreadModeCodec(ProcessModeCodec):
    """The cluster holds plain objects and calls functions directly (processes=False with a port).

    Incoming run_specs get their function and ``(args, kwargs)`` as objects, scattered Payloads become
    objects; values, ``run`` results and ``run_on_scheduler`` results are serialised on the way out.
    """

    def __init__(self):
        self._functions: dict = {}  # function id -> callable, decoded once per connection

    def _function(self, function_id: bytes, blob):
        function = self._functions.get(function_id)
        if function is None:
            if blob is None:
                raise MalformedMessage("a task's function was never sent on this connection")
            try:
                function = loads_function(blob)
            except Exception as exc:
                function = _raiser(exc)  # the task errs with the reason, the connection carries on
            if len(self._functions) >= 512:
                self._functions.pop(next(iter(self._functions)))
            self._functions[function_id] = function
        return function

    def incoming(self, message):
        kind = type(message)
        if kind is UpdateGraph:
            converted = []
            for spec in message.tasks:
                function_id, blob, args_payload = spec.run_spec
                function = self._function(function_id, blob)
                try:
                    arguments = deserialize(args_payload)
                except Exception as exc:
                    function, arguments = _raiser(exc), ((), {})
                converted.append(spec._replace(run_spec=(function_id, function, arguments)))
            return message._replace(tasks=tuple(converted))
        if kind is Scatter:
            values = {k: deserialize(v) for k, v in message.values.items()}
            return message._replace(values=values)
        return message

    def stored_value(self, value) -> Payload | bytes:
        return serialize(value, None)

    def invoke_args(self, name: str, args: tuple) -> tuple:
        if name in ("run", "run_on_scheduler"):
            blob, args_payload, *rest = args
            return (loads_function(blob), deserialize(args_payload), *rest)
        return args

    def invoke_result(self, name: str, result):
        if name == "run_on_scheduler":
            return serialize(result, None)
        if name == "run":
            return {
                address: (True, serialize(value, None)) if ok else (False, encode_error(*value))
                for address, (ok, value) in result.items()
            }
        return result


def _raiser(exc: BaseException):
    def fail(*args, **kwargs):
        raise RuntimeError(f"The task could not be unpacked on the scheduler: {exc!r}") from exc

    return fail

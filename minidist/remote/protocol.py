"""The remote protocol: message shapes, their encoding, and the conversions at the session boundary.

Both transports (a TCP/TLS ``Connection``, and a worker's pipe for clients inside tasks) carry the same
frames: a pickled *list* of messages, so bursts cost one frame::

    client ──► scheduler                           scheduler ──► client
    ("hello", machine_id, pid)                     ("welcome", info dict)        answer to hello
    ("register", client_id)                        ("report", client_id, items)  futures resolve
    ("unregister", client_id)                      ("reply", request_id, ok, value or exception)
    ("post", message)     what a local client posts: update_graph, release, scatter, cancel
    ("fetch", request_id, key)                     -> reply: the stored value (a Payload)
    ("invoke", request_id, name, args, kwargs)     -> reply: SchedulerOperations.invoke's result

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
from ..scheduler.instructions import NewTask
from ..tracebacks import encode_error

POST_KINDS = ("update_graph", "release", "release-pending", "scatter", "cancel", "retry")


class MalformedMessage(ValueError):
    """A message from a peer does not have the shape the protocol expects (it is dropped)."""


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
    kind = message[0] if isinstance(message, tuple) and message else None
    if kind == "reply":
        _, request_id, ok, value = message
        if ok:
            try:
                value = serialize(value, None)  # cloudpickle may manage what pickle could not
                pickle.dumps(value, protocol=5)
            except Exception as exc:
                return (
                    "reply",
                    request_id,
                    False,
                    RuntimeError(f"the result could not be sent: {exc}"),
                )
            return ("reply", request_id, True, value)
        return ("reply", request_id, False, portable_exception(value))
    if kind == "report":
        return ("report", message[1], portable_items(message[2]))
    raise MalformedMessage(f"cannot encode a {kind!r} message")


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
            item = (key, status, exception, tb)
        out.append(item)
    return out


def inline_payload(payload: Payload) -> Payload:
    """The same value with shared-memory buffers copied in: for a client on another machine."""
    if not payload.segments():
        return payload
    buffers = tuple(
        bytes(open_segment(b.name, b.nbytes, b.offset)) if isinstance(b, SharedBuffer) else b
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


def check_post(message, client_ids, processes: bool) -> None:
    """Raise MalformedMessage unless ``message`` is a client message the scheduler can take.

    Only client messages pass (never "call", which would run code on the scheduler thread and dodge
    blocked_handlers), only for client ids this connection registered, with the shapes the scheduler
    thread relies on.
    """
    if not isinstance(message, tuple) or not message or message[0] not in POST_KINDS:
        kind = message[0] if isinstance(message, tuple) and message else type(message).__name__
        raise MalformedMessage(f"{kind!r} is not a message a client may post")
    kind = message[0]
    shapes = {
        "update_graph": 4,
        "release": 3,
        "release-pending": 2,
        "scatter": 4,
        "cancel": 2,
        "retry": 2,
    }
    if len(message) != shapes[kind]:
        raise MalformedMessage(f"a {kind!r} message has {shapes[kind]} fields, not {len(message)}")
    if kind not in ("cancel", "retry") and message[1] not in client_ids:
        raise MalformedMessage(f"{kind!r} for client {message[1]!r}, which did not register here")
    if kind == "update_graph":
        tasks = message[2]
        if not isinstance(tasks, (tuple, list)) or not isinstance(message[3], (tuple, list)):
            raise MalformedMessage("update_graph needs a sequence of tasks and of wanted keys")
        for spec in tasks:
            if type(spec) is not NewTask or not _valid_run_spec(spec.run_spec):
                raise MalformedMessage(f"malformed task in update_graph: {spec!r:.200}")
    elif kind == "scatter":
        values, nbytes = message[2], message[3]
        if type(values) is not dict or type(nbytes) is not dict or set(values) != set(nbytes):
            raise MalformedMessage("scatter needs matching dicts of values and sizes")
        if any(type(v) is not Payload for v in values.values()):
            raise MalformedMessage("scattered values must be Payloads")
    elif kind in ("release", "cancel", "retry"):
        if not isinstance(message[-1], (tuple, list)):
            raise MalformedMessage(f"{kind!r} needs a sequence of keys")


def _valid_run_spec(run_spec) -> bool:
    return (
        type(run_spec) is tuple
        and len(run_spec) == 3
        and isinstance(run_spec[0], bytes)
        and (run_spec[1] is None or isinstance(run_spec[1], bytes))
        and type(run_spec[2]) is Payload
    )


# ------------------------------------------------------------------------------------------- codecs


class ProcessModeCodec:
    """The cluster stores Payloads and runs pickled functions: messages pass through unchanged."""

    def incoming(self, message: tuple) -> tuple:
        return message

    def stored_value(self, value) -> Any:
        return value

    def invoke_args(self, name: str, args: tuple) -> tuple:
        return args

    def invoke_result(self, name: str, result):
        return result


class ThreadModeCodec(ProcessModeCodec):
    """The cluster holds plain objects and calls functions directly (processes=False with a port).

    Incoming run_specs become ``(function, args, kwargs)``, scattered Payloads become objects; values,
    ``run`` results and ``run_on_scheduler`` results are serialised on the way out.
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

    def incoming(self, message: tuple) -> tuple:
        kind = message[0]
        if kind == "update_graph":
            _, client_id, tasks, wanted = message
            converted = []
            for spec in tasks:
                function_id, blob, args_payload = spec.run_spec
                function = self._function(function_id, blob)
                try:
                    args, kwargs = deserialize(args_payload)
                except Exception as exc:
                    function, args, kwargs = _raiser(exc), (), {}
                converted.append(spec._replace(run_spec=(function, args, kwargs)))
            return ("update_graph", client_id, tuple(converted), wanted)
        if kind == "scatter":
            _, client_id, values, nbytes = message
            return ("scatter", client_id, {k: deserialize(v) for k, v in values.items()}, nbytes)
        return message

    def stored_value(self, value) -> Payload:
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

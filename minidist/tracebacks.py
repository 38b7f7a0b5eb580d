"""Tracebacks and exceptions from worker processes: how they are sent, and how the client rebuilds them.

A process worker sends its traceback as the text ``traceback.format_tb`` makes (it cannot pickle frames),
and its exception pickled by ``encode_error`` (or, if that fails, a RuntimeError carrying its text).
``rebuild_traceback`` turns that text back into a chain of ``types.TracebackType`` whose frames carry the
worker's file names, line numbers and function names, so ``Future.traceback()`` can be handed to
``traceback.format_tb``/``print_tb`` as with dask. Each frame comes from running a one-line stub compiled
under the remote file name at the remote line number; its source line shows when the file is readable
here too (the same machine).
"""

from __future__ import annotations

import pickle
import re
import traceback as traceback_module
import types
from typing import Optional

_FRAME_LINE = re.compile(
    r'^  File "(?P<file>.+)", line (?P<line>\d+), in (?P<name>.+)$', re.MULTILINE
)


def format_remote_traceback(tb) -> str:
    """The text of a traceback object (what crosses the process boundary instead of its frames)."""
    return "".join(traceback_module.format_tb(tb)) if tb is not None else ""


def encode_error(exc: BaseException, tb) -> tuple:
    """(pickled exception, traceback text) for a failure that leaves the process. An exception that
    cannot be pickled (or rebuilt) is replaced by a RuntimeError that keeps its type name and text."""
    text = format_remote_traceback(tb)
    try:
        blob = pickle.dumps(exc, protocol=5)
        pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt
    except Exception:
        substitute = RuntimeError(
            f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} "
            "(the original exception could not be pickled)"
        )
        blob = pickle.dumps(substitute, protocol=5)
    return blob, text


class _StubRaise(Exception):
    pass


def _stub_frame(filename: str, lineno: int, name: str):
    source = "\n" * (lineno - 1) + "raise _StubRaise"
    try:
        code = compile(source, filename, "exec").replace(co_name=name)
    except (SyntaxError, ValueError, TypeError):
        return None
    try:
        exec(code, {"_StubRaise": _StubRaise, "__name__": "minidist.remote_frame"})
    except _StubRaise as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next  # the stub's own frame is the innermost one
        return tb.tb_frame if tb is not None else None
    return None


def rebuild_traceback(text: str) -> Optional[types.TracebackType]:
    """A traceback object for ``traceback.format_tb`` output, or None if the text holds no frames."""
    tb = None
    for match in reversed(list(_FRAME_LINE.finditer(text or ""))):
        lineno = int(match["line"])
        frame = _stub_frame(match["file"], lineno, match["name"])
        if frame is not None:
            tb = types.TracebackType(tb, frame, frame.f_lasti, lineno)
    return tb

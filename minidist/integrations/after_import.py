"""Run a callback once an optional package has been imported, without ever importing it ourselves.

A ``Client`` offers itself to joblib (the ``"minidist"`` backend) and to dask (as its default scheduler).
Both packages take 0.1-0.3 s to import, and a program may never use them, so minidist does not import
them; and importing one on a background thread meanwhile can deadlock against the program's own imports
(Python's per-module import locks raise ``_DeadlockError`` when two threads enter a circular import from
both ends). Instead::

    when_imported("dask", callback)
        dask already imported ──► callback(module) now
        dask installed, not imported ──► a finder at the front of sys.meta_path waits for ``import dask``;
            dask loads as usual, then callback(module) runs and the finder leaves sys.meta_path
        not installed ──► nothing

The finder finds nothing itself: it wraps the real loader's ``exec_module`` for that one import. It is the
only trace minidist leaves in the caller's process, and only until the package is imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
from typing import Callable

_lock = threading.RLock()
_waiting: dict[str, list[Callable]] = {}  # top-level package -> callbacks to run after its import
_finder = None  # the waiting finder, while anything waits
_probing = threading.local()


def when_imported(name: str, callback: Callable) -> None:
    """Call ``callback(module)`` now if the top-level package ``name`` is fully imported, else right
    after its import finishes; nothing if it is not installed."""
    module = sys.modules.get(name)
    if module is not None and not _initialising(module):
        callback(module)
        return
    global _finder
    if module is None and not _installed(name):
        return
    with _lock:
        _waiting.setdefault(name, []).append(callback)
        if _finder is None:
            _finder = _AfterImport()
            sys.meta_path.insert(0, _finder)


def _installed(name: str) -> bool:
    _probing.active = True  # our own look-up: the finder stays out of it
    try:
        return importlib.util.find_spec(name) is not None
    finally:
        _probing.active = False


def _initialising(module) -> bool:
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _take(name: str) -> list[Callable]:
    """The callbacks waiting for ``name``; the finder leaves sys.meta_path once nothing waits."""
    global _finder
    with _lock:
        callbacks = _waiting.pop(name, [])
        if not _waiting and _finder is not None:
            try:
                sys.meta_path.remove(_finder)
            except ValueError:
                pass
            _finder = None
    return callbacks


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself. A look-up of a waited-for package (an import, or someone's
    ``importlib.util.find_spec`` probe) gets the real spec with its loader wrapped; the callbacks run
    when a wrapped loader actually executes the package, so a mere probe loses nothing."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _waiting or getattr(_probing, "active", False):
            return None
        _probing.active = True
        try:
            spec = importlib.util.find_spec(fullname)  # the real one, from the finders after us
        finally:
            _probing.active = False
        loader = getattr(spec, "loader", None)
        exec_module = getattr(loader, "exec_module", None)
        if loader is None or exec_module is None:
            return spec

        def exec_then_call(module):
            exec_module(module)
            del loader.exec_module  # this loader object belongs to this one look-up
            for callback in _take(fullname):
                callback(module)

        loader.exec_module = exec_then_call
        return spec

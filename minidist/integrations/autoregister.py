"""The "minidist" joblib backend without an import: offered to joblib when a ``Client`` is created.

``Client()`` calls ``offer_joblib_backend()``. joblib takes about 0.1 s to import, so it is never
imported for this, and nothing happens at ``import minidist``::

    Client() ──► offer_joblib_backend()
        joblib already imported ──► joblib.parallel.EXTERNAL_BACKENDS["minidist"] = load_backend
        joblib installed, not imported yet ──► a finder on sys.meta_path waits for ``import joblib``;
            joblib loads as usual, then the finder adds the same entry and leaves sys.meta_path
        joblib not installed ──► nothing

``EXTERNAL_BACKENDS`` is joblib's own registry of backends loaded on first use (it is how
``backend="dask"`` works): minidist/integrations/joblib.py is imported only when a ``Parallel`` call
asks for ``"minidist"``. It is named, not imported, here: the backend sits above the client it uses.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading

_BACKEND_MODULE = "minidist.integrations.joblib"
_lock = threading.Lock()
_finder = None  # the waiting finder, while there is one


def load_backend() -> None:
    """joblib calls this the first time a Parallel call asks for "minidist"; importing registers it."""
    importlib.import_module(_BACKEND_MODULE)


def offer_joblib_backend() -> None:
    """Make ``backend="minidist"`` known to joblib now or as soon as joblib is imported. Idempotent."""
    global _finder
    joblib_parallel = sys.modules.get("joblib.parallel")
    if joblib_parallel is not None:
        _add_entry(joblib_parallel)
        return
    with _lock:
        if _finder is not None or "joblib" in sys.modules:
            return  # already waiting, or joblib is half-way through its own import
        if importlib.util.find_spec("joblib") is None:
            return
        _finder = _AfterJoblibImport()
        sys.meta_path.insert(0, _finder)


def _add_entry(joblib_parallel) -> None:
    registry = getattr(joblib_parallel, "EXTERNAL_BACKENDS", None)
    backends = getattr(joblib_parallel, "BACKENDS", {})
    if isinstance(registry, dict) and "minidist" not in backends:
        registry.setdefault("minidist", load_backend)


def _stop_waiting() -> None:
    global _finder
    with _lock:
        if _finder is not None:
            try:
                sys.meta_path.remove(_finder)
            except ValueError:
                pass
            _finder = None


class _AfterJoblibImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when ``joblib`` is imported, arranges for the entry to be added after it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "joblib":
            return None
        _stop_waiting()
        spec = importlib.util.find_spec("joblib")  # the real one, from the finders after this one
        loader = getattr(spec, "loader", None)
        exec_module = getattr(loader, "exec_module", None)
        if loader is None or exec_module is None:
            return spec

        def exec_then_offer(module):
            exec_module(module)
            del loader.exec_module  # this loader object belongs to this one import of joblib
            joblib_parallel = sys.modules.get("joblib.parallel")
            if joblib_parallel is not None:
                _add_entry(joblib_parallel)

        loader.exec_module = exec_then_offer
        return spec

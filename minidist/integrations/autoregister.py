"""The "minidist" joblib backend without an import: offered to joblib when a ``Client`` is created.

``Client()`` calls ``offer_joblib_backend()``. joblib takes about 0.1 s to import, so it is never
imported for this, and nothing happens at ``import minidist``: ``after_import.when_imported`` adds the
entry now if joblib is imported, or right after the program imports it.

``EXTERNAL_BACKENDS`` is joblib's own registry of backends loaded on first use (it is how
``backend="dask"`` works): minidist/integrations/joblib.py is imported only when a ``Parallel`` call
asks for ``"minidist"``. It is named, not imported, here: the backend sits above the client it uses.
"""

from __future__ import annotations

import importlib
import sys

from .after_import import when_imported

_BACKEND_MODULE = "minidist.integrations.joblib"


def load_backend() -> None:
    """joblib calls this the first time a Parallel call asks for "minidist"; importing registers it."""
    importlib.import_module(_BACKEND_MODULE)


def offer_joblib_backend() -> None:
    """Make ``backend="minidist"`` known to joblib now or as soon as joblib is imported."""
    when_imported("joblib", _add_entry)


def _add_entry(joblib_module) -> None:
    joblib_parallel = sys.modules.get("joblib.parallel")  # joblib's __init__ imports it
    registry = getattr(joblib_parallel, "EXTERNAL_BACKENDS", None)
    backends = getattr(joblib_parallel, "BACKENDS", {})
    if isinstance(registry, dict) and "minidist" not in backends:
        registry.setdefault("minidist", load_backend)

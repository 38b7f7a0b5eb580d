"""Client calls that administer the cluster: retire or restart workers, copy data to workers, sizes,
call stacks, versions and metadata (dask.distributed's names and shapes).

Each is a thin wrapper over an operation of ``scheduler/admin.py`` reached through the client's
``ClusterCalls``, so it works the same for local clients, remote ones (``Client("tcp://...")``) and
clients in tasks. One ``ClusterAdmin`` per ``Client`` (built by its constructor); ``Client`` forwards the
public methods of the same names to it. What ``replicate``/``rebalance``/``retire_workers`` mean when every result lives
in the client process is in docs/moving.md.
"""

from __future__ import annotations

from typing import Optional

from .client_ops import ClusterCalls
from .futures import futures_of

_NO_DEFAULT = ("minidist", "no default")  # the marker scheduler/admin.py knows (plain data)


class ClusterAdmin:
    """The administrative operations of one cluster (see the module docstring)."""

    def __init__(self, calls: ClusterCalls):
        self._invoke = calls.invoke

    def _keys_of(self, futures) -> list:
        found = futures_of(futures)
        for future in found:
            future._wait(None)
        return list(dict.fromkeys(f.key for f in found))

    # ----------------------------------------------------------------------------------- workers

    def retire_workers(
        self, workers: Optional[list] = None, close_workers: bool = True, names=None, **kwargs
    ) -> dict:
        """Retire workers (addresses, or ``names=``): they take no new tasks, finish what they run and
        leave, and the cluster does not replace them. Nothing is lost: results live in the client
        process. Returns ``{address: worker info}``. Without arguments, retires idle workers (one
        stays). ``close_workers=False`` returns without waiting for them to leave."""
        if kwargs:
            raise TypeError(
                f"retire_workers() got unexpected keywords {sorted(kwargs)}; minidist takes "
                "workers=, names= and close_workers="
            )
        if isinstance(workers, (str, int)):
            workers = [workers]
        return self._invoke("retire_workers", workers, names, close_workers)

    def restart_workers(self, workers, timeout=None, raise_for_error: bool = True) -> dict:
        """Replace the given workers (addresses or names) by fresh ones of the same names; tasks they
        were running start again elsewhere. Returns ``{worker: "OK" | "removed"}``."""
        return self._invoke("restart_workers", list(workers), timeout)

    # -------------------------------------------------------------------------------------- data

    def replicate(self, futures, n: Optional[int] = None, workers=None, branching_factor=2, **kw):
        """Copy these results into the caches of ``n`` workers (default: every worker, or every one
        of ``workers``), so tasks there need not receive them. Waits for the futures first."""
        keys = self._keys_of(futures)
        if keys:
            self._invoke("replicate", keys, n, workers)

    def rebalance(self, futures=None, workers=None, **kwargs) -> None:
        """dask moves data between workers to even out memory; in minidist workers hold only caches
        of results kept in the client process, so there is nothing to move. Waits for ``futures``."""
        keys = self._keys_of(futures) if futures is not None else None
        self._invoke("rebalance", keys, workers)

    def nbytes(self, keys=None, summary: bool = True, **kwargs) -> dict:
        """Bytes of each result held by the cluster; by key prefix with ``summary`` (the default)."""
        if keys is not None:
            keys = [getattr(k, "key", k) for k in keys]
        return self._invoke("nbytes", keys, summary)

    def call_stack(self, futures=None, keys=None) -> dict:
        """``{worker: {key: [frame lines]}}`` of the tasks running now (of ``futures``/``keys`` only)."""
        wanted = list(keys or [])
        if futures is not None:
            wanted += [f.key for f in futures_of(futures)]
        return self._invoke("call_stack", wanted or None)

    # ------------------------------------------------------------------------------------- facts

    def get_versions(self, check: bool = False, packages=None) -> dict:
        """``{"scheduler", "workers", "client"}`` version facts; ``check=True`` raises ValueError when
        python, minidist or cloudpickle differ anywhere."""
        from .versions import mismatches, package_versions

        packages = list(packages or [])
        result = self._invoke("versions", packages)
        result["client"] = package_versions(packages)
        if check:
            problems = mismatches(result)
            if problems:
                raise ValueError("Mismatched versions: " + "; ".join(problems))
        return result

    def set_metadata(self, key, value) -> None:
        """Store small administrative data on the scheduler; a list key indexes nested dicts."""
        self._invoke("set_metadata", key, value)

    def get_metadata(self, keys, default=_NO_DEFAULT):
        """What ``set_metadata`` stored; ``default`` (or KeyError) when nothing is there."""
        return self._invoke("get_metadata", keys, default)

"""Worker memory limits: reading the ``memory_limit=`` keyword, measuring a worker, deciding what to do.

Data flow (the monitor itself lives with the cluster; this module has no threads and no state):

    memory_limit="auto" | 0.5 | "4GiB" | 2**30 | None
        -- parse_memory_limit(limit, n_workers) -->  bytes per worker, or None (no limit)
    worker pid
        -- process_memory(pid) -->                   bytes the worker really holds
    (used, limit)
        -- memory_action(used, limit) -->            OK | PAUSE (>= 80%) | TERMINATE (>= 95%)

What counts as "used": resident memory minus the resident pages that are shared with other mappings
(``rss - shared`` from /proc/<pid>/statm through psutil). Measured on Linux with a 200 MiB segment:

    worker that...                          rss     rss - shared    uss (memory_full_info)
    holds a 200 MiB bytearray               218 MB  208 MB          208 MB
    created + filled a 200 MiB /dev/shm     218 MB    8 MB          208 MB
    attached to a 200 MiB /dev/shm          218 MB    8 MB            8 MB

``uss`` counts a shared-memory segment as private while only one process maps it, which is exactly the
case of a worker that has just produced a large result; ``rss - shared`` leaves out every page that is
backed by /dev/shm (or by a file, such as shared libraries, which the kernel can drop anyway). It is also
cheap: one read of statm, where ``uss`` needs the whole smaps file. Where psutil reports no ``shared``
field (not Linux), plain ``rss`` is used.
"""

from __future__ import annotations

import enum
import os

from minidist.utils import format_bytes, parse_bytes

__all__ = [
    "MemoryAction",
    "format_bytes",
    "memory_action",
    "memory_kill_reason",
    "parse_bytes",
    "parse_memory_limit",
    "process_memory",
    "system_memory",
]

# cgroup files that may cap this process below the machine's memory (containers, systemd slices).
_CGROUP_LIMIT_FILES = (
    "/sys/fs/cgroup/memory.max",  # cgroup v2
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",  # cgroup v1
)


def system_memory() -> int:
    """Bytes of memory this process may use: the machine's total, lowered by a cgroup limit if any."""
    try:  # what psutil.virtual_memory().total reads, without importing psutil on the way to start
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        import psutil

        total = psutil.virtual_memory().total
    for path in _CGROUP_LIMIT_FILES:
        try:
            with open(path) as f:
                text = f.read().strip()
        except (OSError, ValueError):
            continue
        if text.isdigit() and 0 < int(text) < total:  # "max" or a huge number means unlimited
            total = int(text)
    return total


def parse_memory_limit(limit, n_workers: int, total_memory: int | None = None) -> int | None:
    """Bytes per worker for a ``memory_limit=`` keyword, or None for no limit.

    - ``"auto"``: the system memory shared evenly among ``n_workers``;
    - a number in (0, 1] (or a string such as ``"0.5"``): that fraction of the system memory;
    - a string with units (``"4GiB"``, ``"500MB"``) or a number of bytes above 1;
    - ``None``, ``0``, ``"0"`` or ``"none"``: no limit.

    The result never exceeds ``total_memory`` (by default :func:`system_memory`). Raises ValueError for
    anything else (negative numbers, unknown units, booleans).
    """
    if limit is None or (isinstance(limit, str) and limit.strip().lower() in ("none", "0", "")):
        return None
    if isinstance(limit, bool):
        raise ValueError(
            f"memory_limit={limit!r} is not a memory limit; use 'auto', a size or None"
        )
    total = system_memory() if total_memory is None else int(total_memory)

    if isinstance(limit, str) and limit.strip().lower() == "auto":
        return max(1, total // max(1, int(n_workers)))

    # Any number in (0, 1], typed or written as a string, is a fraction (as in dask: 1 means "all of it").
    fraction = _as_fraction(limit)
    if fraction is not None:
        nbytes = int(fraction * total)
    else:
        try:
            nbytes = parse_bytes(limit)
        except ValueError as e:
            raise ValueError(
                f"memory_limit={limit!r} is not a memory limit: {e}. Use 'auto', a fraction of system "
                "memory (0.5), a size ('4GiB', '500MB'), a number of bytes, or None for no limit"
            ) from None
    if nbytes == 0:
        return None
    return min(nbytes, total)


def _as_fraction(limit) -> float | None:
    try:
        value = float(limit)
    except (TypeError, ValueError):
        return None
    return value if 0 < value <= 1 else None


def process_memory(pid: int) -> int:
    """Bytes the process ``pid`` holds, not counting pages mapped from shared memory (see module doc).

    Raises psutil.NoSuchProcess when the process is gone.
    """
    import psutil  # imported on first use: a cluster's start does not wait for it

    info = psutil.Process(pid).memory_info()
    shared = getattr(info, "shared", 0)
    return max(0, info.rss - shared)


class MemoryAction(enum.Enum):
    """What the memory monitor should do with a worker."""

    OK = "ok"
    PAUSE = "pause"  # stop giving it new tasks until it drops below the pause threshold
    TERMINATE = "terminate"  # kill and replace it; its running tasks are retried elsewhere


def memory_action(
    used: int,
    limit: int | None,
    pause_fraction: float | None = 0.8,
    terminate_fraction: float | None = 0.95,
) -> MemoryAction:
    """Which action a worker using ``used`` bytes of a ``limit`` calls for.

    A fraction of None or False turns that action off; a limit of None (or 0) means no limit.
    """
    if not limit or limit <= 0:
        return MemoryAction.OK
    if terminate_fraction and used >= terminate_fraction * limit:
        return MemoryAction.TERMINATE
    if pause_fraction and used >= pause_fraction * limit:
        return MemoryAction.PAUSE
    return MemoryAction.OK


def memory_kill_reason(used: int, limit: int, terminate_fraction: float = 0.95) -> str:
    """The words a log line or a KilledWorker message uses for a worker terminated for its memory."""
    return (
        f"memory: it used {format_bytes(used)}, over {terminate_fraction:.0%} of its "
        f"{format_bytes(limit)} memory_limit"
    )

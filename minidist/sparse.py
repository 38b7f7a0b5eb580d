"""Right-sized copies of dicts and sets that a large run left nearly empty.

CPython never shrinks a dict's or a set's table when entries are deleted: a dict that once held one entry
for each of 100,000 tasks keeps a ~4 MB table after its last ``del`` (and a set the same), for the life of
the process. The books that hold one entry per task or per key (a client's futures, the scheduler's tasks
and results, each worker's cache and the scheduler's view of it) pass themselves through ``right_sized``
after they let go of keys and keep what it returns::

    self.tasks = right_sized(self.tasks)     # the same object, or a fresh compact copy

It returns the container itself unless its table is large (``MIN_TABLE_BYTES``) and mostly empty (fewer
than one entry per ``BYTES_PER_ENTRY`` of table); then a copy whose table fits the entries left, in the
same insertion order. The original is never modified, so a thread that reads the old object meanwhile
still sees every entry; the caller must be the only writer (or hold the writers' lock) while it rebinds.
Copying costs one pass over the entries left, and happens only after the container lost most of its
peak, so its cost is paid for by the deletions that made it sparse.
"""

from __future__ import annotations

import sys
from typing import TypeVar

MIN_TABLE_BYTES = 64 * 1024  # smaller tables are not worth a copy
BYTES_PER_ENTRY = 256  # a full table costs ~30-100 B an entry: above this it is mostly empty

Container = TypeVar("Container", dict, set)


def right_sized(container: Container) -> Container:
    """``container``, or a compact copy of it when its table is large and mostly empty."""
    size = sys.getsizeof(container)
    if size < MIN_TABLE_BYTES or len(container) * BYTES_PER_ENTRY > size:
        return container
    return type(container)(container)

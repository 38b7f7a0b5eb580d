"""A bounded queue of messages for one peer's writer thread: what a peer that stops reading may cost.

::

    producers ──put(message, nbytes, wait)──► Outbox ──take()──► writer thread ──► Connection.send_bytes
      (replies: wait for room; the scheduler's                (takes everything queued, as one batch)
       reports: never wait, refused when full)

Two bounds: ``max_bytes`` of payload (what a reply says it holds) and ``max_messages``. A producer that may
wait (a thread answering the peer's own requests) blocks while the bytes are over the bound: the peer's
requests are then read no faster than it reads the answers (back-pressure, nothing lost). A producer that
must not wait (the scheduler thread) gets False when ``max_messages`` are already waiting: the peer stopped
reading, and the caller closes its connection. ``close()`` wakes every waiting producer (False).
"""

from __future__ import annotations

import collections
import threading

MAX_OUTBOX_BYTES = 256 * 2**20
MAX_OUTBOX_MESSAGES = 10_000


class Outbox:
    """Thread-safe; one consumer (``take``), any number of producers (``put``)."""

    def __init__(self, max_bytes: int = MAX_OUTBOX_BYTES, max_messages: int = MAX_OUTBOX_MESSAGES):
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self._items: collections.deque = collections.deque()
        self._nbytes = 0
        self._closed = False
        self._finish = False
        self._changed = threading.Condition()

    @property
    def nbytes(self) -> int:
        """Payload bytes waiting now (not counting the batch the writer is sending)."""
        return self._nbytes

    def put(self, message, nbytes: int = 0, wait: bool = True) -> bool:
        """Queue ``message``; False if the outbox is closed, or full and ``wait`` is False."""
        with self._changed:
            if wait:
                while self._items and self._nbytes + nbytes > self.max_bytes and not self._closed:
                    self._changed.wait()
            elif len(self._items) >= self.max_messages:
                return False
            if self._closed:
                return False
            self._items.append(message)
            self._nbytes += nbytes
            self._changed.notify_all()
            return True

    def finish(self) -> None:
        """The writer takes what is queued, then stops (``take`` reports it as finished)."""
        with self._changed:
            self._finish = True
            self._changed.notify_all()

    def close(self) -> None:
        """Drop what waits and wake every producer; their puts return False from now on."""
        with self._changed:
            self._closed = self._finish = True
            self._items.clear()
            self._nbytes = 0
            self._changed.notify_all()

    def take(self) -> tuple[list, bool]:
        """Block until there is something (or the end): ``(every message queued, finished)``."""
        with self._changed:
            while not self._items and not self._finish:
                self._changed.wait()
            batch = list(self._items)
            self._items.clear()
            self._nbytes = 0
            self._changed.notify_all()  # room again for the producers
            return batch, self._finish and not self._items

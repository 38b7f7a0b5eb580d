"""How a client reads results: values straight from the scheduler's store, unpacked in the caller's thread.

One ``ResultReader`` per ``Client`` (built by its constructor from the cluster's scheduler and data plane)::

    Future.result() / gather ──► ResultReader.value(key) ──► scheduler.fetch(key) ──► plane.unpack_value
    remote clusters: prefetch(futures) asks for every finished value at once (one round trip)

A local cluster's ``fetch`` is a dict lookup; a remote one's is a request over the connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from .actors import Actor
from .errors import CancelledError
from .futures import Future, futures_in

if TYPE_CHECKING:
    from .data_plane import DataPlane

_SKIP = object()  # gather(errors="skip"): an erred future's place, dropped from its container


class ResultReader:
    """Reads the values of finished futures from one cluster's scheduler."""

    def __init__(self, scheduler: Any, plane: DataPlane):
        self._scheduler = scheduler
        self._plane = plane  # stored values are payloads (pickled) or plain objects
        self.adopt_actor: Optional[Callable[[Actor], Actor]] = None  # set by the Client (actors.py)

    def value(self, key, fetching=None):
        """The value of ``key``; ``fetching`` is a concurrent Future already asked for it (remote)."""
        try:
            value = self._scheduler.fetch(key) if fetching is None else fetching.result()
        except KeyError:
            raise CancelledError(f"The value of {key!r} is no longer held by the cluster") from None
        value = self._plane.unpack_value(value)
        if type(value) is Actor and self.adopt_actor is not None:
            value = self.adopt_actor(value)
        return value

    def prefetch(self, futures) -> Optional[dict]:
        """Remote clusters: ask for every finished value at once, one round trip rather than one each."""
        fetch_async = getattr(self._scheduler, "fetch_async", None)
        if fetch_async is None:
            return None
        return {f.key: fetch_async(f.key) for f in futures_in(futures) if f.status == "finished"}

    def fetch_async(self, key):
        """A concurrent Future of the stored value of ``key`` (remote clusters), or None (local)."""
        fetch_async = getattr(self._scheduler, "fetch_async", None)
        return None if fetch_async is None else fetch_async(key)

    def fill(self, obj, errors: str, prefetched: Optional[dict] = None):
        """``obj`` with each (done) Future replaced by its result, in the same containers."""
        typ = type(obj)
        if typ is Future:
            if obj.status == "error" and errors == "skip":
                return _SKIP
            if prefetched and obj.status == "finished" and obj.key in prefetched:
                return self.value(obj.key, prefetched[obj.key])
            return obj._result(None)  # done: never an awaitable, even inside a loop
        if typ is list or typ is tuple:
            items: list = []
            for item in obj:
                if type(item) is Future and item._state.status == "finished" and not prefetched:
                    items.append(self.value(item.key))  # most items of a gather: read at once
                    continue
                item = self.fill(item, errors, prefetched)
                if item is not _SKIP:
                    items.append(item)
            return items if typ is list else tuple(items)
        if typ is set or typ is frozenset:
            values = (self.fill(item, errors, prefetched) for item in obj)
            return typ(v for v in values if v is not _SKIP)
        if typ is dict:
            out = {}
            for k, v in obj.items():
                value = self.fill(v, errors, prefetched)
                if value is not _SKIP:
                    out[k] = value
            return out
        return obj

"""Published state: datasets (``publish_dataset``) and the event log (``log_event``/``subscribe_topic``).

Pure, like ``coordination.py``, and driven the same way by ``coordination_ops.py`` on the scheduler
thread: methods return ``Answer``/``Want``/``Unwant`` instructions. A published value holds the keys of
its futures under the owner ``published-<name>`` until it is unpublished, so another client can fetch
them later. Events are kept per topic (the newest ``EVENTS_PER_TOPIC``) and, for subscribers, in one
numbered stream: a subscriber asks for everything after the last number it saw and is parked until
something new is logged.
"""

from __future__ import annotations

import collections
from typing import Any, Optional

from .coordination import Answer, Packed, Unwant, Want

EVENTS_PER_TOPIC = 1000
_STREAM_LENGTH = 10_000


class Published:
    def __init__(self):
        self.datasets: dict = {}  # name -> Packed
        self.topics: dict = {}  # topic -> deque of (time, msg)
        self.stream: collections.deque = collections.deque(
            maxlen=_STREAM_LENGTH
        )  # (n, topic, t, msg)
        self.number = 0  # of the last event logged
        self.listeners: dict = {}  # client id -> parked token: each waits for the next event
        self.stopped: set = set()  # clients told to stop listening between two of their waits

    # ---------------------------------------------------------------------------------- datasets

    def publish(self, values: dict, override: bool) -> list:
        if not override:
            for name in values:
                if name in self.datasets:
                    raise KeyError(
                        f"Dataset {name!r} is already published; pass override=True to replace it, "
                        f"or unpublish_dataset({name!r}) first"
                    )
        out: list = []
        for name, value in values.items():
            owner = f"published-{name}"
            if value.keys:
                out.append(Want(owner, value.keys))
            old = self.datasets.get(name)
            self.datasets[name] = value
            if old is not None:
                gone = tuple(k for k in old.keys if k not in value.keys)
                if gone:
                    out.append(Unwant(owner, gone))
        return out

    def get(self, name, client: str, token) -> list:
        value: Optional[Packed] = self.datasets.get(name)
        if value is None:
            return [Answer(token, None)]
        out: list = [Want(client, value.keys)] if value.keys else []
        out.append(Answer(token, value))
        return out

    def names(self) -> list:
        return list(self.datasets)

    def unpublish(self, name) -> list:
        value = self.datasets.pop(
            name, None
        )  # unpublishing an unknown name is no error (as in dask)
        if value is None:
            return []
        return [Unwant(f"published-{name}", value.keys)] if value.keys else []

    # ------------------------------------------------------------------------------------ events

    def log_event(self, topic, msg: Any, now: float) -> list:
        topics = [topic] if isinstance(topic, str) else list(topic)
        fresh = []
        for name in topics:
            log = self.topics.get(name)
            if log is None:
                log = self.topics[name] = collections.deque(maxlen=EVENTS_PER_TOPIC)
            log.append((now, msg))
            self.number += 1
            fresh.append((self.number, name, now, msg))
            self.stream.append((self.number, name, now, msg))
        listeners, self.listeners = self.listeners, {}
        return [Answer(token, (self.number, fresh)) for token in listeners.values()]

    def get_events(self, topic=None):
        if topic is not None:
            return tuple(self.topics.get(topic, ()))
        return {name: tuple(log) for name, log in self.topics.items()}

    def wait_events(self, listener: str, after: Optional[int], token) -> list:
        """Answer ``(number, [(n, topic, time, msg)...])`` with the events after number ``after`` (None:
        from now on), waiting for one if there are none; None once ``stop_listening(listener)``."""
        if listener in self.stopped:
            self.stopped.discard(listener)
            return [Answer(token, None)]
        if after is None:
            return [Answer(token, (self.number, []))]
        if after < self.number:
            missed = [event for event in self.stream if event[0] > after]
            return [Answer(token, (self.number, missed))]
        self.listeners[listener] = token
        return []

    def stop_listening(self, listener: str) -> list:
        token = self.listeners.pop(listener, None)
        if token is None:
            self.stopped.add(listener)  # between two waits: the next one is answered None
            return []
        return [Answer(token, None)]

    def forget_listener(self, listener: str) -> list:
        """``listener``'s connection ended: answer its wait, if any, and keep nothing about it."""
        self.stopped.discard(listener)
        token = self.listeners.pop(listener, None)
        return [Answer(token, None)] if token is not None else []

    def withdraw(self, token) -> bool:
        for listener, parked in list(self.listeners.items()):
            if parked is token:
                del self.listeners[listener]
                return True
        return False

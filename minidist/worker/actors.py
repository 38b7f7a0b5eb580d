"""Actors on a worker: stateful objects that live in one worker and whose methods run there, one call at
a time, in the order the scheduler received the calls.

``client.submit(Counter, actor=True)`` runs ``ActorConstructor(Counter)`` as an ordinary task: the task
builds the instance, files it in ``runtime.actors`` under the task's key and returns an ``Actor`` proxy
(``minidist/actors.py``) that names the worker. Calls then travel with ``client.run``'s machinery::

    proxy.method(...) ─► operation "actor_call" ─► scheduler thread numbers the call (per actor)
                      ─► run(call_actor, ...) on that one worker ─► waits for its turn ─► method
                      ◄─ RunResult ◄─ result, or the method's exception

Numbering on the scheduler thread and waiting for the turn here keeps calls in order even though each
``run`` gets a thread of its own. The user's arguments arrive still packed and are unpacked only once
the call holds its turn, so a call that cannot even be unpacked still gives its turn up. The actor is
dropped when its key is released (``WorkerRuntime.free``) and dies with its worker.
"""

from __future__ import annotations

import threading
from typing import Any


class ActorSlot:
    """One actor instance and its turn counter."""

    def __init__(self, instance: Any):
        self.instance = instance
        self.next_turn = 0
        self.turns = threading.Condition()


def actors_of(runtime) -> dict:
    actors = getattr(runtime, "actors", None)
    if actors is None:
        actors = runtime.actors = {}
    return actors


class ActorConstructor:
    """The task function of ``submit(cls, actor=True)``: make the instance here, return a proxy.

    ``proxy`` is the client layer's ``Actor`` class, handed in by the client (this layer may not import
    it); it travels pickled by reference with the task."""

    def __init__(self, cls, proxy):
        self.cls = cls
        self.proxy = proxy
        self.__name__ = getattr(cls, "__name__", "actor")  # the task's key prefix

    def __call__(self, *args, **kwargs):
        from .runtime import current_key, current_runtime

        runtime = current_runtime()
        if runtime is None:
            raise RuntimeError("an actor can only be made by a task on a worker")
        instance = self.cls(*args, **kwargs)
        key = current_key()
        actors_of(runtime)[key] = ActorSlot(instance)
        return self.proxy(self.cls, runtime.address, key)


def call_actor(key, turn: int, kind: str, name: str, packed, dask_worker=None):
    """Run on the actor's worker (through ``run``): wait for ``turn``, then call the method ``name``
    (``kind`` "call") or read the attribute (``kind`` "getattr"). ``packed``: the user's
    ``(args, kwargs)``, a Payload for process workers."""
    slot = actors_of(dask_worker).get(key)
    if slot is None:
        raise LookupError(
            f"The actor {key!r} is not on worker {dask_worker.address} (released, or the worker was "
            "restarted); submit its class again with actor=True"
        )
    with slot.turns:
        while slot.next_turn != turn:
            slot.turns.wait()
    try:
        if kind == "getattr":
            return getattr(slot.instance, name)
        if type(packed) is tuple:
            args, kwargs = packed
        else:
            from ..comm.serialize import deserialize

            args, kwargs = deserialize(packed)
        return getattr(slot.instance, name)(*args, **kwargs)
    finally:
        with slot.turns:
            slot.next_turn += 1
            slot.turns.notify_all()


def drop_actors(runtime, keys) -> None:
    """``WorkerRuntime.free``: released actor keys take their instances with them."""
    actors = getattr(runtime, "actors", None)
    if actors:
        for key in keys:
            actors.pop(key, None)

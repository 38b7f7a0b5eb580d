"""Actor calls: the scheduler side of ``Actor`` proxies (``minidist/actors.py``, ``worker/actors.py``).

Mixed into ``SchedulerOperations``. A local client calls ``start_actor_call`` and gets a concurrent
future at once; a remote client invokes ``actor_call``, which waits on the same path in the server's
request thread::

    start_actor_call ─► scheduler thread: is the worker still here? number the call (per actor)
                     ─► run(call_actor) on that worker ─► future: (True, value) or (False, error)

Values and errors come back encoded as ``run`` encodes them (Payloads and pickled exceptions for process
workers, objects for thread workers); ``actor_call`` always returns the encoded form so it can cross a
connection. When the worker is gone, or dies during the call, the answer is an ``ActorLost`` naming
the actor, its worker and why.
"""

from __future__ import annotations

import concurrent.futures
import itertools
from typing import TYPE_CHECKING

from ..comm.serialize import serialize
from ..errors import ActorLost
from ..worker.actors import call_actor

if TYPE_CHECKING:
    from .operations import SchedulerOperations

ACTOR_HANDLER_NAMES = {"actor_call": "actor_call"}


class ActorOperations:
    """The actor calls of one cluster, built on its ``SchedulerOperations``."""

    def __init__(self, operations: SchedulerOperations):
        self._scheduler = operations.scheduler
        self._turns: dict = {}  # actor key -> counter of its calls (touched on the scheduler thread)

    def start_actor_call(self, key, address: str, kind: str, name: str, packed):
        """Start a call (``kind`` "call" or "getattr") on the actor ``key`` living on ``address``.

        Returns a concurrent future of ``(ok, value)`` in the cluster's encoding (see module doc)."""
        scheduler = self._scheduler
        scheduler.check_handler("actor_call")
        plane = scheduler.data_plane
        raw: concurrent.futures.Future = concurrent.futures.Future()
        answer: concurrent.futures.Future = concurrent.futures.Future()

        def start(scheduler) -> None:
            handle = scheduler.workers.get(address)
            if handle is None:
                self._turns.pop(key, None)
                answer.set_exception(_lost(key, address, "it is no longer in the cluster"))
                return
            turn = next(self._turns.setdefault(key, itertools.count()))
            function, arguments = plane.pack_call(call_actor, (key, turn, kind, name, packed), {})
            scheduler.runs.start([handle], function, arguments, raw)

        def finish(done: concurrent.futures.Future) -> None:
            if done.exception() is not None:
                answer.set_exception(done.exception())
                return
            results = done.result()
            if address not in results:
                answer.set_exception(_lost(key, address, "it left before answering"))
                return
            ok, value = results[address]
            if not ok and isinstance(value[0], RuntimeError) and "worker died" in str(value[0]):
                answer.set_exception(_lost(key, address, str(value[0])))
                return
            answer.set_result((ok, value))

        raw.add_done_callback(finish)
        scheduler.call(start)
        return answer

    def actor_call(self, key, address: str, kind: str, name: str, packed):
        """For remote clients: wait for the call and return ``(ok, value)`` encoded for the wire."""
        ok, value = self.start_actor_call(key, address, kind, name, packed).result()
        if self._scheduler.data_plane.pickles:
            return ok, value
        if ok:
            return True, serialize(value, None)
        from ..tracebacks import encode_error

        return False, encode_error(*value)


def _lost(key, address: str, why: str) -> ActorLost:
    return ActorLost(
        f"The actor {key!r} lived on worker {address}, which is gone ({why}); its state is lost. "
        "Submit its class again with actor=True to make a new one."
    )

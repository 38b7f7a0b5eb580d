"""Actors, the client side: ``Actor`` proxies and ``ActorFuture`` results (dask.distributed's API).

``client.submit(Counter, actor=True)`` returns a Future whose result is an ``Actor``: a proxy naming the
class, the worker the instance lives on and the task's key (see ``worker/actors.py`` for the worker
side)::

    counter = client.submit(Counter, actor=True).result()
    future = counter.increment(5)      # an ActorFuture, at once
    future.result()                    # the method's return value (or its exception, re-raised)
    counter.n                          # attribute reads wait and return the value

A proxy finds its client when first used (the task's client inside a task, else the default client),
so it works after travelling to another client or into a task. Calls from every client go through the
scheduler, which numbers them; the worker runs them one at a time in that order.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Optional

from .errors import FutureTimeoutError
from .worker.actors import ActorConstructor


def actor_constructor(cls) -> ActorConstructor:
    """The task function that makes ``cls`` into an actor on the worker that runs it."""
    if not isinstance(cls, type):
        raise TypeError(f"actor=True needs a class to instantiate on a worker, not {cls!r}")
    return ActorConstructor(cls, Actor)


def _current_client():
    from .default_clients import current_client_for_task, default_client

    return current_client_for_task() or default_client()


class Actor:
    """A proxy for an object living on one worker. Methods return ``ActorFuture``s; attributes are read
    remotely (waiting for the value)."""

    def __init__(self, cls, address: str, key, client=None):
        self._cls = cls
        self._address = address
        self._key = key
        self._client = client
        self._future = None  # a Future for the actor's key: the actor lives while it does

    def _bound(self, future) -> Actor:
        """A copy that holds ``future`` (so its client keeps wanting the key) and calls through its
        client. Clients do this for every proxy they hand out (``Client._get_value``)."""
        bound = Actor(self._cls, self._address, self._key, future.client)
        bound._future = future
        return bound

    def __reduce__(self):
        return (Actor, (self._cls, self._address, self._key))

    def __repr__(self) -> str:
        return f"<Actor: {self._cls.__name__}, key={self._key}>"

    def __dir__(self):
        return sorted(set(dir(type(self))) | {n for n in dir(self._cls) if not n.startswith("_")})

    def _start(self, kind: str, name: str, args: tuple = (), kwargs: Optional[dict] = None):
        client = self._client
        if client is None or client.status == "closed":
            client = self._client = _current_client()
        packed: Any = (args, kwargs or {})
        if client.processes:
            from .comm.serialize import serialize  # not on the way to `from minidist import Client`

            try:
                packed = serialize(packed, None)
            except Exception as exc:
                raise TypeError(
                    f"Could not send the arguments of {self._cls.__name__}.{name} to the actor: {exc}"
                ) from exc
        operations = client.operations
        start = getattr(getattr(operations, "actors", None), "start_actor_call", None)  # local
        if start is not None:
            future = start(self._key, self._address, kind, name, packed)
        else:
            future = operations.invoke_async(
                "actor_call", self._key, self._address, kind, name, packed
            )
        return ActorFuture(future, client.processes, f"{self._cls.__name__}.{name}", self)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        # as dask: only names the class declares are the actor's (a class attribute such as ``n = 0``
        # makes an instance attribute readable); anything else is an AttributeError here, so code that
        # probes objects with getattr(x, name, default) never waits on a worker
        try:
            attribute = getattr(self._cls, name)
        except AttributeError:
            raise AttributeError(
                f"{self._cls.__name__!r} declares no attribute {name!r}; an actor's attributes must "
                "be declared on its class (e.g. a class attribute n = 0) to be read through the proxy"
            ) from None
        if callable(attribute):

            def call(*args, **kwargs) -> ActorFuture:
                return self._start("call", name, args, kwargs)

            call.__name__ = name
            return call
        return self._start("getattr", name).result()


class ActorFuture:
    """The result of an actor method call: ``result(timeout=)``, ``done()``, ``exception()``; awaitable."""

    def __init__(self, future: concurrent.futures.Future, encoded: bool, what: str, actor: Actor):
        self._future = future
        self._encoded = (
            encoded  # values and errors arrive pickled (process workers, remote clients)
        )
        self._what = what
        self._actor = actor

    def __repr__(self) -> str:
        return f"<ActorFuture {self._what} {'done' if self.done() else 'pending'}>"

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: Optional[float] = None):
        try:
            ok, value = self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise FutureTimeoutError(
                f"{self._what} on actor {self._actor._key!r} did not finish within {timeout} s"
            ) from None
        if ok:
            if not self._encoded:
                return value
            from .comm.serialize import deserialize

            return deserialize(value)
        exc = value[0]
        if isinstance(exc, (bytes, bytearray)):
            import pickle

            exc = pickle.loads(exc)
        if hasattr(exc, "add_note"):
            exc.add_note(
                f"raised by {self._what} of actor {self._actor._key!r} on {self._actor._address}"
            )
        raise exc

    def exception(self, timeout: Optional[float] = None):
        try:
            self.result(timeout)
        except FutureTimeoutError:
            raise
        except BaseException as exc:  # noqa: B036 - the call's failure is the answer
            return exc
        return None

    def __await__(self):
        return self._await().__await__()

    async def _await(self):
        import asyncio

        await asyncio.wrap_future(self._future)
        return self.result()

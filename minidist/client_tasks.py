"""How a client packs work for the scheduler: keys, dependencies, pickled functions and arguments.

One ``TaskPacker`` per ``Client`` (built by its constructor from the scheduler, the cluster's shared
memory store and the client's ``FutureBook``)::

    submit/map(func, args) ──► function_ref(func): pickled once per client, id = hash of the pickle
                           ──► prepare(...): Futures in args ──► DependencyRef(key) + dependencies
                                             key = prefix-token (content hash for pure=True)
                                             process workers: arguments pickled now (errors here)
                           ──► a NewTask for the client to post (None if the key is already held)
    scatter(data)          ──► pack_scatter(...): keys and values (payloads for process workers)
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Optional

from .client_futures import FutureBook
from .comm.serialize import SerializationError, dumps_function, serialize, serialize_with_token
from .comm.shm import SegmentStore, unlink_segments
from .errors import TaskSerializationError
from .futures import Future
from .keys import random_token, tokenize_call
from .messages import DependencyRef, RunSpec, new_task
from .worker.runtime import sizeof

_FUNCTION_CACHE_SIZE = 512


def task_options(workers, resources, retries, priority, allow_other_workers) -> dict:
    """The scheduling options of ``submit``/``map`` as ``new_task`` takes them."""
    if isinstance(workers, (str, int)):
        workers = [workers]
    options = {
        "priority": priority,
        "retries": retries,
        "resources": resources,
        "allow_other_workers": allow_other_workers,
    }
    if workers is not None:
        options["workers"] = [str(w) if not isinstance(w, str) else w for w in workers]
    return options


class TaskPacker:
    """Turns calls and data into what the scheduler takes (see the module docstring)."""

    def __init__(self, scheduler: Any, store: Optional[SegmentStore], book: FutureBook):
        self._scheduler = scheduler
        self.processes: bool = scheduler.processes  # pickle everything now (process workers)?
        self.store = store
        self._book = book
        self._functions: dict = {}  # id(func) -> (func, function_id, blob)

    def function_ref(self, func) -> tuple:
        """(function_id, blob) for a callable, pickled once per client and cached."""
        cached = self._functions.get(id(func))
        if cached is not None and cached[0] is func:
            return cached[1], cached[2]
        try:
            blob = dumps_function(func)
        except Exception as exc:
            if self.processes:
                raise TaskSerializationError(
                    f"Could not pickle the function {func!r} of type {type(func).__name__} to send it to "
                    f"worker processes: {exc}. Define it at module level or use Client(processes=False)."
                ) from exc
            blob = None
        function_id = hashlib.blake2b(blob, digest_size=16).digest() if blob else uuid.uuid4().bytes
        if len(self._functions) >= _FUNCTION_CACHE_SIZE:
            self._functions.pop(next(iter(self._functions)))
        self._functions[id(func)] = (func, function_id, blob)
        return function_id, blob

    def prepare(self, func, function_ref, args, kwargs, key, pure, options) -> tuple:
        """(key, task to post, or None if this client already holds the key and shares it)."""
        dependencies: set = set()
        if args:
            args = self._replace_futures(args, dependencies)
        if kwargs:
            kwargs = self._replace_futures(kwargs, dependencies)
        function_id, blob = function_ref
        args_payload = None
        if key is None and pure and self.processes and self.store is not None:
            # one pass makes both the payload and its content token, so a large array is read once
            args_payload, token = self._serialize_arguments(args, kwargs, None, function_id)
            key = f"{options['prefix']}-{token}"
        elif key is None:
            token = tokenize_call(function_id, args, kwargs) if pure else random_token()
            key = f"{options['prefix']}-{token}"
        if key in self._book.states and key not in options.get("_force", ()):
            if args_payload is not None:
                # the shared task already has its arguments
                unlink_segments(args_payload.segments())
            return key, None  # already submitted by this client: share it
        run_spec: tuple
        if self.processes:
            if args_payload is None:
                args_payload, _ = self._serialize_arguments(args, kwargs, key, None)
            run_spec = RunSpec(function_id, blob, args_payload)
        else:
            run_spec = RunSpec(function_id, func, (args, kwargs))
        return key, new_task(key, dependencies, run_spec, **options)

    def graph_task(self, function, key, args: tuple, dependencies, **options):
        """A task with an explicit key whose arguments already hold DependencyRefs (dask graphs)."""
        function_id, blob = self.function_ref(function)
        run_spec: tuple
        if self.processes:
            run_spec = RunSpec(function_id, blob, self._serialize_arguments(args, {}, key, None)[0])
        else:
            run_spec = RunSpec(function_id, function, (args, {}))
        return new_task(key, dependencies, run_spec, **options)

    def pack_scatter(self, data, hash: bool) -> tuple:
        """(keys in ``data``'s order, {key: value or payload}, {key: nbytes}) for ``scatter``."""
        if isinstance(data, dict):
            items = list(data.items())
        elif isinstance(data, (list, tuple, set, frozenset)):
            items = [(None, value) for value in data]
        else:
            items = [(None, data)]
        values: dict = {}
        nbytes: dict = {}
        keys = []
        for key, value in items:
            if key is None:
                token = tokenize_call(b"scatter", (value,), {}) if hash else random_token()
                key = f"{type(value).__name__}-{token}"
            keys.append(key)
            if key in values:
                continue
            if self.processes:
                try:
                    payload = serialize(value, self.store)
                except SerializationError as exc:
                    raise TaskSerializationError(
                        f"Could not scatter {type(value).__name__}: {exc}"
                    ) from exc
                values[key], nbytes[key] = payload, payload.nbytes
            else:
                values[key], nbytes[key] = value, sizeof(value)
        return keys, values, nbytes

    def _serialize_arguments(self, args, kwargs, key, token_salt) -> tuple:
        """(payload, token or None) for a task's arguments; a clear error if they cannot be pickled."""
        try:
            if token_salt is not None:
                return serialize_with_token((args, kwargs), self.store, token_salt)
            return serialize((args, kwargs), self.store), None
        except SerializationError as exc:
            where = f"task {key!r}" if key is not None else "a task"
            raise TaskSerializationError(
                f"Could not send an argument of {where} to the workers: {exc}"
            ) from exc

    def _replace_futures(self, obj, dependencies: set):
        """Copy of ``obj`` with each Future swapped for a DependencyRef (and its key recorded)."""
        typ = type(obj)
        if typ is Future:
            if obj.client.scheduler is not self._scheduler:
                raise ValueError(
                    f"Future {obj.key!r} belongs to a different cluster; gather it first"
                )
            dependencies.add(obj.key)
            return DependencyRef(obj.key)
        if typ is tuple or typ is list:
            if not obj:
                return obj
            return typ(self._replace_futures(item, dependencies) for item in obj)
        if typ is dict:
            if not obj:
                return obj
            return {k: self._replace_futures(v, dependencies) for k, v in obj.items()}
        if typ is set or typ is frozenset:
            return typ(self._replace_futures(item, dependencies) for item in obj)
        return obj

"""Client calls for data shared by name across clients: published datasets (dask.distributed's API).

``publish_dataset`` packs each value (``packing.py``: pickled, futures inside noted by key) and the
scheduler keeps it, and the results of its futures, under the owner ``published-<name>`` until
``unpublish_dataset`` (``scheduler/published.py``). ``get_dataset`` gives the value back with its futures
bound to the asking client, which the scheduler makes want them before answering, so a dataset
published by a client that has since closed can still be fetched. One ``SharedData`` per ``Client``;
``Client`` forwards the public methods, and ``client.datasets`` is a ``Datasets`` mapping over them.
``packing.py`` (and cloudpickle) is imported by the calls that use it, as ``primitives.py`` does, so
``from minidist import Client`` does not wait for it.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

_NO_DEFAULT: Any = object()


class SharedData:
    """Datasets of one client (see the module docstring)."""

    def __init__(self, client):
        self._client = client

    def _invoke(self, name: str, *args):
        client = self._client
        client._check_open()
        return client.operations.invoke(name, *args)

    def publish_dataset(self, *args, name=None, override: bool = False, **kwargs) -> None:
        """Publish values (futures, collections, anything picklable) under names other clients of
        the cluster can ``get_dataset``: ``publish_dataset(x, name="x")``, ``publish_dataset(x=x)`` or
        ``publish_dataset({"x": x})``. A taken name raises KeyError unless ``override=True``."""
        values = dict(kwargs)
        if name is not None:
            if not args:
                raise ValueError(
                    "If name is provided, expecting call signature like publish_dataset(df, name='ds')"
                )
            values[name] = args[0] if len(args) == 1 else args
        elif args:
            if len(args) != 1 or not isinstance(args[0], Mapping):
                raise ValueError(
                    "If name is omitted, positional argument must be a {name: value} dict"
                )
            values.update(args[0])
        if not values:
            raise ValueError("publish_dataset needs something to publish")
        from .packing import pack

        client = self._client
        self._invoke(
            "dataset_publish", {key: pack(value, client) for key, value in values.items()}, override
        )

    def unpublish_dataset(self, name, **kwargs) -> None:
        """Remove a published dataset (the results it kept may then be freed)."""
        self._invoke("dataset_unpublish", name)

    def list_datasets(self, **kwargs) -> tuple:
        """Names of the published datasets (a tuple, as dask returns)."""
        return tuple(self._invoke("dataset_list"))

    def get_dataset(self, name, default=_NO_DEFAULT, **kwargs):
        """The published value (its futures bound to this client); ``default`` or KeyError if none."""
        if isinstance(name, list):
            return [self.get_dataset(n, default) for n in name]
        from .packing import handoff_owner, received, unpack

        client = self._client
        owner = handoff_owner()
        packed = self._invoke("dataset_get", name, owner)
        if packed is None:
            if default is _NO_DEFAULT:
                raise KeyError(f"Dataset {name!r} not found; published: {self.list_datasets()}")
            return default
        value = unpack(packed, client)
        received([packed], owner, client)
        return value


class Datasets(MutableMapping):
    """``client.datasets``: the published datasets as a mapping (``client.datasets["x"] = value``)."""

    __slots__ = ("_shared",)

    def __init__(self, shared: SharedData):
        self._shared = shared

    def __getitem__(self, key):
        return self._shared.get_dataset(key)

    def __setitem__(self, key, value) -> None:
        self._shared.publish_dataset(value, name=key)  # a taken name raises KeyError, as in dask

    def __delitem__(self, key) -> None:
        if key not in self._shared.list_datasets():
            raise KeyError(key)
        self._shared.unpublish_dataset(key)

    def __iter__(self):
        return iter(self._shared.list_datasets())

    def __len__(self) -> int:
        return len(self._shared.list_datasets())

    def __contains__(self, key) -> bool:
        return key in self._shared.list_datasets()

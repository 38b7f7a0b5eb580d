"""Checks of messages from peers, derived from the field annotations of their types (``messages.py``).

    remote/protocol.check_request(message) ──► check_fields(message): the field count, then each field
                                                against the classes its annotation names

``field_types`` reads a type's annotations once (``Optional[int]`` becomes ``(int, NoneType)``, ``Any`` is
not checked) and caches them, so a check never restates a message's shape.
"""

import typing
from typing import Any, Optional, Union

from .messages import MalformedMessage


def _runtime_types(annotation) -> Optional[tuple]:
    """The classes ``isinstance`` needs for an annotation, or None for "anything"."""
    if annotation is Any:
        return None
    if typing.get_origin(annotation) is Union:
        members: tuple = ()
        for arg in typing.get_args(annotation):
            found = _runtime_types(arg)
            if found is None:
                return None
            members += found
        return members
    origin = typing.get_origin(annotation) or annotation
    return (origin,) if isinstance(origin, type) else None


_FIELD_TYPES: dict = {}


def field_types(cls) -> dict:
    """``{field: classes}`` for the fields of a message type that have a checkable annotation."""
    found = _FIELD_TYPES.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = {}
        for name in cls._fields:
            types = _runtime_types(hints.get(name, Any))
            if types is not None:
                found[name] = types
        _FIELD_TYPES[cls] = found
    return found


def check_fields(message) -> None:
    """Raise MalformedMessage unless ``message`` has its type's fields, each of its annotated type."""
    cls = type(message)
    if len(message) != len(cls._fields):  # a peer can unpickle any length: see _wire
        raise MalformedMessage(f"{cls.__name__} has {len(cls._fields)} fields, not {len(message)}")
    for name, types in field_types(type(message)).items():
        value = getattr(message, name)
        if not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in types)
            raise MalformedMessage(
                f"{type(message).__name__}.{name} must be {expected}, not {type(value).__name__}"
            )

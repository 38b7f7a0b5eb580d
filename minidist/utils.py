"""Small parsers for the units users type: byte sizes ("1GiB", "500 MB") and durations ("5s", "100ms").

Keywords such as ``memory_limit=``, ``maximum_memory=``, ``interval=`` and ``target_duration=`` accept either a
number or a string with a unit, as in dask. Everything passes through the three functions here, so every
keyword reads units the same way and every error names the value that could not be read.
"""

from __future__ import annotations

import math
import numbers
import re
import sys
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import datetime

# Unit words are matched case-insensitively ("kb", "KB" and "kB" all mean 1000 bytes); an "i" means a
# power of two ("KiB" = 1024), as in the IEC convention.
_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "ki": 2**10,
    "kib": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mi": 2**20,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gi": 2**30,
    "gib": 2**30,
    "t": 10**12,
    "tb": 10**12,
    "ti": 2**40,
    "tib": 2**40,
    "p": 10**15,
    "pb": 10**15,
    "pi": 2**50,
    "pib": 2**50,
}

_TIME_UNITS = {
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "ms": 1e-3,
    "millisecond": 1e-3,
    "milliseconds": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "microsecond": 1e-6,
    "microseconds": 1e-6,
    "ns": 1e-9,
    "nanosecond": 1e-9,
    "nanoseconds": 1e-9,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
    "w": 604800.0,
    "week": 604800.0,
    "weeks": 604800.0,
}

# A number (optional, "MB" alone means 1 MB), then an optional unit word: "1.5 GB", "5e3", "100ms".
_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]*(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Zµ]*)\s*$")


def sizeof(value: Any) -> int:
    """A cheap size estimate for memory accounting."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    try:
        return sys.getsizeof(value)
    except Exception:
        return 64


def _parse_quantity(text, units: dict, what: str, hint: str) -> float:
    """``text`` (a number, or a string "<number> <unit>") times its unit, checked finite and >= 0."""
    if isinstance(text, numbers.Real) and not isinstance(text, bool):
        value = float(text)
    elif isinstance(text, str):
        match = _QUANTITY.match(text)
        if match is None or match.group(1) == "." or not any(match.groups()):
            raise ValueError(f"Could not read {text!r} as {what}")
        number, unit = match.group(1) or "1", match.group(2).lower()
        if unit not in units:
            raise ValueError(f"Could not read {text!r} as {what}: unknown unit {unit!r} ({hint})")
        try:
            value = float(number) * units[unit]
        except ValueError:  # a lone exponent such as "e5"
            raise ValueError(f"Could not read {text!r} as {what}") from None
    else:
        raise ValueError(f"Could not read {text!r} as {what}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"Could not read {text!r} as {what}: it must be finite and not negative")
    return value


def parse_bytes(text: str | int | float) -> int:
    """A byte count from ``"1GiB"``, ``"500MB"``, ``"1.5 GB"``, ``"100kB"``, ``"5e3"`` or a number.

    Raises ValueError for negative, non-finite or unreadable values, and for unknown units.
    """
    return int(
        _parse_quantity(
            text, _BYTE_UNITS, "a number of bytes", "use B, kB, MB, GB, or KiB, MiB, GiB"
        )
    )


def format_bytes(n: int | float) -> str:
    """``n`` bytes in a short human form: ``"812 B"``, ``"1.00 kiB"``, ``"23.47 GiB"`` (the way dask writes it).

    A unit is used from 90% of its size on, so 1000 bytes read ``"0.98 kiB"`` rather than ``"1000 B"``.
    """
    for prefix, size in (("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("ki", 2**10)):
        if n >= size * 0.9:
            return f"{n / size:.2f} {prefix}B"
    return f"{int(n)} B"


def timeout_seconds(timeout) -> Optional[float]:
    """A timeout as dask takes one (None, seconds, ``"10s"``, a timedelta), in seconds or None."""
    if timeout is None or type(timeout) is float or type(timeout) is int:
        return timeout  # the common cases, at no cost
    return parse_timedelta(timeout)


def parse_timedelta(text: str | int | float | datetime.timedelta) -> float:
    """Seconds from ``"5s"``, ``"100ms"``, ``"1 minute"``, ``"2h"``, a timedelta, or a number of seconds.

    Raises ValueError for negative, non-finite or unreadable values, and for unknown units.
    """
    # a timedelta exists only if its module was imported: no import of datetime to find out
    module = sys.modules.get("datetime")
    if module is not None and isinstance(text, module.timedelta):
        text = text.total_seconds()
    return _parse_quantity(text, _TIME_UNITS, "a duration", "use ms, s, minutes, hours, days")

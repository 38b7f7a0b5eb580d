"""Task keys: deterministic tokens for pure submissions and prefixes for grouping.

``submit(f, x)`` names its task ``"f-<token>"``. With ``pure=True`` the token is a hash of the function and
its arguments, so two equal submissions share one task (as in dask); with ``pure=False`` it is random.
The prefix before the token (``key_split``) groups tasks on the dashboard and in the adaptive policy.
"""

from __future__ import annotations

import os
import pickle
import random
import zlib
from typing import Optional

try:  # hashlib's own blake2b, without hashlib's import of OpenSSL (~2 ms of every process's start)
    from _blake2 import blake2b
except ImportError:  # a CPython built without its own blake2
    from hashlib import blake2b

_random = random.Random(int.from_bytes(os.urandom(16), "little"))


def random_token() -> str:
    """A fresh 128-bit hex token. Not uuid4: os.urandom costs ~10 us per call on some VMs, which adds up
    over thousands of impure tasks; uniqueness, not secrecy, is what keys need."""
    return f"{_random.getrandbits(128):032x}"


def function_id_of(blob: Optional[bytes]) -> bytes:
    """A function's id: the hash of its pickle (equal functions share it), or random if unpicklable."""
    return blake2b(blob, digest_size=16).digest() if blob else _random.randbytes(16)


CHECKSUM_START = 1  # what buffer_checksum continues from for the first chunk (Adler-32 starts at 1)


def buffer_checksum(data, previous: int = CHECKSUM_START) -> int:
    """A 64-bit checksum of a large buffer for content-based keys: CRC-32 and Adler-32 side by side.

    Continued chunk by chunk from ``previous`` it gives what one call on the whole buffer gives. Why
    two: a key that named a buffer by its CRC-32 alone would give two of 100,000 different arrays of
    one size the same key more often than not (the birthday bound of 32 bits), and the second task
    would silently get the first one's result; Adler-32 costs about as much as CRC-32 and, unlike a
    plain sum, also changes when the same values are reordered.
    """
    return (zlib.crc32(data, previous >> 32) << 32) | zlib.adler32(data, previous & 0xFFFFFFFF)


def tokenize_call(
    function_token: bytes, args: tuple, kwargs: dict, checksum=buffer_checksum
) -> str:
    """A stable hex token for a call; falls back to a random one when arguments cannot be pickled.

    ``checksum`` hashes each buffer over 1 MiB (``buffer_checksum``; the thread workers' data plane passes one that
    remembers the checksums of arrays the kernel watches for writes, so a repeat is not read again).

    Pickling gives an exact, content-based identity for ordinary values (dask hashes values the same way);
    an unpicklable argument (only possible with thread workers) cannot be compared, so it gets a fresh
    token and never shares a task.
    """
    buffers: list = []
    try:
        blob = pickle.dumps((args, kwargs), protocol=5, buffer_callback=buffers.append)
    except Exception:
        return random_token()
    digest = blake2b(function_token, digest_size=16)
    digest.update(blob)
    for buffer in buffers:
        try:
            view = buffer.raw()
        except BufferError:  # non-contiguous: hash a contiguous copy
            view = memoryview(memoryview(buffer).tobytes())
        if view.nbytes > 1 << 20:
            # large arrays: a checksum that runs at memory speed (a cryptographic hash is 4-10x slower)
            digest.update(b"%d:%d" % (view.nbytes, checksum(view)))
        else:
            digest.update(view)
    return digest.hexdigest()


def funcname(func) -> str:
    """A readable name for a callable, used as the key prefix."""
    while hasattr(func, "func"):  # functools.partial and friends
        func = func.func
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "<lambda>":
        return "lambda"
    return name


def key_split(key) -> str:
    """The task prefix of a key, by dask's rules (the scheduler, the dashboard and ``progress`` share it).

    ``"inc-1a2b3c..."`` -> ``"inc"``; ``("x-abc", 0)`` -> ``"x"``; ``"hello-world-1"`` -> ``"hello-world"``
    (words made only of letters are kept, the first other word ends the prefix, and so does an
    8-letter hex word such as ``"abcdefab"``); ``"('x-2', 1)"`` -> ``"x"``; a bare 32-digit hex token ->
    ``"data"``; ``"<module.Klass object at 0x...>"`` -> ``"Klass"``; ``None`` or anything odd -> ``"Other"``.
    """
    if type(key) is str:
        # the common shape "name-<token>" (every submit, map and dask key), answered without
        # splitting the whole key; it gives what the general rules below give for it
        first, _, rest = key.partition("-")
        if rest and first[:1].isalpha() and not rest.partition("-")[0].isalpha():
            if len(first) == 32 and not first.strip("0123456789abcdef"):
                return "data"
            return first
    try:
        if isinstance(key, tuple):
            key = key[0]
        if isinstance(key, bytes):
            key = key.decode()
        words = key.split("-")
        first = words[0]
        if not first[:1].isalpha():
            # a stringified tuple "('x', 1)" or a decorated name "_(x)": keep the name inside
            first = first.split(",")[0].strip("_'()\"")
        kept = [first]
        for word in words[1:]:
            if not word.isalpha() or (len(word) == 8 and not word.strip("abcdef")):
                break
            kept.append(word)
        prefix = "-".join(kept)
        if len(prefix) == 32 and not prefix.strip("0123456789abcdef"):
            return "data"
        if prefix.startswith("<"):  # the repr of an object used as a key
            prefix = prefix.strip("<>").split()[0].split(".")[-1]
        return prefix or "Other"
    except Exception:  # None, numbers, empty tuples: all unnamed work
        return "Other"

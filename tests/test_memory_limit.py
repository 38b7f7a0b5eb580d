"""memory_limit parsing, byte units, worker memory measurement and the pause/terminate thresholds."""

from __future__ import annotations

import datetime
import mmap
import os

import pytest

from minidist.deploy.memory import (
    MemoryAction,
    format_bytes,
    memory_action,
    memory_kill_reason,
    parse_bytes,
    parse_memory_limit,
    process_memory,
    system_memory,
)
from minidist.utils import parse_timedelta

GiB = 2**30
TOTAL = 16 * GiB


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1GiB", GiB),
        ("500MB", 500_000_000),
        ("1.5 GB", 1_500_000_000),
        ("100kB", 100_000),
        ("100 KB", 100_000),
        ("2 KiB", 2048),
        ("1 mib", 2**20),
        ("5e3", 5000),
        ("MB", 1_000_000),
        ("  12 B ", 12),
        (1000, 1000),
        (1.5e9, 1_500_000_000),
        (0, 0),
    ],
)
def test_parse_bytes_reads_sizes_with_and_without_units(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    "text", ["", "lots", "5 parsecs", "-1GB", "1..5GB", "e5", ".", -1, float("inf"), True, None]
)
def test_parse_bytes_rejects_nonsense_with_a_value_error_naming_it(text):
    with pytest.raises(ValueError, match="bytes"):
        parse_bytes(text)


@pytest.mark.parametrize(
    "n, expected",
    [
        (0, "0 B"),
        (900, "900 B"),
        (1000, "0.98 kiB"),
        (1024, "1.00 kiB"),
        (int(23.47 * GiB), "23.47 GiB"),
    ],
)
def test_format_bytes_uses_binary_units_from_ninety_percent_on(n, expected):
    assert format_bytes(n) == expected


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("5s", 5.0),
        ("100ms", 0.1),
        ("1 minute", 60.0),
        ("2.5 seconds", 2.5),
        ("1h", 3600.0),
        ("3", 3.0),
        (3, 3.0),
        (0.25, 0.25),
        (datetime.timedelta(minutes=2), 120.0),
    ],
)
def test_parse_timedelta_reads_durations(text, seconds):
    assert parse_timedelta(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["soon", "5 parsecs", "-1s", float("nan"), None, False])
def test_parse_timedelta_rejects_nonsense(text):
    with pytest.raises(ValueError, match="duration"):
        parse_timedelta(text)


@pytest.mark.parametrize(
    "limit, n_workers, expected",
    [
        ("auto", 4, TOTAL // 4),
        ("auto", 1, TOTAL),
        ("auto", 0, TOTAL),
        (0.5, 2, TOTAL // 2),
        (1, 2, TOTAL),
        ("0.25", 2, TOTAL // 4),
        ("4GiB", 2, 4 * GiB),
        ("500MB", 2, 500_000_000),
        (2**30, 2, GiB),
        (2e9, 2, 2_000_000_000),
        ("64 GiB", 2, TOTAL),  # capped at the system memory
        (10**20, 2, TOTAL),
        (None, 2, None),
        (0, 2, None),
        ("0", 2, None),
        ("none", 2, None),
    ],
)
def test_parse_memory_limit_accepts_each_dask_form(limit, n_workers, expected):
    assert parse_memory_limit(limit, n_workers, total_memory=TOTAL) == expected


@pytest.mark.parametrize("limit", [True, -1, "-2GB", "lots", "5 parsecs", [1], float("nan")])
def test_parse_memory_limit_rejects_nonsense_with_a_clear_message(limit):
    with pytest.raises(ValueError, match="memory_limit="):
        parse_memory_limit(limit, 2, total_memory=TOTAL)


def test_parse_memory_limit_defaults_to_the_system_memory():
    total = system_memory()
    assert 0 < total
    assert parse_memory_limit("auto", 2) == total // 2
    assert parse_memory_limit("1000 PiB", 2) == total


def test_process_memory_counts_private_memory():
    # A private anonymous mapping: new pages whatever earlier tests left in the C allocator. (A 64 MiB
    # bytearray came from malloc, which serves it from freed heap memory still resident when earlier
    # tests left that much free in this process: RSS did not move at all, seen in a reordered run.)
    size = 64 * 2**20
    with mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE) as block:
        before = process_memory(os.getpid())
        block[::4096] = b"x" * len(block[::4096])  # touch every page
        after = process_memory(os.getpid())
    assert after - before >= 48 * 2**20


def test_process_memory_leaves_out_pages_of_shared_memory_segments():
    # A /dev/shm file mapped with mmap is what multiprocessing.shared_memory does; done by hand here so no
    # resource-tracker process is started.
    size = 64 * 2**20
    path = f"/dev/shm/test_memory_limit_{os.getpid()}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as segment:
            before = process_memory(os.getpid())
            segment[:] = b"y" * size  # every page resident, mapped from /dev/shm
            after = process_memory(os.getpid())
        assert after - before < 16 * 2**20
    finally:
        os.close(fd)
        os.unlink(path)


def test_process_memory_of_a_missing_process_raises():
    import psutil

    with pytest.raises(psutil.NoSuchProcess):
        process_memory(2**22 + 12345)  # above the default pid_max


@pytest.mark.parametrize(
    "used, limit, action",
    [
        (0, 1000, MemoryAction.OK),
        (799, 1000, MemoryAction.OK),
        (800, 1000, MemoryAction.PAUSE),
        (949, 1000, MemoryAction.PAUSE),
        (950, 1000, MemoryAction.TERMINATE),
        (5000, 1000, MemoryAction.TERMINATE),
        (10**12, None, MemoryAction.OK),
        (10**12, 0, MemoryAction.OK),
    ],
)
def test_memory_action_pauses_at_80_and_terminates_at_95_percent(used, limit, action):
    assert memory_action(used, limit) is action


def test_memory_action_thresholds_can_be_moved_or_turned_off():
    assert memory_action(600, 1000, pause_fraction=0.5) is MemoryAction.PAUSE
    assert memory_action(900, 1000, pause_fraction=None) is MemoryAction.OK
    assert memory_action(990, 1000, terminate_fraction=False) is MemoryAction.PAUSE
    assert (
        memory_action(990, 1000, pause_fraction=False, terminate_fraction=False) is MemoryAction.OK
    )


def test_memory_kill_reason_names_usage_and_limit():
    reason = memory_kill_reason(int(1.2 * GiB), GiB)
    assert reason == "memory: it used 1.20 GiB, over 95% of its 1.00 GiB memory_limit"

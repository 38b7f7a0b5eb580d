"""Shared test fixtures for tests/ and tests_property/. Every test module is checked for leaks when it
ends: no child processes, no minidist threads, no shared-memory segments may outlive its clusters."""

from __future__ import annotations

import os
import threading
import time

import psutil
import pytest


def _segments() -> set:
    """Segments of clusters owned by this process (cluster ids start with the owner's pid)."""
    prefix = f"minidist_{os.getpid()}-"
    try:
        return {name for name in os.listdir("/dev/shm") if name.startswith(prefix)}
    except FileNotFoundError:
        return set()


def _minidist_threads() -> set:
    return {t for t in threading.enumerate() if t.name.startswith("minidist-") and t.is_alive()}


def _children() -> set:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture(autouse=True, scope="module")
def no_leaks_per_module():
    """Fail the module if it leaves processes, threads or /dev/shm segments behind."""
    segments, threads, children = _segments(), _minidist_threads(), _children()
    yield
    # closing is synchronous, but daemon threads may take a moment to unwind after close() returns
    assert wait_until(lambda: not (_children() - children)), (
        f"leaked processes: {_children() - children}"
    )
    assert wait_until(lambda: not (_minidist_threads() - threads)), (
        f"leaked threads: {[t.name for t in _minidist_threads() - threads]}"
    )
    assert wait_until(lambda: not (_segments() - segments)), (
        f"leaked segments: {_segments() - segments}"
    )


@pytest.fixture(autouse=True)
def private_runtime_dir(tmp_path, monkeypatch):
    """Secret files of every test (and of the processes it starts, which inherit the variable) go to a
    directory of its own: the suite never touches the user's real one."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime

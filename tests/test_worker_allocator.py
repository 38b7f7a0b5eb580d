"""Process workers keep freed memory for the next allocation of the same size (worker/allocator.py):
a chunk-sized array allocated again after one was freed finds its pages already there, instead of new
pages the kernel must fault in and zero; blocks beyond glibc's mmap threshold too (a rechunk's 96 MB
merges), and what is kept goes back to the system once the worker is idle."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

from conftest import wait_until
from minidist import Client, LocalCluster

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"),
        reason="the allocator tuning is for glibc's malloc only",
    ),
]

CHUNK_BYTES = 8 * 2**20  # one dask chunk of 1000 x 1000 float64
CHUNKS = 4  # freed together: 32 MiB, more than glibc's own trim threshold keeps (2x the chunk)
PAGES = CHUNKS * CHUNK_BYTES // 4096


def faults_of_refilled_chunks(count: int, nbytes: int) -> int:
    """Minor page faults this thread takes to fill ``count`` arrays of ``nbytes`` each just after
    freeing as many (after one such round to warm the allocator up)."""
    import resource

    for _ in range(2):
        arrays = [np.ones(nbytes // 8) for _ in range(count)]
        del arrays
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    arrays = [np.ones(nbytes // 8) for _ in range(count)]
    faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
    del arrays
    return faults


@contextlib.contextmanager
def one_process_worker(memory_limit: str):
    """A client of a fresh cluster of one process worker: a heap no other test has touched."""
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, memory_limit=memory_limit, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def test_a_process_worker_reuses_freed_chunks_pages():
    # glibc's defaults give back ~6 MB of the 32 (~1,500 faults of 8,192 pages, each a zeroed page)
    with one_process_worker("2GiB") as client:
        (faults,) = client.run(faults_of_refilled_chunks, CHUNKS, CHUNK_BYTES).values()
    assert faults < PAGES // 32, f"{faults} faults refilling {PAGES} pages just freed"


LARGE_BYTES = 96 * 2**20  # beyond the 32 MiB glibc lets blocks come from the heap by default


def test_a_process_worker_keeps_freed_large_blocks_for_the_next():
    # glibc maps every block beyond its mmap threshold afresh and unmaps it when freed: the next
    # array of that size gets new pages (24,576 of them for 96 MiB, or 48 huge ones), all zeroed
    with one_process_worker("4GiB") as client:
        (steps,) = client.run(private_bytes_around_a_refill, LARGE_BYTES).values()
    filled, freed, refilled = steps
    assert filled - freed < LARGE_BYTES // 8, f"{(filled - freed) >> 20} MiB given back when freed"
    assert refilled - freed < LARGE_BYTES // 8, f"{(refilled - freed) >> 20} MiB new for the refill"


def private_bytes_around_a_refill(nbytes: int) -> tuple:
    """This process's private bytes with an array of ``nbytes`` filled, freed, filled again."""
    large = np.ones(nbytes // 8)
    filled = private_bytes()
    del large
    freed = private_bytes()
    large = np.ones(nbytes // 8)
    refilled = private_bytes()
    del large
    return filled, freed, refilled


def private_bytes() -> int:
    """This process's resident memory not shared with others (what the memory monitor counts)."""
    with open("/proc/self/statm") as statm:
        _, resident, shared = (int(field) for field in statm.read().split()[:3])
    return (resident - shared) * os.sysconf("SC_PAGE_SIZE")


def free_in_the_middle(nbytes: int) -> int:
    """Touch then free ``nbytes``, with a small block kept after it (so it is not at the heap's top,
    which glibc trims by itself); returns the private bytes right after."""
    import builtins

    large = np.ones(nbytes // 8)
    builtins._minidist_test_pin = np.ones(2**19)  # 4 MiB: no free block is that large yet
    del large
    return private_bytes()


def test_an_idle_process_worker_gives_kept_memory_back():
    with one_process_worker("4GiB") as client:
        address = next(iter(client.nthreads()))
        kept = client.submit(free_in_the_middle, 2 * LARGE_BYTES, pure=False).result()
        assert kept > 2 * LARGE_BYTES * 0.9  # kept for the next array while tasks might come
        # the worker looks every 0.5 s; idle at 5 looks in a row, it trims
        assert wait_until(
            lambda: client.run(private_bytes)[address] < kept - 1.5 * LARGE_BYTES, timeout=30
        ), client.run(private_bytes)
        client.run(lambda: delattr(__import__("builtins"), "_minidist_test_pin"))

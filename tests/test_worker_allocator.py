"""Process workers keep freed memory for the next allocation of the same size (worker/allocator.py):
a chunk-sized array allocated again after one was freed finds its pages already there, instead of new
pages the kernel must fault in and zero."""

from __future__ import annotations

import os

import numpy as np
import pytest

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


def test_a_process_worker_reuses_freed_chunks_pages():
    # glibc's defaults give back ~6 MB of the 32 (~1,500 faults of 8,192 pages, each a zeroed page)
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            memory_limit="2GiB",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        (faults,) = client.run(faults_of_refilled_chunks, CHUNKS, CHUNK_BYTES).values()
    assert faults < PAGES // 32, f"{faults} faults refilling {PAGES} pages just freed"

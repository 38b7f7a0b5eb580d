"""A dask array computed on thread workers (``processes=False``): NumPy releases the GIL.

Run: python examples/dask_array_threads.py [SCHEDULER_ADDRESS]
"""

import sys

import dask.array as da

from minidist import Client


def main(client):
    x = da.random.RandomState(0).random((800, 800), chunks=(400, 400))
    y = (x + x.T) / 2
    print("chunks:", x.npartitions)
    print("mean:", round(float(y.mean().compute()), 6))
    print("symmetric:", bool((y == y.T).all().compute()))
    column_sums = client.compute(y.sum(axis=0)).result()
    print("column sums, first three:", [round(float(v), 3) for v in column_sums[:3]])


if __name__ == "__main__":
    address = (
        sys.argv[1] if len(sys.argv) > 1 else None
    )  # a running scheduler, or start a local one
    options = dict(processes=False, n_workers=1, threads_per_worker=2)
    with Client(address) if address else Client(**options) as client:
        main(client)

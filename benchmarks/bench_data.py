"""Data-plane speed: large NumPy arrays through minidist, dask.distributed and ProcessPoolExecutor.

    python benchmarks/bench_data.py [--mb 200] [--repeat 5] [--skip-dask] [--gather-mb 1000]

Every engine gets 2 workers x 1 thread, in this one run. Each figure is the best of ``--repeat`` (the
machine may be shared). Ray is measured too when ``import ray`` works. Printed: seconds per engine, and
each engine's time divided by minidist's (above 1 means minidist is faster).

Rows:
  argument    the same array passed to 3 tasks, each summing it: submit(total, array, i) for i in 0..2,
              then gather the 3 sums (3 distinct tasks; default pure=True, so keys are content hashes)
  impure      the same with pure=False: no content hashing (ProcessPool and Ray never hash)
  result      a task builds an array of the same size; submit -> result() in the client
  gather      result() of that task once it has finished (the transfer alone)
  gather+read gather, then read every byte in the client (sum): what using the value costs
  memcpy      one copy of the array into memory already allocated: the yardstick for "gather"

Then, for minidist only: where the time of the argument row goes, stage by stage (each measured alone in
this process, best of ``--repeat``), and a ``--gather-mb`` result (1 GB by default) gathered: its time,
whether the array the client gets is a mapping of the worker's /dev/shm segment (read in
/proc/self/maps, as tests/test_data_plane.py does) and how much private memory the client grew by.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import multiprocessing
import os
import sys
import time
import warnings

import numpy as np


def total(array, i):
    return float(array.sum())


def make(nbytes, seed):
    array = np.empty(nbytes // 8)
    array.fill(seed + 0.5)
    return array


def best(fn, repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------- distributed-like APIs


def run_client(client, array: np.ndarray, repeat: int, settle) -> dict:
    """minidist and dask.distributed share the API. ``settle()`` waits until a repeat left nothing."""
    client.submit(total, np.ones(10), -1).result()  # workers up, function caches warm
    expected = float(array.sum())

    def argument(pure: bool) -> float:
        start = time.perf_counter()
        futures = [client.submit(total, array, i, pure=pure) for i in range(3)]
        sums = client.gather(futures)
        elapsed = time.perf_counter() - start
        assert np.allclose(sums, expected, rtol=1e-9)  # summation order may differ with alignment
        del futures
        settle()
        return elapsed

    def result() -> dict:
        seed = time.perf_counter_ns() % 1000  # a new key each time
        start = time.perf_counter()
        future = client.submit(make, array.nbytes, seed)
        value = future.result()
        end_to_end = time.perf_counter() - start
        del value
        gather = timed(future.result)
        start = time.perf_counter()
        read = float(future.result().sum())
        gather_read = time.perf_counter() - start
        assert read == (seed + 0.5) * array.size
        del future
        settle()
        return {"result": end_to_end, "gather": gather, "gather+read": gather_read}

    figures = {
        "argument": best(lambda: argument(True), repeat),
        "impure": best(lambda: argument(False), repeat),
    }
    runs = [result() for _ in range(repeat)]
    for name in runs[0]:
        figures[name] = min(run[name] for run in runs)
    return figures


def run_minidist(array: np.ndarray, repeat: int) -> dict:
    from minidist import Client
    from minidist.comm.shm import list_segments

    with Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        cluster_id = client.cluster.cluster_id

        kept = client.cluster.segment_store.kept

        def settle() -> None:
            # every segment of this repeat is gone, but for the one the client's store keeps for
            # ``array`` while it lives (an array passed again is not copied again: docs/data-plane.md);
            # waiting for that one too would idle 10 s, after which the workers' first large allocation
            # pays the kernel's page faults afresh (0.3-0.4 s for 200 MB here) and the result row with it
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(
                not kept.holds(info.name) for info in list_segments(cluster_id)
            ):
                time.sleep(0.01)

        return run_client(client, array, repeat, settle)


def run_dask(array: np.ndarray, repeat: int) -> dict:
    import distributed

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Sending large graph of size 200 MiB": that is the point
        with distributed.Client(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as client:

            def settle() -> None:
                deadline = time.monotonic() + 10
                while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) > 0:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)

            return run_client(client, array, repeat, settle)


# ------------------------------------------------------------------------------------------- others


def run_pool(array: np.ndarray, repeat: int) -> dict:
    context = multiprocessing.get_context("forkserver")  # never fork a process that has threads
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        pool.submit(total, np.ones(10), -1).result()
        expected = float(array.sum())

        def argument() -> float:
            start = time.perf_counter()
            sums = [f.result() for f in [pool.submit(total, array, i) for i in range(3)]]
            elapsed = time.perf_counter() - start
            assert np.allclose(sums, expected, rtol=1e-9)
            return elapsed

        def result() -> float:
            return timed(lambda: pool.submit(make, array.nbytes, 1).result())

        figure = best(argument, repeat)
        return {"argument": figure, "impure": figure, "result": best(result, repeat)}


def run_ray(array: np.ndarray, repeat: int) -> dict:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    try:
        remote_total = ray.remote(num_cpus=1)(total)
        remote_make = ray.remote(num_cpus=1)(make)
        ray.get(remote_total.remote(np.ones(10), -1))

        def argument() -> float:
            return timed(lambda: ray.get([remote_total.remote(array, i) for i in range(3)]))

        def result() -> float:
            return timed(lambda: ray.get(remote_make.remote(array.nbytes, 1)))

        figure = best(argument, repeat)
        return {"argument": figure, "impure": figure, "result": best(result, repeat)}
    finally:
        ray.shutdown()


def stages(array: np.ndarray, repeat: int) -> list:
    """(stage, seconds) of the argument row's steps, each alone: what a 3-task pass is made of."""
    from minidist.comm.shm import SegmentStore, new_cluster_id, open_segment, sweep_cluster
    from minidist.keys import buffer_checksum

    store = SegmentStore(new_cluster_id())
    figures: dict = {}

    def keep(name: str, seconds: float) -> None:
        figures[name] = min(seconds, figures.get(name, seconds))

    try:
        for _ in range(repeat):
            copy = array.copy()  # a new address each time: nothing to re-use, nothing watched
            start = time.perf_counter()
            first = store.write(copy)
            keep("write into /dev/shm (new tmpfs pages + copy)", time.perf_counter() - start)
            start = time.perf_counter()
            store.write(copy)
            keep("2nd pass: compare all bytes, start watching", time.perf_counter() - start)
            start = time.perf_counter()
            store.write(copy)
            keep("3rd pass: watched, nothing written since", time.perf_counter() - start)
            start = time.perf_counter()
            mapped = np.frombuffer(open_segment(first.name, first.nbytes))
            mapped.sum()
            keep("reader: map the segment + sum", time.perf_counter() - start)
            start = time.perf_counter()
            mapped.sum()
            keep("reader: sum again (pages mapped)", time.perf_counter() - start)
            del mapped
            sweep_cluster(store.cluster_id)
            del copy
        start = time.perf_counter()
        buffer_checksum(memoryview(array).cast("B"))
        keep("checksum for a pure key (once per array)", time.perf_counter() - start)
    finally:
        store.close()
        sweep_cluster(store.cluster_id)
    return list(figures.items())


def private_bytes() -> int:
    """This process's private resident memory (what a copy would add to)."""
    with open("/proc/self/smaps_rollup") as rollup:
        fields = dict(line.split(":", 1) for line in rollup if ":" in line)
    return sum(int(fields[k].split()[0]) * 1024 for k in ("Private_Clean", "Private_Dirty"))


def big_gather(nbytes: int) -> dict:
    """A task makes an nbytes array; the client gathers it. Is it the worker's segment, mapped?"""
    from minidist import Client
    from minidist.testing import backing_file

    with Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        future = client.submit(make, nbytes, 1)
        client.gather(client.submit(total, future, 0))  # made, and read once on the worker
        before = private_bytes()
        start = time.perf_counter()
        value = future.result()
        seconds = time.perf_counter() - start
        grown = private_bytes() - before
        backing = backing_file(value)
        del value, future
    return {"seconds": seconds, "backing": backing, "private growth": grown}


def memcpy(array: np.ndarray, repeat: int) -> float:
    target = np.empty_like(array)
    target.fill(0)  # fault the pages in: time the copy, not the allocation
    return best(lambda: timed(lambda: np.copyto(target, array)), repeat)


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-dask", action="store_true")
    parser.add_argument("--gather-mb", type=int, default=1000)
    args = parser.parse_args()

    array = np.random.default_rng(0).random(args.mb * 10**6 // 8)
    results = {"minidist": run_minidist(array, args.repeat)}
    if not args.skip_dask:
        try:
            results["dask"] = run_dask(array, args.repeat)
        except ImportError:
            print("dask.distributed is not installed: pip install distributed", file=sys.stderr)
    results["ProcessPool"] = run_pool(array, args.repeat)
    try:
        import ray  # noqa: F401
    except ImportError:
        pass
    else:
        results["ray"] = run_ray(array, args.repeat)
    copy = memcpy(array, args.repeat)

    rows = [
        ("argument", f"{args.mb} MB argument, 3 tasks (s)", "<= 0.4"),
        ("impure", f"{args.mb} MB argument, 3 tasks, pure=False (s)", ""),
        ("result", f"{args.mb} MB result, submit -> result (s)", ""),
        ("gather", f"{args.mb} MB result, gather only (s)", f"<= {2 * copy:.3f}"),
        ("gather+read", f"{args.mb} MB result, gather + read all (s)", ""),
    ]
    engines = list(results)
    print(
        f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, numpy {np.__version__}; "
        f"best of {args.repeat}; one memcpy of {args.mb} MB: {copy:.3f} s"
    )
    header = f"{'measure':40} {'goal':>8} " + " ".join(f"{e:>11}" for e in engines)
    header += " " + " ".join(f"{e + '/md':>14}" for e in engines[1:])
    print(header)
    for key, label, goal in rows:
        base = results["minidist"].get(key)
        cells = " ".join(
            f"{results[e][key]:11.3f}" if key in results[e] else f"{'-':>11}" for e in engines
        )
        ratios = " ".join(
            f"{results[e][key] / base:14.1f}" if key in results[e] and base else f"{'-':>14}"
            for e in engines[1:]
        )
        print(f"{label:40} {goal:>8} {cells} {ratios}")
    md = results["minidist"]
    print(
        f"minidist gather / memcpy: {md['gather'] / copy:.2f}x; "
        f"gather+read / memcpy: {md['gather+read'] / copy:.2f}x"
    )
    print(
        f"\nwhere the argument row's time goes ({args.mb} MB, each stage alone, best of {args.repeat}):"
    )
    for stage, seconds in stages(array, args.repeat):
        print(f"  {stage:50} {seconds:8.4f} s")
    if args.gather_mb:
        big = big_gather(args.gather_mb * 10**6)
        shared = big["backing"].startswith("/dev/shm/minidist_")
        print(
            f"\n{args.gather_mb} MB result gathered in {big['seconds']:.4f} s; "
            f"{'a mapping of the worker segment ' + big['backing'] if shared else 'NOT a mapping: ' + repr(big['backing'])}; "
            f"client private memory grew by {big['private growth'] / 2**20:.1f} MiB"
        )


if __name__ == "__main__":
    main()

"""Core speed: minidist against dask.distributed and ProcessPoolExecutor, measured in one run.

    python benchmarks/bench_core.py [--repeat 3] [--skip-dask]

Every engine gets 2 workers x 1 thread. Each figure is the best of ``--repeat`` runs (the machine may be
shared). Printed: a table of seconds and the ratio of each engine's time to minidist's (above 1 means
minidist is faster). Goals from the issue tracker are shown beside minidist's figures.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time

from bench_start import child_env, print_profile

N_TASKS = 5000
CHAIN = 300


def noop(x):
    return x


def seconds_printed(code: str, **kwargs) -> float:
    """The last number a fresh interpreter running ``code`` prints (bytecode may be cached: see
    bench_start.py)."""
    out = subprocess.check_output(
        [sys.executable, "-c", code], text=True, env=child_env(), **kwargs
    )
    return float(out.split()[-1])


def best(fn, repeat: int) -> float:
    fn()  # untimed: caches bytecode (children may write it: bench_start.py says why)
    times = []
    for _ in range(repeat):
        times.append(fn())
    return min(times)


# ----------------------------------------------------------------------------------------- minidist


def minidist_startup() -> float:
    code = (
        "import time; t = time.perf_counter()\n"
        "from minidist import Client\n"
        "c = Client(n_workers=2, threads_per_worker=1, dashboard_address=None)\n"
        "assert c.submit(abs, -1).result() == 1\n"
        "c.close()\n"
        "print(time.perf_counter() - t)\n"
    )
    return seconds_printed(code)


def dask_startup() -> float:
    code = (
        "import time; t = time.perf_counter()\n"
        "from dask.distributed import Client\n"
        "if __name__ == '__main__':\n"
        "    c = Client(n_workers=2, threads_per_worker=1, dashboard_address=None)\n"
        "    assert c.submit(abs, -1).result() == 1\n"
        "    c.close()\n"
        "    print(time.perf_counter() - t)\n"
    )
    return seconds_printed(code, stderr=subprocess.DEVNULL)


def pool_startup() -> float:
    code = (
        "import time; t = time.perf_counter()\n"
        "import concurrent.futures as cf\n"
        "if __name__ == '__main__':\n"
        "    with cf.ProcessPoolExecutor(2) as p:\n"
        "        assert p.submit(abs, -1).result() == 1\n"
        "    print(time.perf_counter() - t)\n"
    )
    return seconds_printed(code)


def import_time(module: str) -> float:
    code = f"import time; t = time.perf_counter(); from {module} import Client; print(time.perf_counter() - t)"
    return seconds_printed(code)


def idle_worker_rss(pids) -> float:
    import psutil

    time.sleep(0.5)
    return max(psutil.Process(pid).memory_info().rss for pid in pids) / 2**20


def run_client(client, repeat: int) -> dict:
    client.submit(noop, 0).result()

    def many() -> float:
        t = time.perf_counter()
        futures = client.map(noop, range(N_TASKS), pure=False)
        client.gather(futures)
        return time.perf_counter() - t

    def chain() -> float:
        t = time.perf_counter()
        x = 0
        for _ in range(CHAIN):
            x = client.submit(noop, x, pure=False).result()
        return time.perf_counter() - t

    return {"many": best(many, repeat), "chain": best(chain, repeat)}


def run_pool(repeat: int) -> dict:
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        pool.submit(noop, 0).result()

        def many() -> float:
            t = time.perf_counter()
            futures = [pool.submit(noop, i) for i in range(N_TASKS)]
            [f.result() for f in futures]
            return time.perf_counter() - t

        def chain() -> float:
            t = time.perf_counter()
            x = 0
            for _ in range(CHAIN):
                x = pool.submit(noop, x).result()
            return time.perf_counter() - t

        return {"many": best(many, repeat), "chain": best(chain, repeat)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-dask", action="store_true")
    args = parser.parse_args()

    from minidist import Client

    results: dict = {}
    results["minidist"] = {
        "startup": best(minidist_startup, args.repeat),
        "import": import_time("minidist"),
    }
    with Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        results["minidist"].update(run_client(client, args.repeat))
        pids = list(client.run(os.getpid).values())
        results["minidist"]["rss"] = idle_worker_rss(pids)

    results["ProcessPool"] = {"startup": best(pool_startup, args.repeat), **run_pool(args.repeat)}

    if not args.skip_dask:
        try:
            import distributed
        except ImportError:
            print("dask.distributed is not installed: pip install distributed", file=sys.stderr)
        else:
            results["dask"] = {
                "startup": best(dask_startup, args.repeat),
                "import": import_time("distributed"),
            }
            with distributed.Client(
                n_workers=2, threads_per_worker=1, dashboard_address=None
            ) as client:
                results["dask"].update(run_client(client, args.repeat))
                pids = list(client.run(os.getpid).values())
                results["dask"]["rss"] = idle_worker_rss(pids)

    rows = [
        ("startup", "start -> first result -> close (s)", "<= 0.2"),
        ("many", f"{N_TASKS:,} no-op tasks, map + gather (s)", "<= 0.25"),
        ("chain", f"{CHAIN} chained submit -> result (s)", "<= 0.1"),
        ("rss", "idle worker RSS (MiB)", "<= 30"),
        ("import", "import time (s)", "<= 0.15"),
    ]
    engines = list(results)
    print(
        f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}; best of {args.repeat}"
    )
    header = f"{'measure':42} {'goal':>8} " + " ".join(f"{e:>12}" for e in engines)
    header += " " + " ".join(f"{e + '/md':>14}" for e in engines[1:])
    print(header)
    for key, label, goal in rows:
        values = [results[e].get(key) for e in engines]
        cells = " ".join(f"{v:12.3f}" if v is not None else f"{'-':>12}" for v in values)
        base = results["minidist"].get(key)
        ratios = " ".join(
            f"{(results[e][key] / base):14.1f}" if results[e].get(key) and base else f"{'-':>14}"
            for e in engines[1:]
        )
        print(f"{label:42} {goal:>8} {cells} {ratios}")
    print("\nwhere minidist's first start goes (bench_start.py prints the imports too):")
    print_profile(args.repeat, imports=False)


if __name__ == "__main__":
    main()

"""Against the floors: minidist's per-task, round-trip, large-value and worker-start costs beside
``multiprocessing.Pool``, ``ProcessPoolExecutor``, loky, dask.distributed and Ray, measured in one run.

    python benchmarks/bench_floor.py [--repeat 3] [--mb 200] [--big 100000] [--skip-dask] [--skip-ray]

Every engine gets 2 workers x 1 thread. Each figure is the best of ``--repeat`` runs. Engines that are not
installed are left out (loky comes with joblib; Ray is never a dependency). Printed: one table of seconds
with each engine's ratio to minidist's processes (above 1: minidist is faster), then minidist's own
figures that have no counterpart elsewhere (worker starts, the 100,000-task run with its memory and a
per-stage profile of where the client and scheduler spend their time), and where a round trip goes, for
minidist and ProcessPoolExecutor side by side.
"""

from __future__ import annotations

import argparse
import array
import concurrent.futures
import gc
import multiprocessing
import os
import subprocess
import sys
import threading
import time

from bench_start import child_env, print_profile

N_TASKS = 5000
CHAIN = 300


def noop(x):
    return x


def inc(x):
    return x + 1


def pure_chain(client, n: int) -> float:
    """``n`` chained ``client.submit(inc, x).result()`` with default (pure) keys: each a new key."""
    t = time.perf_counter()
    x = 0
    for _ in range(n):
        x = client.submit(inc, x).result()
    return time.perf_counter() - t


def total(array, i):
    return float(array.sum()) + i


def best(fn, repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def timed_script(code: str) -> float:
    # bytecode may be cached, as for an installed package (bench_start.py says why)
    out = subprocess.check_output(
        [sys.executable, "-c", code], text=True, stderr=subprocess.DEVNULL, env=child_env()
    )
    return float(out.split()[-1])


STARTUP = {
    "minidist": "from minidist import Client\n"
    "c = Client(n_workers=2, threads_per_worker=1, dashboard_address=None)\n"
    "assert c.submit(abs, -1).result() == 1\nc.close()\n",
    "minidist threads": "from minidist import Client\n"
    "c = Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None)\n"
    "assert c.submit(abs, -1).result() == 1\nc.close()\n",
    "ProcessPool": "import concurrent.futures as cf\n"
    "with cf.ProcessPoolExecutor(2) as p:\n    assert p.submit(abs, -1).result() == 1\n",
    "mp.Pool": "import multiprocessing as mp\n"
    "with mp.Pool(2) as p:\n    assert p.apply(abs, (-1,)) == 1\n",
    "loky": "from joblib.externals.loky import get_reusable_executor\n"
    "e = get_reusable_executor(2)\nassert e.submit(abs, -1).result() == 1\ne.shutdown()\n",
    "dask": "from dask.distributed import Client\n"
    "c = Client(n_workers=2, threads_per_worker=1, dashboard_address=None)\n"
    "assert c.submit(abs, -1).result() == 1\nc.close()\n",
    "ray": "import ray\nray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)\n"
    "assert ray.get(ray.remote(abs).remote(-1)) == 1\nray.shutdown()\n",
}


def startup(engine: str) -> float:
    body = STARTUP[engine].replace("\n", "\n    ")
    code = (
        "import time\nt = time.perf_counter()\nif __name__ == '__main__':\n    "
        + body
        + "print(time.perf_counter() - t)\n"
    )
    return timed_script(code)


# ------------------------------------------------------------------------------------ one engine each


def run_futures(submit, result, repeat: int, array) -> dict:
    """The three workloads for an engine with submit/result futures."""
    result(submit(noop, 0))

    def many() -> float:
        t = time.perf_counter()
        futures = [submit(noop, i) for i in range(N_TASKS)]
        for future in futures:
            result(future)
        return time.perf_counter() - t

    def chain() -> float:
        t = time.perf_counter()
        x = 0
        for _ in range(CHAIN):
            x = result(submit(noop, x))
        return time.perf_counter() - t

    def large() -> float:
        t = time.perf_counter()
        futures = [submit(total, array, i) for i in range(3)]
        [result(f) for f in futures]
        return time.perf_counter() - t

    return {"many": best(many, repeat), "chain": best(chain, repeat), "large": best(large, repeat)}


def run_minidist(processes: bool, repeat: int, array) -> dict:
    from minidist import Client

    with Client(
        processes=processes, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as client:
        figures = run_futures(
            lambda f, *a: client.submit(f, *a, pure=False), lambda f: f.result(), repeat, array
        )

        def many_map() -> float:
            t = time.perf_counter()
            client.gather(client.map(noop, range(N_TASKS), pure=False))
            return time.perf_counter() - t

        figures["many"] = min(figures["many"], best(many_map, repeat))
        figures["chain_pure"] = best(lambda: pure_chain(client, CHAIN), repeat)
        return figures


def run_mp_pool(repeat: int, array) -> dict:
    with multiprocessing.get_context("forkserver").Pool(2) as pool:
        figures = run_futures(
            lambda f, *a: pool.apply_async(f, a), lambda r: r.get(), repeat, array
        )

        def many_map() -> float:
            t = time.perf_counter()
            pool.map(noop, range(N_TASKS), chunksize=1)
            return time.perf_counter() - t

        figures["many"] = min(figures["many"], best(many_map, repeat))
        return figures


def run_executor(executor, repeat: int, array) -> dict:
    with executor:
        return run_futures(executor.submit, lambda f: f.result(), repeat, array)


def run_dask(repeat: int, array) -> dict:
    import distributed

    with distributed.Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        return run_futures(
            lambda f, *a: client.submit(f, *a, pure=False), lambda f: f.result(), repeat, array
        )


def run_ray(repeat: int, array) -> dict:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = {}

        def submit(function, *args):
            if function not in remote:
                remote[function] = ray.remote(function)
            return remote[function].remote(*args)

        return run_futures(submit, ray.get, repeat, array)
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------------ minidist's own rows


def worker_starts(repeat: int) -> dict:
    """Seconds until new workers can run tasks: scale 2 -> 4, and client.restart() of 2 workers."""
    from minidist import Client

    with Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        client.submit(noop, 0).result()

        def scale_up() -> float:
            client.cluster.scale(2)
            client.wait_for_workers(2)
            t = time.perf_counter()
            client.cluster.scale(4)
            client.wait_for_workers(4)
            elapsed = time.perf_counter() - t
            client.cluster.scale(2)
            return elapsed / 2  # per new worker

        def restart() -> float:
            t = time.perf_counter()
            client.restart()
            client.submit(noop, 0, pure=False).result()
            return time.perf_counter() - t

        return {"scale": best(scale_up, repeat), "restart": best(restart, repeat)}


class PeakRss:
    """The highest RSS of this process seen while the block runs (sampled every 10 ms)."""

    def __init__(self, process):
        self.process = process
        self._peak = array.array("q", (0,))  # see big_run: no number object made during the run
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def peak(self) -> int:
        return self._peak[0]

    def _sample(self) -> None:
        # time.sleep, not Event.wait: this thread runs in the measured process until after the
        # release, and Event.wait keeps objects made for each wait alive while it sleeps, in the
        # allocator pool current at the end of the run, which keeps that arena (1 MiB) alive and
        # counts against the client (minidist's own sleeping threads avoid the same: architecture.md)
        while self._running:
            self._peak[0] = max(self._peak[0], self.process.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._running = False
        self._thread.join()


_DEADLINE = array.array("d", (0.0,))


def released_rss(client, process) -> int:
    """RSS once the run's keys are forgotten and the scheduler thread has let go of its records: what
    a user sees half a second after the scheduler forgot the run. No ``gc.collect()`` here, nor before
    the start is read: a user does not call it, and a full collection also empties CPython's free
    lists, which can hold a large run's arenas (minidist collects once after a large release itself).

    The deadline is kept in an array made before the run, as ``big_run``'s figures are: a float
    made now lives through the wait, and with it the run's arena it was given (1 MiB, counted
    against the client in 3 of 4 runs, measured)."""
    _DEADLINE[0] = time.monotonic() + 30
    while time.monotonic() < _DEADLINE[0] and client.who_has():
        time.sleep(0.05)  # releases reach the scheduler asynchronously
    time.sleep(0.5)  # its last references go just after it answered (a benchmark may wait)
    return process.memory_info().rss


def big_run(n: int) -> dict:
    """``n`` no-op tasks through map + gather: client+scheduler CPU per task, client memory, stages.

    The figures taken during the run are kept in one array made before it, not in variables: a
    float or int object made in the middle of the run and kept until the RSS after the release is
    read would keep one of the run's allocator arenas (1 MiB) alive, and count against the client.
    """
    import psutil

    from minidist import Client

    me = psutil.Process()
    # rss start, cpu start, t0, t1, rss pending, t2, cpu, rss end, rss after release
    f = array.array("d", bytes(8 * 9))
    with Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        client.submit(noop, 0).result()  # the start: the client is up and ran a task
        f[0] = me.memory_info().rss
        f[1] = time.process_time()  # every thread of this process: user code, client, scheduler
        with PeakRss(me) as peak:
            f[2] = time.perf_counter()
            futures = client.map(noop, range(n), pure=False)
            f[3] = time.perf_counter()
            f[4] = me.memory_info().rss
            results = client.gather(futures)
            f[5] = time.perf_counter()
            f[6] = time.process_time() - f[1]
            f[7] = me.memory_info().rss
            assert len(results) == n
            del futures, results
            f[8] = released_rss(client, me)
    rss_start, _, t0, t1, rss_pending, t2, cpu, rss_end, rss_after = f
    mib = 2**20
    return {
        "n": n,
        "submit": t1 - t0,
        "run+gather": t2 - t1,
        "cpu_per_task_us": cpu / n * 1e6,
        "pending_bytes_per_task": (rss_pending - rss_start) / n,
        "rss_growth_after_release": (rss_after - rss_start) / rss_start,
        "rss_mib": (rss_start / mib, peak.peak / mib, rss_end / mib, rss_after / mib),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--skip-dask", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    import numpy as np

    array = np.random.default_rng(0).random(args.mb * 2**20 // 8)
    engines = {
        "minidist": lambda: run_minidist(True, args.repeat, array),
        "minidist threads": lambda: run_minidist(False, args.repeat, array),
        "ProcessPool": lambda: run_executor(
            concurrent.futures.ProcessPoolExecutor(
                2, mp_context=multiprocessing.get_context("forkserver")
            ),
            args.repeat,
            array,
        ),
        "mp.Pool": lambda: run_mp_pool(args.repeat, array),
    }
    try:
        from joblib.externals.loky import get_reusable_executor

        engines["loky"] = lambda: run_executor(get_reusable_executor(2), args.repeat, array)
    except ImportError:
        pass
    if not args.skip_dask:
        try:
            import distributed  # noqa: F401

            engines["dask"] = lambda: run_dask(args.repeat, array)
        except ImportError:
            pass
    if not args.skip_ray:
        try:
            import ray  # noqa: F401

            engines["ray"] = lambda: run_ray(args.repeat, array)
        except ImportError:
            pass

    results = {}
    for name, run in engines.items():
        startup(name)  # untimed: caches bytecode
        results[name] = {"startup": best(lambda name=name: startup(name), args.repeat), **run()}

    print(
        f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}; best of {args.repeat}"
    )
    rows = [
        ("startup", "start -> first result -> close (s)"),
        ("many", f"{N_TASKS:,} no-op tasks (s)"),
        ("chain", f"{CHAIN} chained submit -> result (s)"),
        ("chain_pure", "  the same, default pure keys (s)"),
        ("large", f"{args.mb} MB array argument x 3 tasks (s)"),
    ]
    names = list(results)
    print(f"{'measure':40} " + " ".join(f"{n:>16}" for n in names))
    for key, label in rows:  # "-": the engine has no such row (no keys to hash)
        print(
            f"{label:40} "
            + " ".join(
                f"{results[n][key]:16.3f}" if key in results[n] else f"{'-':>16}" for n in names
            )
        )
    print(f"{'ratio to minidist processes':40}")
    for key, label in rows:
        base = results["minidist"][key]
        print(
            f"{label:40} "
            + " ".join(
                f"{results[n][key] / base:16.2f}" if key in results[n] else f"{'-':>16}"
                for n in names
            )
        )

    print("\nwhere minidist's first start goes (bench_start.py prints the imports too):")
    print_profile(args.repeat, imports=False)
    starts = worker_starts(args.repeat)
    print(
        f"\nnew worker ready after scale-up: {starts['scale'] * 1000:.1f} ms each; "
        f"client.restart() with 2 workers until a task ran: {starts['restart'] * 1000:.1f} ms"
    )
    engines.clear()
    array = None  # the start of the run below must not count a 200 MB array
    gc.collect()
    big = big_run(args.big)
    print(
        f"{big['n']:,} tasks: map {big['submit']:.2f} s, run + gather {big['run+gather']:.2f} s; "
        f"client+scheduler CPU {big['cpu_per_task_us']:.1f} us a task; "
        f"client memory while pending {big['pending_bytes_per_task']:.0f} B a task; "
        f"RSS after release {big['rss_growth_after_release'] * 100:+.1f}% of the start\n"
        "client RSS (MiB) at the start, peak, end of gather, after release: "
        + ", ".join(f"{v:.0f}" for v in big["rss_mib"])
    )
    profile_stages(min(args.big, 20_000))
    round_trip_stages(3000)


def _thread_times(pids) -> dict:
    """(pid, thread id) -> (CPU ns, ns spent ready but waiting for a CPU, voluntary switches) for every
    thread of ``pids`` (Linux: /proc/PID/task/TID/schedstat and status)."""
    times = {}
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                    run, wait = (int(field) for field in stat.read().split()[:2])
                with open(f"/proc/{pid}/task/{tid}/status") as status:
                    (woken,) = (int(line.split()[1]) for line in status if line.startswith("volu"))
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that ended meanwhile
            times[pid, int(tid)] = (run, wait, woken)
    return times


def _engine_threads() -> set:
    """Native ids of this process's engine threads: minidist's scheduler thread; the executor's
    manager and queue feeder threads."""
    return {
        thread.native_id
        for thread in threading.enumerate()
        if thread.name in ("minidist-scheduler", "QueueFeederThread")
        or type(thread).__name__ == "_ExecutorManagerThread"
    }


def _chain_profile(label: str, submit, result, pids: list, engine: set, n: int) -> str:
    """One line: ``n`` chained round trips, where each trip's wall time, CPU and wake-ups go."""
    before = _thread_times(pids)
    submitting = waiting = 0.0
    start = time.perf_counter()
    x = 0
    for _ in range(n):
        t0 = time.perf_counter()
        future = submit(noop, x)
        t1 = time.perf_counter()
        x = result(future)
        submitting += t1 - t0
        waiting += time.perf_counter() - t1
    wall = time.perf_counter() - start
    after = _thread_times(pids)
    me = os.getpid()
    cpu: dict = {}
    ready = woken = 0
    for (pid, tid), (run, wait, switches) in after.items():
        run0, wait0, switches0 = before.get((pid, tid), (0, 0, 0))
        if pid != me:
            part = "workers"
        elif tid == threading.main_thread().native_id:
            part = "user thread"
        elif tid in engine:
            part = "engine threads"
        else:
            part = "other"
        cpu[part] = cpu.get(part, 0) + run - run0
        ready += wait - wait0
        woken += switches - switches0
    parts = ", ".join(
        f"{part} {cpu.get(part, 0) / n / 1e3:.0f}"
        for part in ("user thread", "engine threads", "workers", "other")
    )
    return (
        f"  {label}: {wall / n * 1e6:.0f} us a trip = submit {submitting / n * 1e6:.0f} + wait "
        f"{waiting / n * 1e6:.0f}; CPU a trip (us): {parts}; thread wake-ups a trip "
        f"{woken / n:.1f}; ready but waiting for a CPU {ready / n / 1e3:.0f} us a trip"
    )


def round_trip_stages(n: int) -> None:
    """Where one chained submit -> result goes, for minidist's process workers and for
    ``ProcessPoolExecutor`` (forkserver) in the same run: the user thread's share (submit, then the
    wait for the result); the CPU a trip costs the user thread, the engine's own threads (minidist's
    scheduler thread; the executor's manager and queue feeder threads) and the workers; the thread
    wake-ups a trip costs (voluntary context switches: each hand-off between threads or processes is
    one); and how long threads that were ready waited for a CPU (the machine's load)."""
    from minidist import Client

    print(f"\nround trip ({n:,} chained submit -> result, 2 workers x 1 thread):")
    with Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        client.submit(noop, 0).result()
        engine = _engine_threads()
        pids = [os.getpid(), *set(client.run(os.getpid).values())]
        line = _chain_profile(
            "minidist",
            lambda f, *a: client.submit(f, *a, pure=False),
            lambda f: f.result(),
            pids,
            engine,
            n,
        )
        pure_line = _chain_profile(
            "minidist, pure keys",
            lambda f, *a: client.submit(inc if f is noop else f, *a),  # inc: each a new key
            lambda f: f.result(),
            pids,
            engine,
            n,
        )
    print(line)
    print(pure_line)
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as executor:
        executor.submit(noop, 0).result()
        executor.submit(noop, 0).result()
        engine = _engine_threads()
        pids = [os.getpid(), *executor._processes]  # the executor's worker processes
        line = _chain_profile("ProcessPool", executor.submit, lambda f: f.result(), pids, engine, n)
    print(line)


def profile_stages(n: int) -> None:
    """Where the client process's time goes for ``n`` tasks, by stage (cProfile on every thread)."""
    import cProfile
    import pstats

    from minidist import Client

    with Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        client.submit(noop, 0).result()
        # the scheduler thread already runs: profile it from its next message through a posted call
        scheduler_profile = cProfile.Profile()
        client.cluster.scheduler.call(lambda scheduler: scheduler_profile.enable()).result(10)
        client_profile = cProfile.Profile()
        client_profile.enable()
        client.gather(client.map(noop, range(n), pure=False))
        client_profile.disable()
        client.cluster.scheduler.call(lambda scheduler: scheduler_profile.disable()).result(10)
    waiting = ("acquire", "poll", "select", "wait", "sleep")  # idle time, not cost
    for label, profile in (
        ("client thread", client_profile),
        ("scheduler thread", scheduler_profile),
    ):
        stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
        busy = {
            where: row for where, row in stats.items() if not any(w in where[2] for w in waiting)
        }
        busy_time = sum(row[2] for row in busy.values())
        print(
            f"\n{label}: {busy_time / n * 1e6:.1f} us a task busy (profiled), top functions by own time:"
        )
        for (filename, line, function), (_, calls, own, _, _) in sorted(
            busy.items(), key=lambda item: -item[1][2]
        )[:8]:
            where = f"{os.path.basename(filename)}:{line} {function}"
            print(f"  {own / n * 1e6:7.2f} us  {calls:>8} calls  {where}")


if __name__ == "__main__":
    main()

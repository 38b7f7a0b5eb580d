"""Releasing many futures at once: the user's thread and how soon the scheduler forgets the keys.

    python benchmarks/bench_release.py [--repeat 3] [--n 100000] [--skip-remote]

A bare client (2 process workers x 1 thread, no dashboard) runs ``map(noop, range(n), pure=False)``,
gathers, then ``del futures``. Printed for each run: the wall time and the CPU time of the user's thread
(``time.thread_time``) of the ``del``, and how long after it the scheduler held no task any more (read
from its books without posting a message, which would wake it: a benchmark's peek, not an API). Then the
same for 2,000 and 10,000 futures (where the scheduler's wake-up, not its work, decides), and for a
client connected over TCP (``--skip-remote`` to leave it out).
"""

from __future__ import annotations

import argparse
import time

from minidist import Client, LocalCluster


def noop(x):
    return x


def one_release(client, scheduler, n: int) -> tuple:
    """(del wall s, del user-thread CPU s, seconds from the del until the scheduler held no task)."""
    futures = client.map(noop, range(n), pure=False)
    client.gather(futures)
    time.sleep(0.3)  # what the gather left to do is done
    t0, c0 = time.perf_counter(), time.thread_time()
    del futures
    t1, c1 = time.perf_counter(), time.thread_time()
    while scheduler.state.tasks and time.perf_counter() - t1 < 10:
        time.sleep(0.001)
    return t1 - t0, c1 - c0, time.perf_counter() - t1


def report(label: str, runs: list) -> None:
    def ms(values) -> str:
        return " ".join(f"{1e3 * v:6.1f}" for v in values)

    print(f"{label}")
    print(f"  del, wall ms:            {ms(r[0] for r in runs)}")
    print(f"  del, user-thread CPU ms: {ms(r[1] for r in runs)}")
    print(f"  forgotten after, ms:     {ms(r[2] for r in runs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--skip-remote", action="store_true")
    args = parser.parse_args()
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        scheduler = cluster.scheduler
        with Client(cluster) as client:
            client.wait_for_workers(2)
            for n in (args.n, 2_000, 10_000):
                runs = [one_release(client, scheduler, n) for _ in range(args.repeat)]
                report(f"{n:,} futures, local client", runs)
        if not args.skip_remote:
            with Client(cluster.scheduler_address) as remote:
                n = args.n // 2
                runs = [one_release(remote, scheduler, n) for _ in range(args.repeat)]
                report(f"{n:,} futures, client over TCP", runs)


if __name__ == "__main__":
    main()

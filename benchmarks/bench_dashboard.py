"""What watching the dashboard costs: a 5,000-task map + gather with and without /status being polled.

Run: python benchmarks/bench_dashboard.py [--tasks 5000] [--rounds 7] [--threads] [--interval 0.5]

Two clusters of the same shape live side by side: one with no dashboard, one with a dashboard polled by a
separate process (as a browser would: ``/json/status.json?since=<newest task seen>`` every --interval
seconds, plus the worker table and progress bars it draws from). Each round times ``client.gather
(client.map(inc, ...))`` on both, in alternating order, on fresh keys. Rows (milliseconds):

  no dashboard        dashboard_address=None
  dashboard, idle     served, nobody looking
  dashboard, polled   served and polled every --interval seconds

and the ratio polled / no dashboard of the medians (the issue's goal: at most 1.05). Wall times on a busy
2-core machine are noisy, so it also prints what one poll costs, in CPU time of this process (all its
threads; the cluster is idle then), with --tasks tasks held in memory and a full task stream (medians of
20): the scheduler thread's share (the copy made inside ``scheduler.call``), the whole snapshot, and the
whole HTTP answer (counting the urllib client, which also runs in this process). Every thread of this
process shares one GIL with the scheduler, so that cost, times the polls per second, bounds how much a
watching page can slow the engine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import urllib.request

from minidist import Client, LocalCluster

# A browser stand-in in its own interpreter, so its JSON parsing does not compete for this process's GIL
# (a real browser would not either). It stops when its stdin closes.
POLLER = r"""
import json, sys, threading, time, urllib.request
url, interval = sys.argv[1], float(sys.argv[2])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
since, polls = None, 0
while not stop.is_set():
    query = "" if since is None else f"?since={since!r}"
    snap = json.loads(urllib.request.urlopen(url + query, timeout=10).read())
    stops = [t["stop"] for t in snap["task_stream"]]
    since = max(stops + ([since] if since is not None else [])) if stops else since
    polls += 1
    stop.wait(interval)
print(polls)
"""


def inc(x):
    return x + 1


def run_once(client: Client, start: int, tasks: int) -> tuple[float, float]:
    """(wall ms, CPU ms of this process) of one map + gather."""
    began, began_cpu = time.perf_counter(), time.process_time()
    futures = client.map(inc, range(start, start + tasks))
    results = client.gather(futures)
    elapsed, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    assert results[-1] == start + tasks
    del futures
    return elapsed * 1000, cpu * 1000


def polled_run(client: Client, start: int, args, status_json: str) -> tuple[tuple, int]:
    """One timed run while a poller process fetches the status JSON; (run_once's times, polls made)."""
    poller = subprocess.Popen(
        [sys.executable, "-c", POLLER, status_json, str(args.interval)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(args.interval)  # let it start and poll once before the work starts
        elapsed = run_once(client, start, args.tasks)
    finally:
        out, _ = poller.communicate("", timeout=30)
    return elapsed, int(out.strip() or 0)


def _timed_view(scheduler, since):
    """Runs on the scheduler thread: the CPU time of the view a status poll takes there."""
    from minidist.dashboard.snapshot import _status_view

    began = time.thread_time()
    _status_view(scheduler, since)
    return time.thread_time() - began


def poll_costs(client: Client, tasks: int, status_json: str) -> dict:
    """CPU milliseconds per poll (median of 20) while ``tasks`` finished tasks are held."""
    cluster = client.cluster
    futures = client.map(inc, range(-tasks, 0))
    client.gather(futures)
    since = 0.0  # the worst case: every entry is new (the answer takes the newest ones, capped)
    probes = {
        "scheduler thread": lambda: cluster.scheduler.call(_timed_view, since).result(),
        "snapshot": lambda: cluster.services.snapshots.status(since),
        "HTTP answer": lambda: urllib.request.urlopen(f"{status_json}?since={since!r}").read(),
    }
    costs = {}
    for label, probe in probes.items():
        samples = []
        for _ in range(20):
            began = time.process_time()
            cpu = probe()
            samples.append(cpu if label == "scheduler thread" else time.process_time() - began)
        samples = [1000 * x for x in samples]
        costs[label] = statistics.median(samples)
    costs["entries"] = len(cluster.services.snapshots.status(since)["task_stream"])
    del futures
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between polls")
    parser.add_argument("--threads", action="store_true", help="thread workers (processes=False)")
    args = parser.parse_args()

    shape = dict(n_workers=2, threads_per_worker=1, processes=not args.threads)
    plain = Client(LocalCluster(dashboard_address=None, **shape))
    watched = Client(LocalCluster(dashboard_address=":0", **shape))
    status_json = watched.dashboard_link.replace("/status", "/json/status.json")
    times: dict[str, list] = {"no dashboard": [], "dashboard, idle": [], "dashboard, polled": []}
    polls = 0
    try:
        next_key = 0
        for client in (plain, watched):  # warm up: functions shipped, workers started
            run_once(client, next_key, args.tasks)
            next_key += args.tasks
        for round_ in range(args.rounds):
            labels = list(times)
            for label in labels[round_ % 3 :] + labels[: round_ % 3]:  # rotate: no order bias
                if label == "dashboard, polled":
                    elapsed, count = polled_run(watched, next_key, args, status_json)
                    polls += count
                else:
                    elapsed = run_once(
                        plain if label == "no dashboard" else watched, next_key, args.tasks
                    )
                times[label].append(elapsed)
                next_key += args.tasks
        costs = poll_costs(watched, args.tasks, status_json)
    finally:
        watched.close()
        plain.close()

    mode = "threads" if args.threads else "processes"
    out = sys.stdout
    out.write(
        f"{args.tasks} tasks map+gather, 2 workers x 1 thread ({mode}), {args.rounds} rounds, "
        f"poll every {args.interval}s ({polls} polls in all)\n"
    )
    walls = {label: [wall for wall, _ in values] for label, values in times.items()}
    cpus = {label: statistics.median(cpu for _, cpu in values) for label, values in times.items()}
    for label, values in walls.items():
        out.write(
            f"  {label:<18} wall median {statistics.median(values):7.1f} ms  min {min(values):7.1f}"
            f"  max {max(values):7.1f}   CPU of this process {cpus[label]:7.1f} ms\n"
        )
    for other in ("no dashboard", "dashboard, idle"):
        wall = statistics.median(walls["dashboard, polled"]) / statistics.median(walls[other])
        cpu = cpus["dashboard, polled"] / cpus[other]
        out.write(f"  polled / {other}: wall {wall:.3f}, CPU {cpu:.3f} (goal <= 1.05)\n")
    entries = costs.pop("entries")
    out.write(
        f"one poll with {args.tasks} tasks in memory, {entries} task-stream entries in the answer "
        "(median CPU ms):\n"
    )
    for label, value in costs.items():
        out.write(
            f"  {label:<18} {value:6.2f} ms  (x {1 / args.interval:g}/s = "
            f"{value / args.interval / 10:.2f}% of one core)\n"
        )


if __name__ == "__main__":
    main()

"""Where a first start goes: ``Client()`` (2 process workers x 1 thread) -> first result -> close,
stage by stage, so the next thing to cut is visible.

    python benchmarks/bench_start.py [--repeat 7]

Each run is a fresh interpreter, as a user's script is. Printed, median and best of ``--repeat`` runs:

- the stages of the script: interpreter start, ``from minidist import Client``, ``Client()`` (and how
  much of it the client's own thread spent on the CPU: the rest is waiting for the template process),
  the first task (submit -> it runs on a worker -> its result is back), ``close()``;
- CPU of the client process and of the template process with its workers;
- what runs beside ``Client()``: a template process alone, split into the bare interpreter and the
  worker side's imports;
- the imports of both processes (``-X importtime`` self times, grouped by top-level module).

Bytecode is cached first (one untimed run, with ``PYTHONDONTWRITEBYTECODE`` lifted for the children), as
it is for an installed package: without the cache every start compiles minidist's ~150 modules from
source, which costs more than everything else here. ``bench_floor.py`` and ``bench_core.py`` time their
start rows the same way and print this profile's summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# runs in a fresh interpreter; prints its stamps (perf_counter is one clock for every process here)
SCRIPT = """import time
first_line = time.perf_counter()
import resource, json
if __name__ == '__main__':
    from minidist import Client
    imported = time.perf_counter()
    cpu_before = time.thread_time()
    c = Client(n_workers=2, threads_per_worker=1, dashboard_address=None)
    made = time.perf_counter()
    client_cpu = time.thread_time() - cpu_before
    ran = c.submit(time.perf_counter, pure=False).result()
    result = time.perf_counter()
    c.close()
    closed = time.perf_counter()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps(dict(first_line=first_line, imported=imported, made=made, client_cpu=client_cpu,
        ran=ran, result=result, closed=closed, cpu=time.process_time(),
        children_cpu=children.ru_utime + children.ru_stime)))
"""

STAGES = [  # (label, from stamp, to stamp)
    ("interpreter start (spawn -> first line)", "spawn", "first_line"),
    ("from minidist import Client", "first_line", "imported"),
    ("Client()", "imported", "made"),
    ("submit -> the task runs on a worker", "made", "ran"),
    ("task ran -> its result in the client", "ran", "result"),
    ("close()", "result", "closed"),
    ("script total (what bench_floor times)", "first_line", "closed"),
]


def child_env() -> dict:
    """The children's environment: bytecode may be cached (as after ``pip install``)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def one_start() -> dict:
    spawn = time.perf_counter()
    out = subprocess.check_output([sys.executable, "-c", SCRIPT], text=True, env=child_env())
    stamps = json.loads(out.splitlines()[-1])
    stamps["spawn"] = spawn
    return stamps


def starts(repeat: int) -> list:
    one_start()  # untimed: caches bytecode
    return [one_start() for _ in range(repeat)]


def wall(command: list) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=child_env())
    return time.perf_counter() - start


def template_alone(repeat: int) -> tuple:
    """(bare interpreter, template with the worker side imported), best of ``repeat``, seconds."""
    from minidist.deploy.launcher import python_command

    bare = [sys.executable, "-c", "pass"]
    template = python_command(
        "from minidist.worker.template import main; from minidist.worker.process import main"
    )
    return (min(wall(bare) for _ in range(repeat)), min(wall(template) for _ in range(repeat)))


def import_groups(command: list, repeat: int = 3) -> tuple:
    """(total ms, module count, [(top-level name, ms), ...]) of ``-X importtime`` self times, the
    best of ``repeat`` runs per module."""
    best: dict = {}
    for _ in range(repeat):
        err = subprocess.run(
            [command[0], "-X", "importtime", *command[1:]],
            env=child_env(),
            capture_output=True,
            text=True,
        ).stderr
        for line in err.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            own, _, name = line[len("import time:") :].split("|")
            name = name.strip()
            best[name] = min(best.get(name, 10**9), int(own))
    groups: dict = {}
    for name, own in best.items():
        top = (
            name.split(".")[0]
            if not name.startswith("minidist.")
            else ".".join(name.split(".")[:2])
        )
        groups[top] = groups.get(top, 0) + own / 1000
    ranked = sorted(groups.items(), key=lambda item: -item[1])
    return sum(best.values()) / 1000, len(best), ranked


def stage_summary(runs: list) -> list:
    """``[(label, median ms, best ms), ...]`` for STAGES, then the CPU rows."""
    rows = []
    for label, start, end in STAGES:
        values = [(run[end] - run[start]) * 1000 for run in runs]
        rows.append((label, statistics.median(values), min(values)))
    for label, key in (
        ("  Client(): the client thread's CPU", "client_cpu"),
        ("CPU: the client process", "cpu"),
        ("CPU: the template and its workers", "children_cpu"),
    ):
        values = [run[key] * 1000 for run in runs]
        rows.append((label, statistics.median(values), min(values)))
    return rows


def print_profile(repeat: int, imports: bool = True) -> None:
    runs = starts(repeat)
    print(
        f"first start, 2 process workers x 1 thread, bytecode cached; "
        f"median (best) of {repeat}, load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    for label, median, low in stage_summary(runs):
        print(f"  {label:44} {median:7.1f} ms ({low:.1f})")
    bare, template = template_alone(repeat)
    print(
        f"  beside Client(): a template process alone {template * 1000:.1f} ms "
        f"(bare interpreter {bare * 1000:.1f} ms + worker-side imports {(template - bare) * 1000:.1f} ms)"
    )
    if not imports:
        return
    from minidist.deploy.launcher import python_command

    for label, command in (
        ("from minidist import Client", [sys.executable, "-c", "from minidist import Client"]),
        (
            "the template",
            python_command(
                "from minidist.worker.template import main; from minidist.worker.process import main"
            ),
        ),
    ):
        total, count, ranked = import_groups(command)
        top = ", ".join(f"{name} {ms:.1f}" for name, ms in ranked[:10])
        print(
            f"  imports of {label}: {count} modules, {total:.1f} ms self time; ms by module: {top}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print_profile(args.repeat)


if __name__ == "__main__":
    main()

"""Run every example on minidist, then on dask.distributed, and check that they print the same.

Run: python examples/run_examples.py [--only NAME ...] [--modes minidist,dask,dask-remote]

Three ways to run each example (a script that takes an optional scheduler address)::

    minidist      python example.py                     its own local minidist cluster
    dask          python example_for_dask.py            the same program after swapping the import
    dask-remote   python example_for_dask.py ADDRESS    a dask cluster started once as separate
                                                        `dask scheduler` + `dask worker` processes
                                                        (the shape of a multi-machine deployment)

Swapping the import is a word swap in the source, ``minidist`` → ``distributed``: the imports, and with
them the one logger name that says which engine logged (``minidist.worker``). The joblib backend's name
is the other word that differs (``"minidist"`` → ``"dask"``). Nothing else changes. An example that
cannot run against a scheduler reached by address says why in a ``LOCAL_ONLY = "..."`` line and is not
run in that mode. Every output is compared with minidist's; the runner prints a diff for each mismatch
and exits 1 if any run failed or differed. docs/moving.md lists what cannot move and why.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import difflib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODES = ("minidist", "dask", "dask-remote")
RUN_TIMEOUT = 120.0


@dataclass
class Outcome:
    example: str
    mode: str
    output: str = ""
    error: str = ""
    seconds: float = 0.0
    skipped: str = ""  # why this mode does not apply
    ok: bool = True
    notes: list = field(default_factory=list)


def examples() -> list:
    return sorted(
        name[:-3]
        for name in os.listdir(HERE)
        if name.endswith(".py") and not name.startswith(("_", "run_"))
    )


def for_dask(source: str) -> str:
    """The example with minidist swapped for dask.distributed."""
    source = re.sub(r"""backend=(["'])minidist\1""", r"backend=\1dask\1", source)
    return re.sub(r"\bminidist\b", "distributed", source)


def local_only_reason(source: str):
    found = re.search(r"""^LOCAL_ONLY = (["'])(.+)\1$""", source, re.MULTILINE)
    return found.group(2) if found else None


def run_script(path: str, args: list, env: dict) -> tuple:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, path, *args],
        cwd=os.path.dirname(path),
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, done.stdout, done.stderr, time.perf_counter() - start


class DaskProcesses:
    """``dask scheduler`` and ``dask worker`` as separate processes, reached by address."""

    def __init__(self, workdir: str, env: dict, n_workers: int = 1):
        self.scheduler_file = os.path.join(workdir, "dask-scheduler.json")
        self.processes = []
        self.log = open(os.path.join(workdir, "dask-cluster.log"), "w")
        try:
            self._start(
                ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0"]
                + ["--no-dashboard", "--scheduler-file", self.scheduler_file],
                env,
            )
            self._start(
                ["distributed.cli.dask_worker", "--scheduler-file", self.scheduler_file]
                + ["--nworkers", str(n_workers), "--nthreads", "2", "--no-dashboard", "--no-nanny"]
                + ["--local-directory", workdir],
                env,
            )
            self.address = self._wait_for_workers(n_workers, env)
        except BaseException:  # a failed start, or a SIGTERM meanwhile: stop what did start
            self.close()
            raise

    def _start(self, args: list, env: dict) -> None:
        self.processes.append(
            subprocess.Popen(
                [sys.executable, "-m", *args],
                env=env,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    def _wait_for_workers(self, n_workers: int, env: dict) -> str:
        probe = (
            "import sys\nfrom distributed import Client\n"
            f"with Client(scheduler_file={self.scheduler_file!r}, timeout=60) as c:\n"
            f"    c.wait_for_workers({n_workers}, timeout=60)\n"
            "    print(c.scheduler.address)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=90
        )
        if done.returncode != 0:
            self.close()
            raise RuntimeError(f"the dask cluster did not start:\n{done.stderr}")
        with open(self.scheduler_file) as f:
            return json.load(f)["address"]

    def close(self) -> None:
        for process in reversed(self.processes):  # workers first, then the scheduler
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.log.close()


def run_all(names: list, modes: list, jobs: int = 2, verbose: bool = True) -> list:
    """Every (example, mode) run, ``jobs`` at a time; outcomes in (example, mode) order."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    workdir = tempfile.mkdtemp(prefix="minidist-examples-")
    remote = None
    try:
        if "dask-remote" in modes:
            remote = DaskProcesses(workdir, env)
        runs = []
        for name in names:
            with open(os.path.join(HERE, f"{name}.py")) as f:
                source = f.read()
            dask_path = os.path.join(workdir, f"{name}.py")
            with open(dask_path, "w") as f:
                f.write(for_dask(source))
            for mode in modes:
                outcome = Outcome(name, mode)
                if mode == "dask-remote" and local_only_reason(source):
                    outcome.skipped = local_only_reason(source)
                path = os.path.join(HERE, f"{name}.py") if mode == "minidist" else dask_path
                args = [remote.address] if mode == "dask-remote" and remote else []
                runs.append((outcome, path, args))

        def run(outcome, path, args) -> Outcome:
            if not outcome.skipped:
                code, outcome.output, outcome.error, outcome.seconds = run_script(path, args, env)
                outcome.ok = code == 0
            if verbose:
                report_one(outcome)
            return outcome

        # the runs are separate processes that mostly wait on imports and start-up: overlap them
        with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
            outcomes = list(pool.map(lambda r: run(*r), runs))
    finally:
        if remote is not None:
            remote.close()
        shutil.rmtree(workdir, ignore_errors=True)
    compare(outcomes)
    return outcomes


def compare(outcomes: list) -> None:
    """Mark every run whose output differs from minidist's run of the same example."""
    reference = {o.example: o for o in outcomes if o.mode == "minidist"}
    for outcome in outcomes:
        base = reference.get(outcome.example)
        if outcome.skipped or base is None or outcome is base or not outcome.ok:
            continue
        if outcome.output != base.output:
            outcome.ok = False
            diff = difflib.unified_diff(
                base.output.splitlines(),
                outcome.output.splitlines(),
                "minidist",
                outcome.mode,
                lineterm="",
            )
            outcome.notes.append("\n".join(diff))


def report_one(outcome: Outcome) -> None:
    if outcome.skipped:
        print(f"  {outcome.example:24} {outcome.mode:12} skipped: {outcome.skipped}", flush=True)
        return
    status = "ran" if outcome.ok else "FAILED"
    print(
        f"  {outcome.example:24} {outcome.mode:12} {status} in {outcome.seconds:.1f} s", flush=True
    )
    if not outcome.ok:
        print(outcome.error[-3000:], flush=True)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    # a SIGTERM (a test's or a CI's timeout) ends the run through run_all's ``finally``: the dask
    # scheduler and worker it started live in sessions of their own and would outlive it
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="example names (default: all)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated modes")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    args = parser.parse_args(argv)
    names = args.only or examples()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES) or set(names) - set(examples())
    if unknown:
        parser.error(f"unknown: {sorted(unknown)}")
    print(f"running {len(names)} examples in modes {', '.join(modes)}", flush=True)
    outcomes = run_all(names, modes, args.jobs)
    bad = [o for o in outcomes if not o.ok]
    for outcome in bad:
        for note in outcome.notes:
            print(f"\n{outcome.example} ({outcome.mode}) printed something else:\n{note}")
    ran = sum(1 for o in outcomes if not o.skipped)
    print(f"\n{ran} runs, {len(bad)} failed or differed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

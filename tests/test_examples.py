"""The programs in examples/ print the same on minidist and on dask.distributed (local and by address)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("distributed", reason="the examples runner compares with dask.distributed")
pytest.importorskip("sklearn", reason="the joblib example uses scikit-learn (test extra)")
pytest.importorskip("pandas", reason="the dataframe example uses pandas (test extra)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(
    400
)  # ~47 CPU-seconds in all (about 30 s on an idle 2-core machine); longer when shared
def test_every_example_moves_to_dask_distributed_and_back():
    runner = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "examples", "run_examples.py")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its group: the runner and the examples it runs
    )
    try:
        stdout, stderr = runner.communicate(timeout=380)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the runner then stops the dask scheduler and worker it started
        os.killpg(runner.pid, signal.SIGTERM)
        stdout, stderr = runner.communicate(timeout=60)
        pytest.fail(f"the examples took over 380 s:\n{stdout}{stderr}")
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
    assert runner.returncode == 0, stdout + stderr
    lines = stdout.splitlines()
    names = sorted(
        n[:-3]
        for n in os.listdir(os.path.join(ROOT, "examples"))
        if n.endswith(".py") and not n.startswith(("_", "run_"))
    )
    for name in names:
        ran = [line.split()[1] for line in lines if line.split()[:1] == [name] and " ran " in line]
        skipped = [line for line in lines if line.split()[:1] == [name] and "skipped:" in line]
        # every example runs on minidist and on local dask.distributed; by address unless it says why not
        assert {"minidist", "dask"} <= set(ran), (name, stdout)
        assert "dask-remote" in ran or skipped, (name, stdout)
    assert lines[-1].endswith(", 0 failed or differed")

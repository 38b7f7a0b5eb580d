"""The programs in examples/ print the same on minidist and on dask.distributed (local and by address)."""

from __future__ import annotations

import os
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
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "run_examples.py")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    names = sorted(
        n[:-3]
        for n in os.listdir(os.path.join(ROOT, "examples"))
        if n.endswith(".py") and not n.startswith(("_", "run_"))
    )
    for name in names:
        ran = [line.split()[1] for line in lines if line.split()[:1] == [name] and " ran " in line]
        skipped = [line for line in lines if line.split()[:1] == [name] and "skipped:" in line]
        # every example runs on minidist and on local dask.distributed; by address unless it says why not
        assert {"minidist", "dask"} <= set(ran), (name, done.stdout)
        assert "dask-remote" in ran or skipped, (name, done.stdout)
    assert lines[-1].endswith(", 0 failed or differed")

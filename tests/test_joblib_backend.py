"""joblib.Parallel (and scikit-learn's n_jobs) on minidist through the "minidist" backend."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from conftest import wait_until

joblib = pytest.importorskip("joblib", reason="joblib is a test extra: pip install -e '.[test]'")

from minidist import Client  # noqa: E402

pytestmark = pytest.mark.timeout(90)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
both_kinds = pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])


def square(x):
    return x * x


def where(_):
    return os.getpid()


def fails(x):
    if x == 3:
        raise ValueError("three is bad")
    return x


def identity_of(array, i):
    """Which copy of ``array`` this call saw: (process, object id)."""
    return os.getpid(), id(array), int(array[i])


def batch_tasks(client) -> list:
    return [r for r in client.get_task_stream() if r["prefix"] == "joblib-batch"]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": ROOT},
    )


@pytest.mark.parametrize("order", ["joblib-first", "client-first"])
def test_backend_needs_no_import_once_a_client_exists(order):
    make_client = "client = Client(processes=False, n_workers=2, dashboard_address=None)\n"
    imports = "import joblib\n"
    code = (
        "import sys\nfrom minidist import Client\n"
        + (imports + make_client if order == "joblib-first" else make_client + imports)
        + "with joblib.parallel_config(backend='minidist'):\n"
        "    a = joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(20))\n"
        "with joblib.parallel_backend('minidist'):\n"
        "    b = joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(20))\n"
        "assert a == b == list(range(20)), (a, b)\n"
        "print(len(client.get_task_stream()) > 0)\n"
        "client.close()\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_import_minidist_and_a_client_do_not_import_joblib():
    code = (
        "import sys\nimport minidist\nassert 'joblib' not in sys.modules\n"
        "client = minidist.Client(processes=False, n_workers=1, dashboard_address=None)\n"
        "assert 'joblib' not in sys.modules, 'Client() imported joblib'\n"
        "client.close()\nprint('ok')\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_without_a_client_the_backend_says_so():
    code = (
        "import joblib\nimport minidist.integrations.joblib\n"
        "try:\n"
        "    with joblib.parallel_config(backend='minidist'):\n"
        "        joblib.Parallel()(joblib.delayed(abs)(i) for i in range(3))\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert "No clients found" in done.stdout


@both_kinds
def test_parallel_runs_on_the_cluster(processes):
    with Client(
        processes=processes, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as client:
        with joblib.parallel_config(backend="minidist"):
            results = joblib.Parallel()(joblib.delayed(square)(i) for i in range(50))
        assert results == [i * i for i in range(50)]
        with joblib.parallel_config(backend="minidist"):
            pids = set(joblib.Parallel(batch_size=1)(joblib.delayed(where)(i) for i in range(20)))
        if processes:
            assert pids <= {w["pid"] for w in client.scheduler_info()["workers"].values()}
            assert os.getpid() not in pids
        else:
            assert pids == {os.getpid()}
        workers = set(client.scheduler_info()["workers"])
        assert {r["worker"] for r in batch_tasks(client)} <= workers
        assert len(batch_tasks(client)) >= 20


def test_a_client_passed_in_is_used_rather_than_the_default():
    with Client(processes=False, n_workers=1, dashboard_address=None) as chosen:
        with Client(processes=False, n_workers=1, dashboard_address=None) as default:
            with joblib.parallel_config(backend="minidist", client=chosen):
                assert joblib.Parallel()(joblib.delayed(square)(i) for i in range(10)) == [
                    i * i for i in range(10)
                ]
            assert batch_tasks(chosen) and not batch_tasks(default)


def test_ten_thousand_tiny_calls_become_few_tasks():
    with Client(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None) as c:
        with joblib.parallel_config(backend="minidist"):
            results = joblib.Parallel()(joblib.delayed(square)(i) for i in range(10_000))
        assert results == [i * i for i in range(10_000)]
        # joblib's auto-batching packs the calls: far fewer tasks than calls
        assert 0 < len(batch_tasks(c)) < 1_000


def test_a_large_shared_input_travels_once_per_worker():
    np = pytest.importorskip("numpy")
    big = np.arange(400_000)  # 3.2 MB: above the scatter threshold
    with Client(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None) as c:
        with joblib.parallel_config(backend="minidist"):
            seen = joblib.Parallel(batch_size=1)(
                joblib.delayed(identity_of)(big, i) for i in range(24)
            )
        assert [value for _, _, value in seen] == list(range(24))
        copies = {(pid, ident) for pid, ident, _ in seen}
        # one copy per worker process, not one per call
        assert len(copies) <= len(c.scheduler_info()["workers"])
        # and the scattered value is released when the Parallel call ends
        assert wait_until(lambda: not any(c.has_what().values()))


@both_kinds
def test_a_failing_call_raises_its_error(processes):
    with Client(processes=processes, n_workers=2, dashboard_address=None):
        with (
            joblib.parallel_config(backend="minidist"),
            pytest.raises(ValueError, match="three is bad"),
        ):
            joblib.Parallel()(joblib.delayed(fails)(i) for i in range(6))


_started = []
_release = threading.Event()


def slow_or_failing(i):
    if i == 0:
        raise KeyError("first call fails")
    _started.append(i)
    _release.wait(10)
    return i


def test_a_failure_cancels_the_calls_not_yet_run():
    _started.clear()
    _release.clear()
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        try:
            with (
                joblib.parallel_config(backend="minidist", n_jobs=2),
                pytest.raises(KeyError, match="first call fails"),
            ):
                joblib.Parallel(batch_size=1, pre_dispatch="all")(
                    joblib.delayed(slow_or_failing)(i) for i in range(40)
                )
        finally:
            _release.set()
        assert wait_until(lambda: not any(c.processing().values()))
        assert len(_started) < 10  # the rest were cancelled before they could start


def first_fast(i):
    if i == 0:
        return i
    return slow_or_failing(i)


def test_stopping_a_generator_early_cancels_the_rest():
    _started.clear()
    _release.clear()
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        try:
            with joblib.parallel_config(backend="minidist", n_jobs=2):
                results = joblib.Parallel(batch_size=1, pre_dispatch="all", return_as="generator")(
                    joblib.delayed(first_fast)(i) for i in range(40)
                )
                first = next(results)
                with pytest.warns(UserWarning, match="cancelled"):
                    results.close()  # the caller stops iterating: the calls not started are cancelled
        finally:
            _release.set()
        assert first == 0
        assert wait_until(lambda: not any(c.processing().values()))
        assert len(_started) < 10


def test_scikit_learn_runs_on_the_workers():
    pytest.importorskip("sklearn", reason="scikit-learn is a test extra")
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = make_classification(n_samples=200, n_features=8, random_state=0)
    with Client(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None) as c:
        workers = set(c.scheduler_info()["workers"])
        with joblib.parallel_config(backend="minidist"):
            search = GridSearchCV(SVC(), {"C": [0.1, 1, 10], "gamma": [0.01, 0.1]}, cv=3, n_jobs=-1)
            search.fit(X, y)
        grid_tasks = batch_tasks(c)
        assert search.best_score_ > 0.7
        assert grid_tasks and {r["worker"] for r in grid_tasks} <= workers

        with joblib.parallel_config(backend="minidist"):
            forest = RandomForestClassifier(n_estimators=20, n_jobs=-1, random_state=0).fit(X, y)
        assert forest.score(X, y) > 0.9
        forest_tasks = batch_tasks(c)[len(grid_tasks) :]
        assert forest_tasks and {r["worker"] for r in forest_tasks} <= workers


def test_ten_thousand_calls_are_not_slower_than_loky():
    """benchmarks/bench_joblib.py, in a process of its own (loky's processes leave with it)."""
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_joblib.py"), "--repeat", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert done.returncode == 0, done.stderr
    times = dict(
        line.rsplit(" ", 2)[:2] for line in done.stdout.splitlines() if line.endswith(" s")
    )
    loky, ours = float(times["loky"]), float(times["minidist"])
    # slack for a loaded machine: "not slower" within noise, never several times slower
    assert ours < 2 * loky + 0.15, done.stdout

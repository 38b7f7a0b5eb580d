"""dask.distributed's code-shipping worker plugins: UploadFile, UploadDirectory, Environ, PipInstall.

Each is registered with ``client.register_plugin`` as in dask, reaches every worker now and every worker
started later, and fails on the client with a clear error when its input is bad.
"""

from __future__ import annotations

import os
import zipfile

import pytest

from minidist import (
    Client,
    Environ,
    LocalCluster,
    PipInstall,
    UploadDirectory,
    UploadFile,
    get_worker,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def client():
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        with Client(cluster) as client:
            yield client


def imported_value(module: str, name: str):
    import importlib

    return getattr(importlib.import_module(module), name)


def environment(key: str):
    return os.environ.get(key)


def files_under(folder: str) -> list:
    root = os.path.join(get_worker().local_directory, folder)
    found = []
    for base, _, files in os.walk(root):
        found += [os.path.relpath(os.path.join(base, f), root) for f in files]
    return sorted(found)


def everywhere(client, function, *args) -> set:
    """The distinct answers of every worker, now, through tasks pinned to each."""
    addresses = list(client.scheduler_info()["workers"])
    futures = [client.submit(function, *args, workers=[a], pure=False) for a in addresses]
    return set(client.gather(futures))


def test_upload_file_plugins_of_two_files_both_stay(client, tmp_path):
    (tmp_path / "shipped_alpha.py").write_text("VALUE = 'alpha'\n")
    (tmp_path / "shipped_beta.py").write_text("VALUE = 'beta'\n")
    client.register_plugin(UploadFile(tmp_path / "shipped_alpha.py"))
    client.register_plugin(UploadFile(str(tmp_path / "shipped_beta.py")))
    assert everywhere(client, imported_value, "shipped_alpha", "VALUE") == {"alpha"}
    assert everywhere(client, imported_value, "shipped_beta", "VALUE") == {"beta"}

    # a worker started later gets both before its first task
    client.cluster.scale(3)
    client.wait_for_workers(3)
    assert everywhere(client, imported_value, "shipped_alpha", "VALUE") == {"alpha"}
    client.cluster.scale(2)


def test_upload_file_refuses_bad_files_before_sending(tmp_path):
    broken = tmp_path / "broken_module.py"
    broken.write_text("def f(:\n")
    with pytest.raises(SyntaxError, match="broken_module.py does not compile"):
        UploadFile(broken)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"\.py, \.zip or \.egg"):
        UploadFile(text)
    with pytest.raises(FileNotFoundError):
        UploadFile(tmp_path / "missing.py")


def test_upload_directory_ships_a_project_and_skips_what_dask_skips(client, tmp_path):
    project = tmp_path / "shipped_project"
    (project / "shipped_pkg").mkdir(parents=True)
    (project / "shipped_pkg" / "__init__.py").write_text("ANSWER = 42\n")
    (project / "shipped_pkg" / "cached.pyc").write_bytes(b"\x00")
    (project / "tests").mkdir()
    (project / "tests" / "test_it.py").write_text("")
    (project / "README").write_text("read me")

    client.register_plugin(UploadDirectory(project, update_path=True))
    assert everywhere(client, imported_value, "shipped_pkg", "ANSWER") == {42}
    [listing] = everywhere(client, lambda: tuple(files_under("shipped_project")))
    assert listing == ("README", os.path.join("shipped_pkg", "__init__.py"))


def test_upload_directory_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="is not one"):
        UploadDirectory(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="mode='workers' only"):
        UploadDirectory(tmp_path, mode="scheduler")


def test_environ_reaches_process_workers_and_later_ones(client):
    client.register_plugin(Environ({"MINIDIST_SHIPPED_FLAG": 7}))
    assert everywhere(client, environment, "MINIDIST_SHIPPED_FLAG") == {"7"}
    assert os.environ.get("MINIDIST_SHIPPED_FLAG") is None  # this process is not a worker here
    [address] = list(client.scheduler_info()["workers"])[:1]
    client.restart_workers([address])  # a fresh worker gets it before its first task
    assert everywhere(client, environment, "MINIDIST_SHIPPED_FLAG") == {"7"}


def test_environ_on_thread_workers_sets_and_then_restores_this_process():
    key = "MINIDIST_SHIPPED_THREADS"
    assert key not in os.environ
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            client.register_plugin(Environ({key: "on"}), name="threads-env")
            assert client.submit(environment, key).result() == "on"
            client.unregister_worker_plugin("threads-env")
            assert key not in os.environ


def probe_wheel(folder) -> str:
    """A minimal pure-Python wheel, built by hand (no build tools, no network)."""
    path = folder / "minidist_pip_probe-1.0-py3-none-any.whl"
    info = "minidist_pip_probe-1.0.dist-info"
    members = {
        "minidist_pip_probe/__init__.py": "PROBE = 'installed'\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: minidist-pip-probe\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    members[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*members, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return str(path)


def test_pip_install_runs_pip_where_workers_run_and_reports_its_failure(client, tmp_path):
    wheel = probe_wheel(tmp_path)
    target = tmp_path / "site"
    options = ["--no-index", "--no-deps", "--target", str(target)]
    client.register_plugin(PipInstall([str(wheel)], pip_options=options))
    assert (target / "minidist_pip_probe" / "__init__.py").read_text() == "PROBE = 'installed'\n"

    with pytest.raises(RuntimeError, match="pip install minidist-no-such-package-xyz failed"):
        client.register_plugin(
            PipInstall(["minidist-no-such-package-xyz"], pip_options=["--no-index"]),
            name="failing-pip",
        )
    with pytest.raises(TypeError, match="list of requirements"):
        PipInstall("numpy")

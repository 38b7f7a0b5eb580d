"""Worker and scheduler plugins, worker callbacks and upload_file, through the public API: on current
workers and on workers started later (scale, replacement after a crash), on both worker kinds, and
from a remote client."""

from __future__ import annotations

import os
import signal
import uuid
import zipfile

import pytest

from conftest import wait_until
from minidist import Client, LocalCluster, SchedulerPlugin, WorkerPlugin, get_worker

pytestmark = pytest.mark.timeout(90)


class FileMarks(WorkerPlugin):
    """Leaves a file per worker for setup and teardown (observable across processes), and records
    the transitions of tasks it sees."""

    def __init__(self, folder):
        self.folder = str(folder)
        self.transitions = []

    def setup(self, worker):
        self.address = worker.address
        self._mark("setup")

    def teardown(self, worker):
        self._mark("teardown")

    def transition(self, key, start, finish, **kwargs):
        self.transitions.append((key, start, finish))

    def _mark(self, what):
        name = f"{what}-{self.address.replace('/', '_').replace(':', '_')}"
        open(os.path.join(self.folder, name), "w").close()


def marks(folder, what):
    return sorted(p for p in os.listdir(folder) if p.startswith(what + "-"))


def seen_transitions(name):
    return list(get_worker().plugins[name].transitions)


def fail():
    raise ValueError("task failure")


def inc(x):
    return x + 1


@pytest.fixture(params=[True, False], ids=["processes", "threads"])
def cluster(request):
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=request.param,
        dashboard_address=None,
        protocol="tcp",
    ) as c:
        yield c


def test_worker_plugin_runs_on_current_and_scaled_up_workers(cluster, tmp_path):
    with Client(cluster) as client:
        assert sorted(client.register_plugin(FileMarks(tmp_path), name="marks")) == sorted(
            client.nthreads()
        )
        assert len(marks(tmp_path, "setup")) == 2
        cluster.scale(3)
        client.wait_for_workers(3, timeout=30)
        assert wait_until(lambda: len(marks(tmp_path, "setup")) == 3)
        # transitions around each task, on the worker that ran it
        future = client.submit(inc, 1)
        assert future.result() == 2
        [worker] = client.who_has(future)[future.key]
        seen = client.submit(seen_transitions, "marks", workers=[worker], pure=False).result()
        assert (future.key, "ready", "executing") in seen
        assert (future.key, "executing", "memory") in seen
        bad = client.submit(fail)
        with pytest.raises(ValueError):
            bad.result()
        errors = client.run(lambda dask_worker: list(dask_worker.plugins["marks"].transitions))
        assert any(t == (bad.key, "executing", "error") for ts in errors.values() for t in ts)
        # unregistering tears it down everywhere, and new workers no longer get it
        client.unregister_worker_plugin("marks")
        assert len(marks(tmp_path, "teardown")) == 3
        with pytest.raises(ValueError, match="marks"):
            client.unregister_worker_plugin("marks")
        cluster.scale(4)
        client.wait_for_workers(4, timeout=30)
        assert len(marks(tmp_path, "setup")) == 3


def test_plugin_reaches_the_replacement_of_a_killed_worker(tmp_path):
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(FileMarks(tmp_path), name="marks")
        [info] = client.scheduler_info()["workers"].values()
        os.kill(info["pid"], signal.SIGKILL)
        assert wait_until(lambda: len(marks(tmp_path, "setup")) == 2, timeout=30)
        assert client.submit(inc, 1).result(timeout=30) == 2


def test_worker_plugin_from_a_remote_client_and_callbacks(cluster, tmp_path):
    with Client(cluster.scheduler_address) as remote:
        (tmp_path / "a").mkdir()
        remote.register_plugin(FileMarks(tmp_path / "a"), name="marks")
        assert len(marks(tmp_path / "a", "setup")) == 2

        def note_worker(dask_worker):
            open(os.path.join(str(tmp_path), f"callback-{dask_worker.name}"), "w").close()

        remote.register_worker_callbacks(note_worker)
        assert marks(tmp_path, "callback") == ["callback-0", "callback-1"]
        cluster.scale(3)
        assert wait_until(lambda: len(marks(tmp_path, "callback")) == 3, timeout=30)


class Broken(WorkerPlugin):
    def setup(self, worker):
        raise RuntimeError("plugin setup failed on purpose")


class Misspelt(WorkerPlugin):
    def transtion(self, key, start, finish, **kwargs):
        pass


class WrongKind(WorkerPlugin):
    def add_worker(self, scheduler, worker):
        pass


def test_bad_plugins_are_refused_and_the_cluster_goes_on(cluster, tmp_path):
    with Client(cluster) as client:
        with pytest.raises(TypeError, match="WorkerPlugin or minidist.SchedulerPlugin"):
            client.register_plugin(object())
        with pytest.raises(TypeError, match="'transtion'.*did you mean 'transition'"):
            client.register_plugin(Misspelt())
        with pytest.raises(TypeError, match="'add_worker'.*not a WorkerPlugin hook"):
            client.register_plugin(WrongKind())
        with pytest.raises(RuntimeError, match="on purpose"):
            client.register_plugin(Broken(), name="broken")
        cluster.scale(3)
        client.wait_for_workers(3, timeout=30)
        assert client.submit(inc, 1).result(timeout=10) == 2
        with pytest.raises(ValueError, match="broken"):
            client.unregister_worker_plugin("broken")  # it was not kept


class Recorder(SchedulerPlugin):
    def __init__(self):
        self.events = []

    def start(self, scheduler):
        self.events.append(("start",))

    def add_worker(self, scheduler, worker):
        self.events.append(("add_worker", worker))

    def remove_worker(self, scheduler, worker, **kwargs):
        self.events.append(("remove_worker", worker))

    def transition(self, key, start, finish, *args, **kwargs):
        self.events.append(("transition", key, start, finish))

    def update_graph(self, scheduler, *, client=None, keys=None, tasks=None, **kwargs):
        self.events.append(("update_graph", tuple(sorted(keys))))

    def add_client(self, scheduler, client):
        self.events.append(("add_client", client))

    def remove_client(self, scheduler, client):
        self.events.append(("remove_client", client))

    def log_event(self, topic, msg):
        self.events.append(("log_event", topic, msg))

    def before_close(self):
        self.events.append(("before_close",))

    def close(self):
        self.events.append(("close",))


def recorded(dask_scheduler):
    return list(dask_scheduler.plugins.plugins["recorder"].events)


def test_scheduler_plugin_sees_tasks_and_workers(cluster):
    with Client(cluster) as client:
        client.register_plugin(Recorder(), name="recorder")

        def events():
            return client.run_on_scheduler(recorded)

        future = client.submit(inc, 10)
        key = future.key
        assert future.result() == 11
        assert wait_until(lambda: ("transition", key, "processing", "memory") in events())
        assert events()[0] == ("start",)
        assert ("update_graph", (key,)) in events()
        assert ("transition", key, "queued", "processing") in events()
        cluster.scale(3)
        client.wait_for_workers(3, timeout=30)
        assert wait_until(lambda: any(e[0] == "add_worker" for e in events()))
        cluster.scale(2)
        assert wait_until(lambda: any(e[0] == "remove_worker" for e in events()), 30)
        del future
        assert wait_until(lambda: ("transition", key, "released", "forgotten") in events())
        plugin = client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.plugins.plugins["recorder"]
        )
        client.unregister_scheduler_plugin("recorder")
        if not cluster.processes:  # the same object: close ran on it
            assert plugin.events[-1] == ("close",)
        with pytest.raises(ValueError, match="recorder"):
            client.unregister_scheduler_plugin("recorder")


def test_scheduler_plugin_from_a_remote_client(cluster):
    with Client(cluster.scheduler_address) as remote:
        remote.register_plugin(Recorder(), name="recorder")
        future = remote.submit(inc, 1)
        assert future.result() == 2
        assert wait_until(
            lambda: (
                ("transition", future.key, "processing", "memory")
                in remote.run_on_scheduler(recorded)
            )
        )
        remote.unregister_scheduler_plugin("recorder")


class ClosingMarks(SchedulerPlugin):
    """Writes the hooks that ran at the scheduler's close to a file (the scheduler holds a copy)."""

    def __init__(self, path):
        self.path = str(path)

    def before_close(self):
        with open(self.path, "a") as f:
            f.write("before_close\n")

    def close(self):
        with open(self.path, "a") as f:
            f.write("close\n")


def test_scheduler_plugin_sees_clients_come_and_go_events_and_the_close(tmp_path):
    marks_file = tmp_path / "closing"
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None, protocol="tcp") as c:
        with Client(c) as client:
            client.register_plugin(Recorder(), name="recorder")
            client.register_plugin(ClosingMarks(marks_file), name="closing")
            with Client(c, set_as_default=False) as local:
                local_id = local.id
            with Client(c.scheduler_address, set_as_default=False) as remote:
                remote_id = remote.id
                remote.log_event(["alpha", "beta"], {"n": 1})
            assert wait_until(
                lambda: ("remove_client", remote_id) in client.run_on_scheduler(recorded)
            )
            events = client.run_on_scheduler(recorded)
            assert events.index(("add_client", local_id)) < events.index(
                ("remove_client", local_id)
            )
            assert ("add_client", remote_id) in events
            assert ("log_event", "alpha", {"n": 1}) in events
            assert ("log_event", "beta", {"n": 1}) in events
            assert not marks_file.exists()
    assert marks_file.read_text().split() == ["before_close", "close"]


# ---------------------------------------------------------------------------------- upload_file


def import_and_call(module, function="answer"):
    import importlib

    return getattr(importlib.import_module(module), function)()


def test_upload_py_is_importable_now_and_on_later_workers_and_reloads(cluster, tmp_path):
    module = f"uploaded_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{module}.py"
    path.write_text("def answer():\n    return 1\n")
    with Client(cluster) as client:
        client.upload_file(str(path))
        assert client.submit(import_and_call, module, pure=False).result() == 1
        path.write_text("def answer():\n    return 2\n")
        client.upload_file(str(path))  # replaced and reloaded
        assert set(client.run(import_and_call, module).values()) == {2}
        cluster.scale(3)
        client.wait_for_workers(3, timeout=30)
        assert set(client.run(import_and_call, module).values()) == {2}


def test_upload_zip_and_egg(cluster, tmp_path):
    package = f"zipped_{uuid.uuid4().hex[:8]}"
    for suffix in (".zip", ".egg"):
        name = package + suffix.replace(".", "_")
        archive = tmp_path / f"{name}{suffix}"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr(f"{name}/__init__.py", f"def answer():\n    return {suffix!r}\n")
        with Client(cluster) as client:
            client.upload_file(archive)
            assert client.submit(import_and_call, name, pure=False).result() == suffix


def test_upload_refuses_bad_files_naming_them(cluster, tmp_path):
    broken = tmp_path / "broken_module.py"
    broken.write_text("def answer(:\n    return 1\n")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    bad_zip = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad_zip, "w") as zf:
        zf.writestr("pkg_bad/__init__.py", "x = (\n")
    with Client(cluster) as client:
        with pytest.raises(SyntaxError, match="broken_module.py.*line 1"):
            client.upload_file(str(broken))
        with pytest.raises(SyntaxError, match="bad.zip/pkg_bad/__init__.py"):
            client.upload_file(str(bad_zip))
        with pytest.raises(ValueError, match="notes.txt"):
            client.upload_file(str(text))
        assert client.submit(inc, 1).result(timeout=10) == 2

"""A machine shared with other users: their files in /dev/shm never stop, or get removed by, our clusters.

The tests play the other user by creating a file and handing it to uid 65534 (``nobody``), or by running a
second Python process as that uid. Both need root (the suite runs as root here and in CI); elsewhere they
skip and say why.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import wait_until
from minidist import Client, LocalCluster
from minidist.comm.shm import SHM_DIR, SegmentStore, list_segments, new_cluster_id, open_segment

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="playing another user (chown to uid 65534, or running a process as it) needs root",
    ),
]

OTHER_UID = 65534


def inc(x):
    return x + 1


@pytest.fixture
def foreign_files():
    """Creates files in /dev/shm that belong to another user; removes them at the end."""
    made: list[str] = []

    def make(name: str, uid: int = OTHER_UID) -> str:
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.write(fd, b"not yours")
        os.close(fd)
        os.chown(path, uid, uid)
        made.append(path)
        return path

    yield make
    for path in made:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _dead_pid() -> int:
    """A pid that no process has right now (a finished child's)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_start_up_sweep_leaves_another_users_orphan_alone(foreign_files):
    dead = _dead_pid()
    # exactly what a cluster of theirs, killed with SIGKILL, leaves behind
    theirs = foreign_files(f"minidist_{dead}-0123456789ab_{dead}_0")
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            assert client.submit(inc, 1).result(timeout=30) == 2
    assert os.path.exists(theirs), "the sweep removed another user's file"
    assert os.stat(theirs).st_uid == OTHER_UID


def test_sweep_after_a_worker_death_leaves_another_users_file_alone(foreign_files):
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            assert client.submit(inc, 1).result(timeout=30) == 2
            [worker] = client.scheduler_info()["workers"].values()
            victim = worker["pid"]
            # named exactly like a segment the dying worker could have written for this cluster
            theirs = foreign_files(f"minidist_{cluster.cluster_id}_{victim}_999999")
            os.kill(victim, signal.SIGKILL)
            assert wait_until(
                lambda: {w["pid"] for w in client.scheduler_info()["workers"].values()} - {victim},
                timeout=30,
            ), "no replacement worker started"
            assert client.submit(inc, 2).result(timeout=30) == 3
            assert os.path.exists(theirs), "the sweep removed another user's file"
        # closing still works and removes only our own segments
    assert os.path.exists(theirs)
    assert list_segments(cluster.cluster_id) == []  # ours are gone; theirs is not ours to list


_AS_OTHER_USER = textwrap.dedent(
    """
    from minidist import Client, LocalCluster
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            print(client.submit(abs, -5).result(timeout=30))
    """
)


def _interpreter_for(uid: int) -> str:
    """A Python of our version that ``uid`` may run: ours if it can reach it, else the system's (ours
    often lives under root's 0700 home, as pyenv and CI virtual environments do)."""
    ours = os.path.realpath(sys.executable)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in (ours, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if _other_user_can_run(candidate, uid):
            return candidate
    pytest.skip(f"no Python {version} that uid {uid} can run (ours is {ours})")


def _other_user_can_run(path: str, uid: int) -> bool:
    if not os.path.exists(path):
        return False
    try:
        done = subprocess.run(
            [path, "-c", "pass"],
            user=uid,
            group=uid,
            extra_groups=[],
            capture_output=True,
            timeout=30,
        )
    except PermissionError:  # a folder on its path is closed to that user
        return False
    return done.returncode == 0


@pytest.fixture
def other_user_home():
    """A home the other user owns, outside pytest's 0700 temporary tree, holding a copy of the
    packages a cluster needs (minidist, cloudpickle, psutil) so that user can import them."""
    import shutil
    import tempfile

    import cloudpickle
    import psutil

    import minidist

    home = tempfile.mkdtemp(prefix="minidist-other-user-")
    try:
        packages = os.path.join(home, "packages")
        for module in (minidist, cloudpickle, psutil):
            source = os.path.dirname(os.path.abspath(module.__file__))
            shutil.copytree(
                source,
                os.path.join(packages, os.path.basename(source)),
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        for folder, dirs, files in os.walk(home):
            for name in dirs + files + [""]:
                os.chown(os.path.join(folder, name), OTHER_UID, OTHER_UID)
        os.chmod(home, 0o700)  # theirs, as a home is
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _run_as_other_user(code: str, home: str) -> subprocess.CompletedProcess:
    python = _interpreter_for(OTHER_UID)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "PYTHONPATH": os.path.join(home, "packages"),
        "PYTHONNOUSERSITE": "1",
    }
    return subprocess.run(
        [python, "-c", code],
        user=OTHER_UID,
        group=OTHER_UID,
        extra_groups=[],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_cluster_of_another_user_starts_despite_a_third_users_orphan(
    foreign_files, other_user_home
):
    """The other user's side: an orphan of a third user in /dev/shm must not make their LocalCluster fail.
    (A third uid rather than ours: our own clusters, in other test runs on this machine, would rightly
    sweep an orphan of ours meanwhile.)"""
    dead = _dead_pid()
    third_users = foreign_files(f"minidist_{dead}-0123456789ab_{dead}_0", uid=OTHER_UID - 1)
    done = _run_as_other_user(_AS_OTHER_USER, other_user_home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "5"
    assert os.path.exists(third_users)


def test_segments_of_this_user_are_still_swept(foreign_files):
    """The counterpart: an orphan of our own (a dead writer, a dead owner) is removed at start-up."""
    dead = _dead_pid()
    ours = foreign_files(f"minidist_{dead}-0123456789ab_{dead}_0", uid=os.geteuid())
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None):
        pass
    assert not os.path.exists(ours)


def test_a_reader_refuses_a_segment_another_user_put_in_place(foreign_files):
    theirs = foreign_files(f"minidist_{new_cluster_id()}_1_0-00000000")
    with pytest.raises(PermissionError, match="not a regular file of this user"):
        open_segment(os.path.basename(theirs), 9)


def test_another_user_cannot_claim_the_next_segment_name_first(foreign_files):
    """Names carry a random part: creating the name a writer will use next is not possible."""
    store = SegmentStore(new_cluster_id(), threshold=0)
    first = store.write(b"x" * 100)
    try:
        # what the next name would be if names were only cluster, pid and a counter
        prefix = first.name.rsplit("_", 1)[0]
        for guess in (f"{prefix}_1", f"{prefix}_1-00000000"):
            foreign_files(guess)
        second = store.write(b"y" * 100)
        assert bytes(open_segment(second.name, 100)) == b"y" * 100
        assert second.name not in {f"{prefix}_1", f"{prefix}_1-00000000"}
    finally:
        for info in list_segments(store.cluster_id):
            os.unlink(os.path.join(SHM_DIR, info.name))

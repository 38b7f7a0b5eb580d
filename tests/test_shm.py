"""Shared-memory segments: writing, zero-copy mapping, unlinking and the sweeps that clean up after crashes."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from minidist.comm.shm import (
    SEGMENT_PREFIX,
    SegmentJanitor,
    SegmentStore,
    list_segments,
    new_cluster_id,
    open_segment,
    parse_segment_name,
    sweep_cluster,
    sweep_orphans,
    sweep_process,
    unlink_segments,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cluster_ids():
    """Hands out fresh cluster ids; fails the test if any of them still has a segment at the end."""
    issued: list[str] = []
    yield issued
    left = [info.name for cid in issued for info in list_segments(cid)]
    for cid in issued:
        sweep_cluster(cid)
    assert not left, f"segments left in /dev/shm: {left}"


@pytest.fixture
def store(cluster_ids):
    cluster_ids.append(new_cluster_id())
    return SegmentStore(cluster_ids[-1], threshold=1024)


def names_in_shm() -> set[str]:
    return set(os.listdir("/dev/shm"))


def test_write_then_open_gives_the_same_bytes_read_only(store):
    data = os.urandom(100_000)
    ref = store.write(data)
    assert ref.nbytes == len(data)
    view = open_segment(ref.name, ref.nbytes)
    assert view.readonly
    assert bytes(view) == data
    with pytest.raises(TypeError):
        view[0] = 1
    unlink_segments([ref.name])


def test_segment_names_carry_prefix_cluster_and_pid(store):
    ref = store.write(b"x" * 10)
    info = parse_segment_name(ref.name)
    assert ref.name.startswith(SEGMENT_PREFIX)
    assert (info.cluster_id, info.pid) == (store.cluster_id, os.getpid())
    assert os.path.exists(os.path.join("/dev/shm", ref.name))
    assert sweep_cluster(store.cluster_id) == 1


@pytest.mark.parametrize("offset", [0, 1, 4095, 4096, 4097, 70_000])
def test_open_segment_at_an_offset(store, offset):
    data = np.random.default_rng(offset).integers(0, 255, 80_000, dtype=np.uint8).tobytes()
    ref = store.write(data)
    view = open_segment(ref.name, 5000 if offset < 75_000 else 100, offset)
    assert bytes(view) == data[offset : offset + len(view)]
    sweep_cluster(store.cluster_id)


def test_mapping_survives_unlink_and_close_paths_raise_nothing(store):
    array = np.arange(1_000_000, dtype=np.int64)
    ref = store.write(array)
    view = open_segment(ref.name, ref.nbytes)
    unlink_segments([ref.name])
    assert ref.name not in names_in_shm()
    mapped = np.frombuffer(view, dtype=np.int64)
    del view  # the array alone keeps the mapping alive
    assert mapped[-1] == 999_999 and mapped.sum() == array.sum()
    derived = mapped[::2]
    del mapped
    assert derived[1] == 2


def test_open_missing_segment_names_it(store):
    name = f"{SEGMENT_PREFIX}{store.cluster_id}_{os.getpid()}_999999"
    with pytest.raises(FileNotFoundError, match=name):
        open_segment(name, 10)


def test_unlink_segments_is_idempotent_and_refuses_foreign_paths(store):
    refs = [store.write(b"y" * 100) for _ in range(3)]
    names = [r.name for r in refs]
    unlink_segments(names)
    unlink_segments(names)  # already gone: no error
    assert not list_segments(store.cluster_id)
    with pytest.raises(ValueError):
        unlink_segments(["../etc/passwd"])
    with pytest.raises(ValueError):
        unlink_segments(["not_ours"])


def test_sweep_cluster_removes_only_that_cluster(cluster_ids):
    base = "t" + secrets.token_hex(4)
    cluster_ids.extend([base, base + "_b", base + "x"])
    stores = [SegmentStore(cid) for cid in cluster_ids]
    for s in stores:
        s.write(b"z" * 10)
        s.write(b"w" * 10)
    assert sweep_cluster(base) == 2
    assert [len(list_segments(cid)) for cid in cluster_ids] == [0, 2, 2]
    assert sweep_cluster(base) == 0
    assert sweep_cluster(base + "_b") == sweep_cluster(base + "x") == 2


def test_sweep_process_keeps_what_is_still_referenced(store):
    kept = store.write(b"k" * 10)
    store.write(b"d" * 10)
    assert sweep_process(store.cluster_id, os.getpid() + 10**6) == 0  # another pid: nothing of ours
    assert sweep_process(store.cluster_id, os.getpid(), keep=[kept.name]) == 1
    assert [i.name for i in list_segments(store.cluster_id)] == [kept.name]
    sweep_cluster(store.cluster_id)


def _write_segment_in_a_subprocess(cluster_id: str) -> str:
    script = textwrap.dedent(
        f"""
        from minidist.comm.shm import SegmentStore
        print(SegmentStore({cluster_id!r}).write(b"orphan" * 10).name)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.timeout(120)
def test_sweep_orphans_removes_segments_of_dead_writers_unless_their_owner_lives(cluster_ids):
    plain = "t" + secrets.token_hex(4)  # no owner recorded: a dead writer is enough
    owned_by_me = new_cluster_id()  # owner (this process) alive: keep, the owner may still use them
    owned_by_dead = f"{_dead_pid()}-{secrets.token_hex(4)}"
    cluster_ids.extend([plain, owned_by_me, owned_by_dead])
    orphan = _write_segment_in_a_subprocess(plain)
    protected = _write_segment_in_a_subprocess(owned_by_me)
    abandoned = _write_segment_in_a_subprocess(owned_by_dead)
    mine = SegmentStore(plain).write(b"live writer").name
    # Other test runs on this machine (same user) sweep orphans whenever they start a cluster, so the two
    # orphans may vanish before our own sweep: each is counted by whichever sweep removes it first.
    existed = names_in_shm()
    assert {protected, mine} <= existed

    # scoped to our clusters so as not to touch other test runs sharing this machine
    counts = [sweep_orphans(cid) for cid in cluster_ids]
    assert counts[1] == 0  # the owner lives: nothing of that cluster is an orphan
    assert counts[0] <= int(orphan in existed) and counts[2] <= int(abandoned in existed)
    present = names_in_shm()
    assert orphan not in present and abandoned not in present
    assert protected in present and mine in present
    unlink_segments([protected, mine])


def test_invalid_cluster_ids_and_thresholds_are_refused():
    for bad in ["", "a/b", "a b", "x" * 201]:
        with pytest.raises(ValueError):
            SegmentStore(bad)
    with pytest.raises(ValueError):
        SegmentStore("ok", threshold=-1)


def test_failed_write_leaves_nothing_behind(store, monkeypatch):
    real_write = os.write

    def write_half_then_fail(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith("/dev/shm/"):
            real_write(fd, bytes(memoryview(data)[: len(data) // 2]))
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write_half_then_fail)
    with pytest.raises(OSError):
        store.write(b"q" * 100_000)
    monkeypatch.undo()
    assert not list_segments(store.cluster_id)


def test_rewriting_the_same_buffer_gives_independent_names_with_current_content(store):
    array = np.arange(200_000, dtype=np.float64)
    first = store.write(array)
    second = store.write(array)  # unchanged: may share storage, must have its own name
    assert first.name != second.name
    unlink_segments([first.name])  # releasing one value must not break the other
    assert np.array_equal(np.frombuffer(open_segment(second.name, second.nbytes)), array)
    array[123] = -1.0  # mutated in place: the next write must see the new content
    third = store.write(array)
    assert np.frombuffer(open_segment(third.name, third.nbytes))[123] == -1.0
    assert np.frombuffer(open_segment(second.name, second.nbytes))[123] == 123.0
    sweep_cluster(store.cluster_id)


def test_a_symbolic_link_with_a_segment_name_is_refused_and_never_swept(tmp_path, cluster_ids):
    target = tmp_path / "target"
    target.write_bytes(b"secret bytes")
    cluster_ids.append(new_cluster_id())
    name = f"{SEGMENT_PREFIX}{cluster_ids[-1]}_1_0-00000000"
    link = os.path.join("/dev/shm", name)
    os.symlink(target, link)
    try:
        with pytest.raises(PermissionError, match="symbolic link"):
            open_segment(name, 12)
        assert list_segments(cluster_ids[-1]) == []
        assert sweep_cluster(cluster_ids[-1]) == 0
        assert os.path.islink(link) and target.read_bytes() == b"secret bytes"
    finally:
        os.unlink(link)


def test_segment_names_parse_with_and_without_their_random_part():
    assert parse_segment_name("minidist_c-1_12_3-0a1b2c3d") == (
        "minidist_c-1_12_3-0a1b2c3d",
        "c-1",
        12,
        3,
    )
    assert parse_segment_name("minidist_c-1_12_3") == ("minidist_c-1_12_3", "c-1", 12, 3)
    assert parse_segment_name("minidist_c-1_12_3-xyz") is None


def test_the_janitor_unlinks_what_it_is_handed_and_close_waits_for_it(store):
    names = [store.write(os.urandom(4096)).name for _ in range(5)]
    janitor = SegmentJanitor(thread_name="minidist-test-janitor")
    with pytest.raises(ValueError, match="not a minidist segment name"):
        janitor.unlink(["../etc/passwd"])  # refused at once, in the caller
    janitor.unlink(names[:3])
    janitor.unlink([])
    janitor.close()  # whatever was handed over is gone once close returns
    assert sorted(i.name for i in list_segments(store.cluster_id)) == sorted(names[3:])
    assert "minidist-test-janitor" not in {t.name for t in threading.enumerate()}
    janitor.unlink(names[3:])  # closed: unlinked at once, no thread started
    assert list_segments(store.cluster_id) == []
    assert "minidist-test-janitor" not in {t.name for t in threading.enumerate()}
    janitor.close()  # idempotent

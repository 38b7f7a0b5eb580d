"""A remote client that stops reading costs bounded memory: the outbox in front of its writer thread."""

from __future__ import annotations

import threading
import tracemalloc

import pytest

from conftest import wait_until
from minidist import Client, LocalCluster
from minidist.comm.outbox import Outbox
from minidist.comm.tcp import connect
from minidist.peer_messages import Fetch, Reply
from minidist.remote.protocol import decode, encode
from minidist.remote.server import TCPSession

pytestmark = pytest.mark.timeout(60)


def test_answers_wait_for_room_and_nothing_is_lost(monkeypatch):
    monkeypatch.setattr(TCPSession, "max_outbox_bytes", 4 * 2**20)
    with (
        LocalCluster(
            n_workers=1, processes=False, protocol="tcp://", dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        [big] = client.scatter([b"v" * (2 * 2**20)])
        with connect(cluster.scheduler_address, timeout=10) as raw:
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                # 60 answers of 2 MiB each, and this peer reads none of them for now
                raw.send_bytes(encode([Fetch(i, big.key) for i in range(60)]))
                grew = wait_until(
                    lambda: tracemalloc.get_traced_memory()[1] - base > 64 * 2**20, timeout=3
                )
            finally:
                tracemalloc.stop()
            assert not grew, "the scheduler queued every answer for a peer that reads none"
            replies: list = []
            while len(replies) < 60:  # now it reads: every answer arrives, in order
                replies += [m for m in decode(raw.recv_bytes()) if type(m) is Reply]
        assert [r.request_id for r in replies] == list(range(60))
        assert all(r.ok for r in replies)
        assert client.submit(len, big).result(timeout=10) == 2 * 2**20


def test_a_producer_that_may_wait_blocks_until_the_writer_takes():
    outbox = Outbox(max_bytes=100, max_messages=10)
    assert outbox.put("a", 80)
    done = threading.Event()
    threading.Thread(
        target=lambda: done.set() if outbox.put("b", 80) else None, name="test-put", daemon=True
    ).start()
    assert not done.wait(0.2)  # over the bound: waits
    assert outbox.take() == (["a"], False)
    assert done.wait(5)
    assert outbox.take() == (["b"], False)
    assert outbox.put("huge", 10**9)  # alone in the outbox, any size goes


def test_a_producer_that_must_not_wait_is_refused_when_full_and_close_wakes_waiters():
    outbox = Outbox(max_bytes=10, max_messages=3)
    assert all(outbox.put(i, wait=False) for i in range(3))
    assert not outbox.put(3, wait=False)
    results: list = []
    waiter = threading.Thread(
        target=lambda: results.append(outbox.put("x", 100)), name="test-put", daemon=True
    )
    waiter.start()
    outbox.close()
    waiter.join(5)
    assert results == [False]
    assert outbox.take() == ([], True)


def test_finish_lets_the_writer_send_what_is_queued_then_stop():
    outbox = Outbox()
    outbox.put("last")
    outbox.finish()
    assert outbox.take() == (["last"], True)

"""What an authenticated peer can make a connection spend: memory grows with bytes that arrived, and a
frame that stops half-way is given up after ``read_timeout`` instead of holding its reader for ever."""

from __future__ import annotations

import struct
import threading
import time
import tracemalloc

import pytest
from test_tcp import Acceptor, authenticate_by_hand, raw_socket

from minidist.comm.tcp import Listener, ProtocolError
from minidist.security import new_secret

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def stalled_frame():
    """(server connection, raw peer socket): the peer is authenticated and may now misbehave."""
    secret = new_secret()
    with Listener("tcp://127.0.0.1:0", secret, on_reject=lambda *a: None) as listener:
        acceptor = Acceptor(listener)
        opened: list = []
        sock = raw_socket(listener.address, opened)
        authenticate_by_hand(sock, secret)
        with acceptor.result() as server:
            yield server, sock
        sock.close()


def _recv_in_thread(conn):
    outcome: list = []

    def read():
        try:
            outcome.append(conn.recv_bytes())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=read, name="test-reader", daemon=True)
    thread.start()
    return thread, outcome


def test_a_frame_that_stops_half_way_is_given_up_after_the_read_timeout(stalled_frame):
    server, sock = stalled_frame
    server.read_timeout = 0.5
    sock.sendall(struct.pack("!Q", 1000) + b"x" * 10)  # then nothing more
    started = time.monotonic()
    thread, outcome = _recv_in_thread(server)
    thread.join(10)
    if thread.is_alive():
        server.close()  # unblock it before failing
        thread.join(5)
        pytest.fail("a stalled frame held its reader for 10 s")
    assert isinstance(outcome[0], ProtocolError)
    assert "then nothing for 0.5s (10 of 1000 bytes received)" in str(outcome[0])
    assert 0.4 < time.monotonic() - started < 5
    assert server.closed


def test_a_stalled_header_is_given_up_too(stalled_frame):
    server, sock = stalled_frame
    server.read_timeout = 0.3
    sock.sendall(b"\x00\x00\x00")  # 3 of the 8 header bytes
    with pytest.raises(ProtocolError, match="then nothing for 0.3s"):
        server.recv_bytes()


def test_an_idle_connection_between_frames_is_not_a_stalled_one(stalled_frame):
    server, sock = stalled_frame
    server.read_timeout = 0.2
    thread, outcome = _recv_in_thread(server)
    thread.join(0.6)  # idle for three times the read timeout: still waiting, as it should
    assert thread.is_alive() and not outcome
    sock.sendall(struct.pack("!Q", 5) + b"hello")
    thread.join(10)
    assert outcome == [b"hello"]


def test_a_huge_header_allocates_only_what_has_arrived(stalled_frame):
    server, sock = stalled_frame
    server.read_timeout = 0.5
    tracemalloc.start()
    try:
        sock.sendall(struct.pack("!Q", 900 * 2**20) + b"y" * (3 * 2**20))  # says 900 MiB, sends 3
        thread, outcome = _recv_in_thread(server)
        thread.join(10)
        if thread.is_alive():
            server.close()
            thread.join(5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(outcome[0], ProtocolError)
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB allocated for 3 MiB received"


def test_large_frames_arrive_whole_through_growing_buffers(stalled_frame):
    server, sock = stalled_frame
    payload = bytes(range(256)) * (5 * 2**20 // 256 + 7)  # over 5 MiB, not a power of two
    sender = threading.Thread(
        target=lambda: sock.sendall(struct.pack("!Q", len(payload)) + payload),
        name="test-sender",
        daemon=True,
    )
    sender.start()
    assert server.recv_bytes() == payload
    sender.join(10)

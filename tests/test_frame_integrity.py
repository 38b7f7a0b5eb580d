"""Plain tcp:// between hosts: every frame is authenticated, so nobody on the path can inject or replay one.

A relay in the middle plays the attacker: it passes the handshake through untouched (it cannot forge it
without the secret), then injects, alters or replays frames. The listener must be reachable on an address
that is not loopback, so the tests use this machine's first non-loopback IPv4 address (skipped, saying
so, where there is none).
"""

from __future__ import annotations

import socket
import struct
import threading

import psutil
import pytest

from minidist.comm.tcp import Listener, ProtocolError, connect
from minidist.security import Security, new_secret

pytestmark = pytest.mark.timeout(60)


def _non_loopback_ipv4() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


HOST = _non_loopback_ipv4()
needs_lan = pytest.mark.skipif(HOST is None, reason="this machine has no non-loopback IPv4 address")


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _read_frame(sock: socket.socket) -> bytes:
    header = _read_exact(sock, 8)
    return header + _read_exact(sock, struct.unpack("!Q", header)[0])


class Relay(threading.Thread):
    """Forwards one connection to ``target``; after the three handshake frames, ``tamper`` may act."""

    def __init__(self, target: str, tamper):
        super().__init__(name="test-relay", daemon=True)
        self.server = socket.create_server((HOST, 0))
        self.address = f"tcp://{HOST}:{self.server.getsockname()[1]}"
        self.target = target.rpartition("//")[2].rsplit(":", 1)
        self.tamper = tamper
        self.start()

    def run(self):
        client, _ = self.server.accept()
        upstream = socket.create_connection((self.target[0], int(self.target[1])))
        with client, upstream:
            try:
                client.sendall(_read_frame(upstream))  # greeting
                upstream.sendall(_read_frame(client))  # the client's proof
                client.sendall(_read_frame(upstream))  # "OK"
                self.tamper(client, upstream)
            except (EOFError, OSError):
                pass

    def close(self):
        self.server.close()
        self.join(10)


@pytest.fixture
def listener():
    with Listener("tcp://0.0.0.0:0", new_secret(), on_reject=lambda *a: None) as lst:
        yield lst


def _accept(listener, results):
    thread = threading.Thread(
        target=lambda: results.append(listener.accept(timeout=20)), name="test-accept", daemon=True
    )
    thread.start()
    return thread


def _lan_address(listener) -> str:
    return f"tcp://{HOST}:{listener.address.rsplit(':', 1)[1]}"


@needs_lan
def test_frames_between_hosts_are_tagged_and_flow_both_ways(listener):
    accepted: list = []
    thread = _accept(listener, accepted)
    with connect(_lan_address(listener), secret=listener._secret, timeout=10) as client:
        thread.join(20)
        with accepted[0] as server:
            assert client.authenticates_frames and server.authenticates_frames
            for size in (0, 10, 100_000, 3_000_000):
                client.send_bytes(b"c" * size)
                assert server.recv_bytes() == b"c" * size
                server.send_bytes(b"s" * size)
                assert client.recv_bytes() == b"s" * size
    assert "every frame from another host carries an HMAC" in listener.frame_integrity


def test_loopback_and_tls_keep_untagged_frames(listener):
    accepted: list = []
    thread = _accept(listener, accepted)
    loopback = f"tcp://127.0.0.1:{listener.address.rsplit(':', 1)[1]}"
    with connect(loopback, secret=listener._secret, timeout=10) as client:
        thread.join(20)
        with accepted[0] as server:
            assert not client.authenticates_frames and not server.authenticates_frames
            client.send_bytes(b"fast")
            assert server.recv_bytes() == b"fast"
    security = Security.temporary()
    with Listener("tls://127.0.0.1:0", new_secret(), security) as tls:
        accepted = []
        thread = _accept(tls, accepted)
        with connect(tls.address, secret=tls._secret, security=security, timeout=10) as client:
            thread.join(20)
            with accepted[0] as server:
                assert not client.authenticates_frames and not server.authenticates_frames
        assert "TLS" in tls.frame_integrity


def _inject(client, upstream):
    forged = b"cos\nsystem\n(S'echo owned" + b" " * 64 + b"'\ntR."  # a pickle that runs a command
    upstream.sendall(struct.pack("!Q", len(forged)) + forged)


def _alter(client, upstream):
    frame = bytearray(_read_frame(client))
    frame[-40] ^= 1  # one bit of the payload
    upstream.sendall(frame)


def _replay(client, upstream):
    frame = _read_frame(client)
    upstream.sendall(frame)
    upstream.sendall(frame)


@needs_lan
@pytest.mark.parametrize("tamper", [_inject, _alter, _replay], ids=["inject", "alter", "replay"])
def test_a_frame_tampered_with_on_the_way_closes_the_connection(listener, tamper):
    accepted: list = []
    thread = _accept(listener, accepted)
    relay = Relay(_lan_address(listener), tamper)
    try:
        with connect(relay.address, secret=listener._secret, timeout=10) as client:
            thread.join(20)
            with accepted[0] as server:
                client.send_bytes(b"genuine frame" * 10)
                if tamper is _replay:
                    assert server.recv_bytes() == b"genuine frame" * 10
                with pytest.raises(ProtocolError, match="failed its authentication check"):
                    server.recv_bytes()
                assert server.closed
    finally:
        relay.close()


@needs_lan
def test_a_cluster_on_all_interfaces_says_its_frames_are_authenticated_and_serves_other_hosts():
    from minidist import Client, LocalCluster

    with LocalCluster(
        n_workers=1, processes=False, host="tcp://0.0.0.0", dashboard_address=None
    ) as cluster:
        log = cluster.get_logs(cluster=False, workers=False)["Scheduler"]
        assert "every frame from another host carries an HMAC" in log
        port = cluster.scheduler_address.rsplit(":", 1)[1]
        with Client(f"tcp://{HOST}:{port}", secret=cluster.listener.secret, timeout=10) as client:
            assert client.submit(sum, [1, 2, 3]).result(timeout=10) == 6

"""The TCP/TLS transport: framed messages, mutual authentication, hostile peers, and no leaked sockets.

Everything listens on 127.0.0.1 only. Peers that misbehave are plain sockets driven by hand.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import queue
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from conftest import wait_until
from minidist.comm import tcp
from minidist.comm.addressing import free_port, parse_address
from minidist.comm.tcp import (
    AuthenticationError,
    CommClosedError,
    Listener,
    ProtocolError,
    connect,
)
from minidist.security import Security, new_secret, read_secret, secret_path

pytestmark = [
    pytest.mark.timeout(60),
    # A socket left for the garbage collector to close is a leak: make its warning fail the test.
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture(scope="module")
def tls_security():
    return Security.temporary()


@pytest.fixture
def closing():
    """Append listeners/connections here; they are closed when the test ends, pass or fail."""
    things: list = []
    yield things
    for thing in reversed(things):
        thing.close()


class Acceptor(threading.Thread):
    """Runs ``listener.accept()`` in a thread, so the test can play the client."""

    def __init__(self, listener: Listener, timeout: float = 20):
        super().__init__(name="test-acceptor", daemon=True)
        self.listener, self.timeout = listener, timeout
        self.conn = self.error = None
        self.start()

    def run(self):
        try:
            self.conn = self.listener.accept(timeout=self.timeout)
        except BaseException as exc:  # handed to the test thread by result()
            self.error = exc

    def result(self):
        self.join(30)
        assert not self.is_alive(), "accept() did not return"
        if self.error is not None:
            raise self.error
        return self.conn


def make_listener(closing, protocol="tcp", secret=None, security=None, **kwargs):
    rejected: list = []
    listener = Listener(
        f"{protocol}://127.0.0.1:0",
        secret or new_secret(),
        security=security,
        on_reject=lambda peer, reason: rejected.append((peer, reason)),
        **kwargs,
    )
    closing.append(listener)
    return listener, rejected


def raw_socket(address: str, closing) -> socket.socket:
    _, host, port = parse_address(address)
    sock = socket.create_connection((host, port), timeout=10)
    closing.append(sock)
    return sock


def recv_frame(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < 8 or len(data) < 8 + struct.unpack("!Q", data[:8])[0]:
        chunk = sock.recv(65536)
        assert chunk, "peer closed"
        data += chunk
    return data[8:]


def authenticate_by_hand(sock: socket.socket, secret: bytes) -> None:
    """The client half of the handshake, spelled out, so a test can misbehave after it."""
    greeting = recv_frame(sock)
    server_nonce, mode = greeting[-33:-1], greeting[-1:]
    client_nonce = os.urandom(32)
    proof = hmac.new(
        secret, b"client" + server_nonce + client_nonce + mode, hashlib.sha256
    ).digest()
    payload = client_nonce + proof
    sock.sendall(struct.pack("!Q", len(payload)) + payload)
    assert recv_frame(sock).startswith(b"OK")


def pair(closing, protocol="tcp", security=None, **listener_kwargs):
    listener, rejected = make_listener(closing, protocol, security=security, **listener_kwargs)
    acceptor = Acceptor(listener)
    client = connect(listener.address, security=security, secret=listener._secret, timeout=10)
    closing.append(client)
    server = acceptor.result()
    closing.append(server)
    return listener, client, server, rejected


@pytest.mark.parametrize("protocol", ["tcp", "tls"])
def test_messages_flow_both_ways_in_order(protocol, tls_security, closing):
    security = tls_security if protocol == "tls" else None
    listener, client, server, rejected = pair(closing, protocol, security)
    assert listener.address.startswith(f"{protocol}://127.0.0.1:")
    assert client.peer == listener.address and server.local == listener.address
    messages = [b"", b"x", os.urandom(70_000), os.urandom(3_000_000)]
    for message in messages:
        client.send_bytes(message)
    assert [server.recv_bytes() for _ in messages] == messages
    for message in messages:
        server.send_bytes(message)
    assert [client.recv_bytes() for _ in messages] == messages
    assert rejected == []


@pytest.mark.parametrize("protocol", ["tcp", "tls"])
def test_one_reader_and_several_writers_at_once_keep_frames_whole(protocol, tls_security, closing):
    """The engine's pattern: a reader thread per connection while another thread sends. Both
    directions carry megabytes at the same time, so socket buffers fill up on both sides."""
    security = tls_security if protocol == "tls" else None
    _, client, server, _ = pair(closing, protocol, security)
    count, size = 40, 300_000
    echoed: queue.Queue = queue.Queue()

    def server_reader():
        for _ in range(2 * count):
            echoed.put(server.recv_bytes())

    def server_writer():  # sends from a thread that is not the reader, like the scheduler thread
        for _ in range(2 * count):
            server.send_bytes(echoed.get(timeout=30))

    def client_writer(tag: bytes):
        for i in range(count):
            client.send_bytes(tag + i.to_bytes(4, "big") + bytes([i % 256]) * size)

    threads = [
        threading.Thread(target=f, args=a, name="test-io", daemon=True)
        for f, a in [
            (server_reader, ()),
            (server_writer, ()),
            (client_writer, (b"A",)),
            (client_writer, (b"B",)),
        ]
    ]
    for thread in threads:
        thread.start()
    received = [client.recv_bytes() for _ in range(2 * count)]
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    for tag in (b"A", b"B"):
        mine = [m for m in received if m[:1] == tag]
        assert [int.from_bytes(m[1:5], "big") for m in mine] == list(range(count))
        assert all(m[5:] == bytes([i % 256]) * size for i, m in enumerate(mine))


def test_wrong_secret_is_refused_with_a_clear_error_and_reported(closing):
    listener, rejected = make_listener(closing)
    acceptor = Acceptor(listener)
    with pytest.raises(AuthenticationError, match="refused the connection: wrong secret"):
        connect(listener.address, secret=b"not the secret", timeout=10)
    good = connect(listener.address, secret=listener._secret, timeout=10)
    closing.append(good)
    closing.append(acceptor.result())
    # the refused peer may hear "wrong secret" before the handshake thread reports it: wait for it
    assert wait_until(lambda: len(rejected) == 1), rejected
    peer, reason = rejected[0]
    assert peer.startswith("tcp://127.0.0.1:") and reason == "wrong secret"


def test_without_a_secret_file_connect_says_what_to_do(closing):
    listener, _ = make_listener(closing)  # publish_secret defaults to False: no file
    with pytest.raises(AuthenticationError, match="No secret found .* same user .* secret="):
        connect(listener.address, timeout=5)


def test_a_client_refuses_a_server_that_does_not_know_the_secret(closing):
    """Mutual authentication: an impostor that answers "OK" without a valid proof is not trusted."""
    impostor = socket.create_server(("127.0.0.1", 0))
    closing.append(impostor)

    def play_impostor():
        sock, _ = impostor.accept()
        with sock:
            greeting = tcp._MAGIC + os.urandom(32) + b"-"
            sock.sendall(struct.pack("!Q", len(greeting)) + greeting)
            recv_frame(sock)
            answer = b"OK" + os.urandom(32)
            sock.sendall(struct.pack("!Q", len(answer)) + answer)
            sock.recv(1)  # wait for the client to hang up

    thread = threading.Thread(target=play_impostor, name="test-impostor", daemon=True)
    thread.start()
    port = impostor.getsockname()[1]
    with pytest.raises(AuthenticationError, match="did not prove it knows the cluster secret"):
        connect(f"tcp://127.0.0.1:{port}", secret=new_secret(), timeout=10)
    thread.join(10)
    assert not thread.is_alive()


def test_bad_peers_are_rejected_and_the_listener_keeps_accepting(closing):
    secret = new_secret()
    # 1 s, not less: a real client's handshake takes tenths of a second on a loaded machine
    listener, rejected = make_listener(closing, secret=secret, handshake_timeout=1)
    acceptor = Acceptor(listener)
    raw_socket(listener.address, closing).sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    raw_socket(listener.address, closing).close()  # hangs up at once
    silent = raw_socket(listener.address, closing)  # never says anything
    truncated = raw_socket(listener.address, closing)
    recv_frame(truncated)
    truncated.sendall(struct.pack("!Q", 64) + b"only ten b")
    truncated.shutdown(socket.SHUT_WR)
    good = connect(listener.address, secret=secret, timeout=20)
    closing.append(good)
    conn = acceptor.result()
    closing.append(conn)
    good.send_bytes(b"still serving")
    assert conn.recv_bytes() == b"still serving"
    # handshakes run concurrently: the rejections arrive in any order, the silent one last
    assert wait_until(lambda: len(rejected) == 4), rejected
    reasons = " | ".join(reason for _, reason in rejected)
    assert "looks like an HTTP request" in reasons
    assert "closed the connection" in reasons
    assert "within 1s" in reasons
    assert "middle of a frame" in reasons
    silent.close()


def test_silent_peers_delay_nobody(closing):
    """Three connections that never speak used to hold accept() for their whole handshake timeout
    each: a real client failed."""
    secret = new_secret()
    listener, rejected = make_listener(closing, secret=secret, handshake_timeout=30)
    acceptor = Acceptor(listener)
    silent = [raw_socket(listener.address, closing) for _ in range(3)]
    started = time.monotonic()
    good = connect(listener.address, secret=secret, timeout=10)
    closing.append(good)
    closing.append(acceptor.result())
    # behind even one silent peer it would take 30 s (90 s behind all three); a loaded machine's
    # handshake takes well under 10 s
    assert time.monotonic() - started < 10
    assert rejected == []  # the silent ones are still within their deadline
    for sock in silent:
        sock.close()


def test_a_flood_of_connections_is_refused_not_queued(closing):
    secret = new_secret()
    listener, rejected = make_listener(
        closing, secret=secret, handshake_timeout=1, max_pending_handshakes=4
    )
    acceptor = Acceptor(listener)
    flood = [raw_socket(listener.address, closing) for _ in range(12)]
    for sock in flood:
        sock.settimeout(5)
    greeted = refused = 0
    for sock in flood:
        first = sock.recv(100)  # a greeting from a handshake slot, or at once an end of stream
        if first:
            greeted += 1
        else:
            refused += 1
    assert greeted == 4 and refused == 8
    assert wait_until(lambda: len(rejected) == 12)  # 8 refused at once, 4 timed out after 1 s
    reasons = [reason for _, reason in rejected]
    assert sum("already authenticating" in r for r in reasons) == 8
    assert sum("within 1s" in r for r in reasons) == 4
    good = connect(listener.address, secret=secret, timeout=5)  # once the flood is over: served
    closing.append(good)
    closing.append(acceptor.result())


def test_closing_the_listener_ends_handshakes_in_flight(closing):
    listener, rejected = make_listener(closing, handshake_timeout=30)
    acceptor = Acceptor(listener)
    silent = raw_socket(listener.address, closing)
    silent.settimeout(5)
    assert silent.recv(100)  # its handshake thread has started and waits for the reply
    started = time.monotonic()
    listener.close()
    assert time.monotonic() - started < 5
    with pytest.raises(CommClosedError):
        acceptor.result()
    assert not [t for t in threading.enumerate() if t.name.startswith("minidist-handshake")]


def test_a_frame_over_the_size_limit_is_refused_without_reading_it(closing):
    _, client, server, _ = pair(closing, max_frame_size=1000)
    client.send_bytes(b"a" * 1000)
    assert server.recv_bytes() == b"a" * 1000
    client.max_frame_size = 10**9
    client.send_bytes(b"b" * 5000)
    with pytest.raises(ProtocolError, match="5000 bytes, over the limit of 1000"):
        server.recv_bytes()
    assert server.closed
    with pytest.raises(CommClosedError):
        server.recv_bytes()


def test_sending_more_than_the_limit_raises_and_leaves_the_connection_usable(closing):
    _, client, server, _ = pair(closing)
    client.max_frame_size = 100
    with pytest.raises(ProtocolError, match="limit is 100"):
        client.send_bytes(b"x" * 101)
    client.send_bytes(b"fine")
    assert server.recv_bytes() == b"fine"


def test_a_truncated_frame_after_authentication_is_a_protocol_error(closing):
    secret = new_secret()
    listener, _ = make_listener(closing, secret=secret)
    acceptor = Acceptor(listener)
    sock = raw_socket(listener.address, closing)
    authenticate_by_hand(sock, secret)
    conn = acceptor.result()
    closing.append(conn)
    sock.sendall(struct.pack("!Q", 100) + b"x" * 30)
    sock.close()
    with pytest.raises(ProtocolError, match="30 of 100 bytes"):
        conn.recv_bytes()


@pytest.mark.parametrize("protocol", ["tcp", "tls"])
def test_peer_closing_and_local_close_both_end_a_blocked_reader(protocol, tls_security, closing):
    security = tls_security if protocol == "tls" else None
    _, client, server, _ = pair(closing, protocol, security)
    client.close()
    with pytest.raises(CommClosedError, match="closed by the peer"):
        server.recv_bytes()

    _, client, server, _ = pair(closing, protocol, security)
    errors: queue.Queue = queue.Queue()
    reader = threading.Thread(
        target=lambda: errors.put(pytest.raises(CommClosedError, client.recv_bytes)),
        name="test-reader",
        daemon=True,
    )
    reader.start()
    time.sleep(0.05)  # let the reader block inside recv_bytes; the test holds without it too
    client.close()
    reader.join(5)
    assert not reader.is_alive() and errors.get_nowait()
    with pytest.raises(CommClosedError):
        client.send_bytes(b"after close")


def test_close_wakes_a_blocked_accept_and_accept_times_out(closing):
    listener, _ = make_listener(closing)
    with pytest.raises(TimeoutError):
        listener.accept(timeout=0.2)
    acceptor = Acceptor(listener)
    listener.close()
    with pytest.raises(CommClosedError, match="closed"):
        acceptor.result()


def test_connecting_where_nobody_listens_says_so():
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionRefusedError, match="Is the scheduler running"):
        connect(address, secret=b"s", timeout=5)


def test_tls_with_credentials_from_files(tmp_path, tls_security, closing):
    paths = {}
    for field in (
        "tls_ca_file",
        "tls_scheduler_cert",
        "tls_scheduler_key",
        "tls_client_cert",
        "tls_client_key",
    ):
        paths[field] = str(tmp_path / f"{field}.pem")
        with open(paths[field], "w") as f:
            f.write(getattr(tls_security, field))
    _, client, server, _ = pair(closing, "tls", Security(**paths))
    server.send_bytes(b"over tls")
    assert client.recv_bytes() == b"over tls"


def test_tls_peer_with_foreign_credentials_is_rejected(tls_security, closing):
    listener, rejected = make_listener(closing, "tls", security=tls_security)
    acceptor = Acceptor(listener)
    with pytest.raises((AuthenticationError, CommClosedError)):
        connect(
            listener.address, secret=listener._secret, security=Security.temporary(), timeout=10
        )
    good = connect(listener.address, secret=listener._secret, security=tls_security, timeout=10)
    closing.extend([good, acceptor.result()])
    assert wait_until(lambda: len(rejected) == 1), rejected  # reported by the handshake's thread
    assert "TLS handshake failed" in rejected[0][1]


def test_mixing_tcp_and_tls_gives_hints_on_both_sides(tls_security, closing):
    tls_listener, tls_rejected = make_listener(
        closing, "tls", security=tls_security, handshake_timeout=1
    )
    plain_listener, plain_rejected = make_listener(closing, "tcp")
    acceptors = [Acceptor(tls_listener), Acceptor(plain_listener)]
    _, _, tls_port = parse_address(tls_listener.address)
    with pytest.raises(CommClosedError, match="tls:// address"):
        connect(f"tcp://127.0.0.1:{tls_port}", secret=tls_listener._secret, timeout=10)
    _, _, plain_port = parse_address(plain_listener.address)
    with pytest.raises(AuthenticationError, match="TLS handshake"):
        connect(
            f"tls://127.0.0.1:{plain_port}",
            secret=plain_listener._secret,
            security=tls_security,
            timeout=10,
        )
    closing.append(
        connect(tls_listener.address, secret=tls_listener._secret, security=tls_security)
    )
    closing.append(connect(plain_listener.address, secret=plain_listener._secret))
    closing.extend(acceptor.result() for acceptor in acceptors)
    assert "within 1s" in tls_rejected[0][1]
    assert "TLS handshake" in plain_rejected[0][1]


def test_addresses_and_security_must_agree(tls_security):
    with pytest.raises(ValueError, match="require_encryption"):
        Listener("tcp://127.0.0.1:0", new_secret(), security=tls_security)
    with pytest.raises(ValueError, match="TLS address: pass security"):
        connect("tls://127.0.0.1:1", secret=b"s")
    with pytest.raises(ValueError, match="in-process"):
        Listener("inproc://x", new_secret())
    with pytest.raises(ValueError, match="non-empty bytes"):
        Listener("tcp://127.0.0.1:0", "a string")


def test_published_secret_lets_a_second_process_connect(closing):
    listener, _ = make_listener(closing, publish_secret=True)
    path = secret_path(listener.address)
    assert path.stat().st_mode & 0o777 == 0o600
    code = textwrap.dedent(
        """
        import sys
        from minidist.comm.tcp import connect
        conn = connect(sys.argv[1], timeout=20)
        conn.send_bytes(b"hello from another process")
        sys.stdout.write(conn.recv_bytes().decode())
        conn.close()
        """
    )
    acceptor = Acceptor(listener)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, listener.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        conn = acceptor.result()
        closing.append(conn)
        conn.send_bytes(b"reply to " + conn.recv_bytes())
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode() == "reply to hello from another process"
    listener.close()
    assert not path.exists() and read_secret(listener.address) is None


def test_published_secret_is_found_by_host_name(closing):
    listener, _ = make_listener(closing, publish_secret=True)
    acceptor = Acceptor(listener)
    _, _, port = parse_address(listener.address)
    closing.append(connect(f"localhost:{port}", timeout=10))
    closing.append(acceptor.result())


def _open_state():
    process = psutil.Process()
    return process.num_fds(), len(process.net_connections(kind="tcp"))


@pytest.mark.parametrize("protocol", ["tcp", "tls"])
def test_no_socket_or_descriptor_outlives_its_connection(protocol, tls_security, closing):
    security = tls_security if protocol == "tls" else None
    before = _open_state()
    for _ in range(3):
        local: list = []
        listener, client, server, rejected = pair(local, protocol, security, handshake_timeout=1)
        acceptor = Acceptor(listener)
        with pytest.raises((AuthenticationError, CommClosedError)):
            connect(listener.address, secret=b"wrong", security=security, timeout=5)
        raw_socket(listener.address, local).sendall(b"\x00" * 8 + b"garbage")
        raw_socket(listener.address, local)  # silent until the listener gives up on it
        local.append(
            connect(listener.address, secret=listener._secret, security=security, timeout=10)
        )
        local.append(acceptor.result())
        assert wait_until(lambda rejected=rejected: len(rejected) == 3)
        for thing in reversed(local):
            thing.close()
    assert _open_state() == before

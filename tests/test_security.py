"""Addresses, network interfaces, secret files and TLS credentials."""

from __future__ import annotations

import os
import pickle
import socket
import ssl
import stat
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidist.comm.addressing import format_address, free_port, parse_address, resolve_interface
from minidist.security import (
    Security,
    new_secret,
    read_secret,
    remove_secret,
    secret_path,
    write_secret,
)

pytestmark = pytest.mark.timeout(60)


# --- addresses -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, parsed",
    [
        ("tcp://127.0.0.1:8786", ("tcp", "127.0.0.1", 8786)),
        ("TLS://localhost:0", ("tls", "localhost", 0)),
        ("127.0.0.1:8786", ("tcp", "127.0.0.1", 8786)),
        ("tcp://[::1]:65535", ("tcp", "::1", 65535)),
        ("inproc://scheduler-1", ("inproc", "scheduler-1", 0)),
    ],
)
def test_parse_address(address, parsed):
    assert parse_address(address) == parsed


@pytest.mark.parametrize(
    "address, message",
    [
        ("udp://127.0.0.1:1", "Unknown protocol 'udp'"),
        ("tcp://127.0.0.1", "has no port"),
        ("tcp://:8786", "has no host"),
        ("tcp://127.0.0.1:99999", "Invalid port '99999'"),
        ("tcp://127.0.0.1:-1", "Invalid port '-1'"),
        ("tcp://127.0.0.1:80a", "Invalid port"),
        ("tcp://::1:8786", "IPv6 hosts must be bracketed"),
        ("tcp://[::1]8786", "Malformed IPv6"),
        ("inproc://", "needs a name"),
    ],
)
def test_malformed_addresses_are_refused_with_a_reason(address, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        parse_address(address)


# no per-example deadline (hypothesis's default 200 ms is a speed goal a loaded machine misses;
# CI's profile has none either)
@settings(deadline=None)
@given(
    protocol=st.sampled_from(["tcp", "tls"]),
    host=st.one_of(
        st.ip_addresses().map(str),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True),
    ),
    port=st.integers(0, 65535),
)
def test_format_and_parse_are_inverses(protocol, host, port):
    assert parse_address(format_address(protocol, host, port)) == (protocol, host, port)


def test_resolve_interface_finds_loopback_and_lists_the_others():
    assert resolve_interface("lo") == "127.0.0.1"
    with pytest.raises(ValueError, match="Unknown network interface 'no-such-if0'; available.*lo"):
        resolve_interface("no-such-if0")


def test_free_port_can_be_bound():
    port = free_port()
    assert 0 < port < 65536
    with socket.create_server(("127.0.0.1", port)):
        pass


# --- secret files ----------------------------------------------------------------------------------------


def test_secret_file_is_private_and_round_trips(private_runtime_dir):
    secret = new_secret()
    assert len(secret) == 32 and secret != new_secret()
    address = "tcp://127.0.0.1:8786"
    path = write_secret(address, secret)
    assert path == secret_path(address) and path.parent == private_runtime_dir / "minidist"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_secret(address) == secret
    assert read_secret("tls://127.0.0.1:8786") == secret  # same place, same scheduler
    assert read_secret("127.0.0.1:8787") is None
    assert list(path.parent.iterdir()) == [path]  # the temporary file was renamed, not left behind


def test_remove_secret_spares_a_newer_clusters_file():
    address = "tcp://127.0.0.1:8786"
    old, new = new_secret(), new_secret()
    write_secret(address, old)
    write_secret(address, new)  # a new cluster took the port
    remove_secret(address, old)  # the old one closing late
    assert read_secret(address) == new
    remove_secret(address, new)
    assert read_secret(address) is None
    remove_secret(address)  # nothing there: no error


def test_secret_files_of_schedulers_that_died_are_swept():
    import subprocess
    import sys

    dead = subprocess.run(
        [
            sys.executable,
            "-c",
            "from minidist.security import new_secret, write_secret; "
            "print(write_secret('tcp://127.0.0.1:41001', new_secret()))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    assert os.path.exists(
        dead
    )  # its writer exited without removing it (as a SIGKILLed cluster would)
    alive = write_secret("tcp://127.0.0.1:41002", new_secret())
    assert not os.path.exists(dead)
    assert read_secret("tcp://127.0.0.1:41002") is not None and alive.exists()


def test_a_secret_file_others_can_read_is_refused():
    path = write_secret("tcp://127.0.0.1:8786", new_secret())
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="mode 0600"):
        read_secret("tcp://127.0.0.1:8786")


def test_a_too_open_secret_directory_is_refused_not_repaired(private_runtime_dir):
    """Once others could read or swap its files, tightening the mode would not undo that: say so."""
    directory = private_runtime_dir / "minidist"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    with pytest.raises(PermissionError, match="has mode 0o755, not 0o700"):
        write_secret("tcp://127.0.0.1:1", new_secret())
    with pytest.raises(PermissionError, match="0o755"):
        read_secret("tcp://127.0.0.1:1")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755 and not list(directory.iterdir())


def test_a_secret_directory_that_is_a_symbolic_link_is_refused(private_runtime_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (private_runtime_dir / "minidist").symlink_to(elsewhere)
    with pytest.raises(PermissionError, match="symbolic link"):
        write_secret("tcp://127.0.0.1:1", new_secret())
    assert not list(elsewhere.iterdir())


def test_a_new_secret_directory_is_0700_whatever_the_umask(private_runtime_dir):
    old = os.umask(0o002)
    try:
        path = write_secret("tcp://127.0.0.1:1", new_secret())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_secret_file_that_is_a_symbolic_link_is_refused(tmp_path):
    target = tmp_path / "planted"
    target.write_text(new_secret().hex() + "\n")
    target.chmod(0o600)
    secret_path("tcp://127.0.0.1:2").symlink_to(target)
    with pytest.raises(PermissionError, match="a symbolic link"):
        read_secret("tcp://127.0.0.1:2")


def test_secret_files_name_this_machine_and_other_machines_files_are_left_alone():
    """A home directory shared between machines: each machine's files apart, and only its own swept."""
    import socket

    path = write_secret("tcp://127.0.0.1:3", new_secret())
    assert path.name.startswith(f"127.0.0.1-3@{socket.gethostname()}")
    # another machine's scheduler on the same loopback address and a pid that is dead here
    other = path.parent / path.name.replace(path.name.split("@")[1], "other-machine.secret")
    other.write_text(f"{new_secret().hex()} 999999999\n")
    other.chmod(0o600)
    mine = new_secret()
    write_secret("tcp://127.0.0.1:4", mine)  # writing sweeps stale files: never the other machine's
    assert other.exists()
    assert read_secret("tcp://127.0.0.1:3") != other.read_text().split()[0]  # loopback: ours only
    # a LAN address is the same scheduler seen from any machine: its file is found
    lan = "tcp://10.9.8.7:5"
    shared = secret_path(lan).parent / secret_path(lan).name.replace(
        secret_path(lan).name.split("@")[1], "other-machine.secret"
    )
    shared.write_text(f"{mine.hex()} 1\n")
    shared.chmod(0o600)
    assert read_secret(lan) == mine


def test_without_a_runtime_dir_secrets_go_to_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write_secret("tcp://[::1]:8786", b"s")
    assert path.parent == tmp_path / "home" / ".minidist"
    assert read_secret("tcp://[::1]:8786") == b"s"


def test_a_host_name_finds_the_secret_of_its_address():
    write_secret("tcp://127.0.0.1:8786", b"s")
    assert read_secret("tcp://localhost:8786") == b"s"


def test_distinct_hosts_get_distinct_files():
    hosts = ["::1", "__1", "a_b", "a-b", "fe80::1"]
    names = {secret_path(format_address("tcp", host, 1)).name for host in hosts}
    assert len(names) == len(hosts)


def test_write_secret_wants_bytes():
    with pytest.raises(ValueError, match="non-empty bytes"):
        write_secret("tcp://127.0.0.1:1", "text")
    with pytest.raises(ValueError, match="non-empty bytes"):
        write_secret("tcp://127.0.0.1:1", b"")


# --- TLS credentials -------------------------------------------------------------------------------------


def test_temporary_security_builds_mutual_tls_contexts_and_pickles():
    security = Security.temporary()
    assert security.require_encryption
    server, client = security.server_context(), security.client_context()
    assert server.verify_mode == client.verify_mode == ssl.CERT_REQUIRED
    assert server.minimum_version >= ssl.TLSVersion.TLSv1_2
    for role in ("scheduler", "worker", "client"):
        security.server_context(role)
    again = pickle.loads(pickle.dumps(security))
    assert again.tls_ca_file == security.tls_ca_file
    again.client_context()


def test_repr_never_shows_key_material():
    text = repr(Security.temporary())
    assert "PRIVATE KEY" not in text and "BEGIN" not in text
    assert "tls_client_key=<PEM text>" in text and "require_encryption=True" in text
    assert (
        repr(Security(tls_ca_file="/etc/ca.pem"))
        == "Security(tls_ca_file='/etc/ca.pem', require_encryption=False)"
    )


def test_missing_credentials_are_named():
    with pytest.raises(ValueError, match="needs a CA"):
        Security().client_context()
    with pytest.raises(ValueError, match="tls_worker_cert"):
        Security(tls_ca_file=Security.temporary().tls_ca_file).server_context("worker")
    with pytest.raises(ValueError, match="Unknown TLS role"):
        Security.temporary().server_context("nobody")


def test_temporary_security_without_cryptography_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cryptography", None)  # makes "import cryptography" fail
    with pytest.raises(ImportError, match=r"pip install minidist\[tls\]"):
        Security.temporary()

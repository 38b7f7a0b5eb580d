"""Addresses: parsing, formatting, interface names and free ports.

Every address in minidist is a string ``protocol://host:port``. Parsing turns it into
``(protocol, host, port)`` for the transport, formatting goes back, so the string a listener reports is
the string a client passes to ``connect``:

    "tcp://127.0.0.1:8786"  -> ("tcp", "127.0.0.1", 8786)
    "tls://[::1]:8786"      -> ("tls", "::1", 8786)       IPv6 hosts are bracketed
    "127.0.0.1:8786"        -> ("tcp", "127.0.0.1", 8786) no protocol means tcp
    "inproc://scheduler-1"  -> ("inproc", "scheduler-1", 0)  an in-process name, no socket

``resolve_interface`` maps a network interface name ("lo", "eth0") to its address with psutil, and
``free_port`` asks the kernel for a port nobody is using right now.
"""

from __future__ import annotations

import socket

PROTOCOLS = ("tcp", "tls", "inproc")


def parse_address(addr: str) -> tuple[str, str, int]:
    """Split ``"protocol://host:port"`` into ``(protocol, host, port)``; raise ValueError if malformed."""
    if not isinstance(addr, str):
        raise TypeError(f"An address must be a string like 'tcp://127.0.0.1:8786', got {addr!r}")
    text = addr.strip()
    if "://" in text:
        protocol, _, rest = text.partition("://")
        protocol = protocol.lower()
    else:
        protocol, rest = "tcp", text
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"Unknown protocol {protocol!r} in address {addr!r}; use one of "
            + ", ".join(f"'{p}://'" for p in PROTOCOLS)
        )
    if protocol == "inproc":
        if not rest:
            raise ValueError(f"An inproc address needs a name after 'inproc://', got {addr!r}")
        return protocol, rest, 0
    host, port_text = _split_host_port(rest, addr)
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"Invalid port {port_text!r} in address {addr!r}: expected 0 to 65535")
    return protocol, host, int(port_text)


def _split_host_port(rest: str, addr: str) -> tuple[str, str]:
    if rest.startswith("["):  # "[::1]:8786"
        end = rest.find("]")
        if end < 0 or rest[end + 1 : end + 2] != ":":
            raise ValueError(f"Malformed IPv6 address {addr!r}: expected '[host]:port'")
        host, port_text = rest[1:end], rest[end + 2 :]
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise ValueError(
                f"Address {addr!r} has no port: expected 'host:port', e.g. '127.0.0.1:8786'"
            )
        if ":" in host:
            raise ValueError(f"IPv6 hosts must be bracketed, e.g. 'tcp://[::1]:8786', got {addr!r}")
    if not host:
        raise ValueError(
            f"Address {addr!r} has no host: expected 'host:port', e.g. '127.0.0.1:8786'"
        )
    return host, port_text


def format_address(protocol: str, host: str, port: int) -> str:
    """The inverse of parse_address: ``("tcp", "::1", 80)`` -> ``"tcp://[::1]:80"``."""
    protocol = protocol.lower().rstrip(":/")
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if protocol == "inproc":
        return f"inproc://{host}"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{protocol}://{host}:{int(port)}"


def resolve_interface(name: str) -> str:
    """The IPv4 address of network interface ``name`` (its IPv6 address if it has no IPv4 one)."""
    import psutil

    interfaces = psutil.net_if_addrs()
    if name not in interfaces:
        available = ", ".join(sorted(interfaces)) or "none"
        raise ValueError(f"Unknown network interface {name!r}; available interfaces: {available}")
    addresses = interfaces[name]
    for family in (socket.AF_INET, socket.AF_INET6):
        for entry in addresses:
            if entry.family == family:
                # Link-local IPv6 addresses carry a "%eth0" zone suffix that bind() does not want.
                return entry.address.split("%", 1)[0]
    raise ValueError(f"Network interface {name!r} has no IPv4 or IPv6 address")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on ``host`` right now.

    Another process may take it before you bind it; where possible bind port 0 instead and read the
    real port back (``Listener("tcp://127.0.0.1:0").address``).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]

"""TCP transport: round trips of small frames and throughput of large ones, over loopback (frames as they
are) and, when the machine has a non-loopback address, over it (every frame carries an HMAC tag).

    python benchmarks/bench_tcp.py [--repeat 5]

Prints the best of ``--repeat`` runs. Compare loopback figures with those of an older checkout run the
same way (``PYTHONPATH=<checkout> python benchmarks/bench_tcp.py``) to see what the transport costs.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time

import psutil

from minidist.comm.tcp import Listener, connect
from minidist.security import new_secret


def _lan_host() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


def _pair(host: str):
    listener = Listener("tcp://0.0.0.0:0", new_secret(), on_reject=lambda *a: None)
    port = listener.address.rsplit(":", 1)[1]
    accepted: list = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept(timeout=10)))
    thread.start()
    client = connect(f"tcp://{host}:{port}", secret=listener._secret, timeout=10)
    thread.join()
    return listener, client, accepted[0]


def _echo(server, stop):
    while True:
        data = server.recv_bytes()
        if data == b"stop":
            return
        server.send_bytes(data)


def measure(host: str, repeat: int) -> dict:
    listener, client, server = _pair(host)
    echo = threading.Thread(target=_echo, args=(server, None), daemon=True)
    echo.start()
    results = {}
    small, big = b"x" * 100, b"y" * (64 * 2**20)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(2000):
            client.send_bytes(small)
            client.recv_bytes()
        best = min(best, time.perf_counter() - start)
    results["2,000 round trips of 100 B"] = f"{best:.3f} s ({best / 2000 * 1e6:.0f} µs each)"
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        client.send_bytes(big)
        client.recv_bytes()
        best = min(best, time.perf_counter() - start)
    results["64 MiB there and back"] = f"{best:.3f} s ({2 * 64 / best:.0f} MiB/s)"
    results["frames tagged"] = str(getattr(client, "authenticates_frames", False))
    client.send_bytes(b"stop")
    echo.join()
    for thing in (client, server, listener):
        thing.close()
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    hosts = [("loopback", "127.0.0.1")]
    lan = _lan_host()
    if lan is not None:
        hosts.append((f"LAN address {lan}", lan))
    for label, host in hosts:
        for measure_name, value in measure(host, args.repeat).items():
            print(f"{label:>24} | {measure_name:<28} | {value}")


if __name__ == "__main__":
    main()

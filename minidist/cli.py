"""The ``minidist`` command: ``minidist serve`` starts a cluster that other processes share.

::

    minidist serve [--n-workers N] [--threads-per-worker T] [--memory-limit M] [--host H]
                   [--scheduler-port P] [--dashboard-address A] [--scheduler-file F]
        check the flags and the scheduler file ──► LocalCluster(processes=True, tcp://H:P) ──►
        write F ──► print the address and the dashboard link ──► wait for Ctrl-C, SIGTERM or a shutdown ──►
        remove F ──► close the cluster (workers, listener, dashboard, shared memory, secret file) ──► exit 0

Other processes of the same user connect with ``Client("tcp://H:P")`` or ``Client(scheduler_file=F)``
(they read the cluster's secret from the file it publishes for its address). Any failure to start says
what went wrong on stderr and exits 1; nothing is left running. ``minidist`` with no subcommand (and
``python -m minidist``) runs the demo of minidist/demo.py.

This is a program's own ``main``: it may install signal handlers and print; the library never does.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Optional

_SERVE_DESCRIPTION = (
    "Start a long-lived local cluster that other processes of this user reach with "
    'Client("tcp://HOST:PORT") or Client(scheduler_file=FILE). Stops on Ctrl-C or SIGTERM.'
)


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minidist serve", description=_SERVE_DESCRIPTION)
    parser.add_argument("--n-workers", type=int, default=None, help="worker processes")
    parser.add_argument("--threads-per-worker", type=int, default=None, help="threads per worker")
    parser.add_argument(
        "--memory-limit",
        default="auto",
        help="per worker: 'auto', bytes ('4GiB'), a fraction of memory (0.5), or 0 for no limit",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument(
        "--scheduler-port", type=int, default=8786, help="port for clients (0: any free port)"
    )
    parser.add_argument(
        "--dashboard-address",
        default=":8787",
        help="dashboard address (':0' any free port, 'none' for no dashboard)",
    )
    parser.add_argument(
        "--scheduler-file", default=None, help="write the cluster's address to this JSON file"
    )
    parser.add_argument("--name", default=None, help="a name for the cluster")
    return parser


def memory_limit_value(text: str):
    """The flag's text as LocalCluster's ``memory_limit`` takes it."""
    lowered = text.strip().lower()
    if lowered in ("none", "0"):
        return None
    for kind in (int, float):
        try:
            return kind(lowered)
        except ValueError:
            pass
    return text


class _Stop:
    """Set by SIGINT/SIGTERM, or by a client's ``shutdown()`` closing the cluster; the main thread
    waits on it."""

    def __init__(self):
        self.event = threading.Event()
        self.reason: Optional[str] = None

    def __call__(self, signum, frame) -> None:
        self.reason = f"{signal.Signals(signum).name}, stopping the cluster"
        self.event.set()

    def cluster_closed(self) -> None:
        self.reason = self.reason or "a client shut the cluster down"
        self.event.set()


def fail(message: str) -> int:
    print(f"minidist serve: error: {message}", file=sys.stderr, flush=True)
    return 1


def serve(argv=None) -> int:
    args = serve_parser().parse_args(argv)
    from .deploy.local import LocalCluster
    from .deploy.scheduler_file import (
        check_writable,
        live_cluster,
        remove_scheduler_file,
        scheduler_identity,
        write_scheduler_file,
    )

    path = os.path.abspath(args.scheduler_file) if args.scheduler_file else None
    if path is not None:
        running = live_cluster(path)
        if running is not None:
            return fail(
                f"a cluster is already running at {running['address']} (pid {running['pid']}) "
                f"and wrote {path}; connect to it with Client(scheduler_file={path!r}), or stop it "
                "first, or choose another --scheduler-file"
            )
        try:
            check_writable(path)
        except OSError as exc:
            return fail(f"cannot write the scheduler file {path}: {exc.strerror or exc}")

    stop = _Stop()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    dashboard = None if args.dashboard_address.lower() in ("none", "") else args.dashboard_address
    try:
        cluster = LocalCluster(
            name=args.name,
            n_workers=args.n_workers,
            threads_per_worker=args.threads_per_worker,
            memory_limit=memory_limit_value(args.memory_limit),
            host=args.host,
            scheduler_port=args.scheduler_port,
            dashboard_address=dashboard,
            protocol="tcp://",
            processes=True,
        )
    except OSError as exc:
        where = f"{args.host}:{args.scheduler_port}"
        return fail(f"cannot listen on {where}: {exc.strerror or exc} (try --scheduler-port 0)")
    except (ValueError, TypeError) as exc:
        return fail(str(exc))
    identity = scheduler_identity(cluster)
    try:
        if path is not None:
            write_scheduler_file(path, identity)
        info = cluster._summary()
        print(f"minidist cluster {cluster.name}", flush=False)
        print(f"  scheduler address: {cluster.scheduler_address}")
        print(f"  dashboard: {cluster.dashboard_link or 'off'}")
        if path is not None:
            print(f"  scheduler file: {path}")
        print(
            f"  workers: {info['workers']} processes, {info['threads']} threads, "
            f"memory: {info['memory_text']}"
        )
        print(
            f'Connect with Client("{cluster.scheduler_address}")'
            + (f" or Client(scheduler_file={path!r})" if path else "")
            + ". Ctrl-C, SIGTERM or a client's shutdown() stops it.",
            flush=True,
        )
        cluster._when_closed.append(stop.cluster_closed)
        stop.event.wait()
        print(f"minidist serve: {stop.reason}", flush=True)
    finally:
        if path is not None:
            remove_scheduler_file(path, identity["id"])
        cluster.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv=None) -> None:
    """``minidist serve ...`` runs the shared cluster; anything else is the demo and its flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        sys.exit(serve(argv[1:]))
    from .demo import main as demo

    demo(argv)

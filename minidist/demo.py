"""The demo that ``python -m minidist`` (and ``minidist`` with no subcommand) runs on ``Client()``.

It builds a local cluster sized to this machine, prints the dashboard link, then runs three kinds of
work and prints what each produced: a parallel map (counting primes in ranges), a task graph (a tree
reduction where tasks depend on futures), and a Monte Carlo estimate with error handling.
"""

from __future__ import annotations

import argparse
import random
import time


def count_primes(bounds: tuple) -> int:
    """Primes in [start, stop), by trial division: deliberately CPU-bound pure Python."""
    start, stop = bounds
    found = 0
    for n in range(max(start, 2), stop):
        if n % 2 == 0:
            found += n == 2
            continue
        d = 3
        while d * d <= n:
            if n % d == 0:
                break
            d += 2
        else:
            found += 1
    return found


def add(a: int, b: int) -> int:
    return a + b


def darts(seed: int, n: int = 200_000) -> int:
    """How many of ``n`` random darts land inside the unit quarter circle."""
    rng = random.Random(seed)
    return sum(rng.random() ** 2 + rng.random() ** 2 <= 1.0 for _ in range(n))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m minidist",
        description=__doc__,
        epilog="Subcommand: 'python -m minidist serve --help' (or 'minidist serve'): start a cluster "
        "that other processes share.",
    )
    parser.add_argument("--limit", type=int, default=2_000_000, help="count primes below this")
    parser.add_argument("--chunks", type=int, default=64, help="number of prime-counting tasks")
    parser.add_argument(
        "--linger",
        type=float,
        default=0.0,
        help="keep the cluster (and dashboard) up this many seconds at the end",
    )
    args = parser.parse_args(argv)

    from minidist import Client, as_completed

    started = time.perf_counter()
    with Client() as client:
        info = client.scheduler_info()
        print(
            f"cluster: {len(info['workers'])} workers, {sum(client.nthreads().values())} threads, "
            f"started in {time.perf_counter() - started:.2f} s"
        )
        print(f"dashboard: {client.dashboard_link}")

        t0 = time.perf_counter()
        step = -(-args.limit // args.chunks)
        ranges = [(lo, min(lo + step, args.limit)) for lo in range(0, args.limit, step)]
        counts = client.map(count_primes, ranges)
        # a reduction tree: each level's tasks take the previous level's futures as arguments
        level = counts
        while len(level) > 1:
            pairs = [level[i : i + 2] for i in range(0, len(level), 2)]
            level = [client.submit(add, *pair) if len(pair) == 2 else pair[0] for pair in pairs]
        total = level[0].result()
        print(
            f"primes below {args.limit:,}: {total:,} "
            f"({len(ranges)} map tasks + {len(ranges) - 1} reduction tasks in "
            f"{time.perf_counter() - t0:.2f} s)"
        )

        t0 = time.perf_counter()
        throws = client.map(darts, range(32))
        inside = sum(f.result() for f in as_completed(throws))
        print(
            f"pi ~ {4 * inside / (32 * 200_000):.5f} from {32 * 200_000:,} darts "
            f"in {time.perf_counter() - t0:.2f} s"
        )

        bad = client.submit(count_primes, None)
        try:
            bad.result()
        except TypeError as exc:
            print(f"a failing task reports its own error: TypeError: {exc}")

        if args.linger:
            print(f"lingering {args.linger:.0f} s: open the dashboard link above")
            time.sleep(args.linger)
    print(f"done in {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()

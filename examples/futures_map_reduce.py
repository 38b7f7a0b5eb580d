"""Futures: a map, a tree reduction whose tasks depend on futures, and results as they complete.

Run: python examples/futures_map_reduce.py [SCHEDULER_ADDRESS]
"""

import sys

from minidist import Client, as_completed


def square(x):
    return x * x


def add(a, b):
    return a + b


def collatz_steps(n):
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def main(client):
    squares = client.map(square, range(100))
    level = squares
    while len(level) > 1:  # each level's tasks take the previous level's futures as arguments
        pairs = [level[i : i + 2] for i in range(0, len(level), 2)]
        level = [client.submit(add, *pair) if len(pair) == 2 else pair[0] for pair in pairs]
    print("sum of squares below 100:", level[0].result())

    steps = client.map(collatz_steps, range(1, 301))
    longest = max(future.result() for future in as_completed(steps))
    print("longest Collatz chain below 301:", longest, "steps")
    print("gathered:", client.gather(client.map(square, [3, 4, 5])))


if __name__ == "__main__":
    address = (
        sys.argv[1] if len(sys.argv) > 1 else None
    )  # a running scheduler, or start a local one
    with Client(address) if address else Client(n_workers=1, threads_per_worker=2) as client:
        main(client)

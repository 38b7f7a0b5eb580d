"""Cost of the data plane alone (no engine): a 200 MB array through serialize/deserialize.

Run: python benchmarks/bench_serialize.py [--mb 200] [--repeat 3]

Rows (best of --repeat, milliseconds):
  memcpy                     numpy copy of the array: the yardstick
  pickle.dumps inline        what a pipe-based transport pays before the pipe itself
  serialize, new buffer      written into a fresh /dev/shm segment
  serialize, same buffer     the same unchanged array again (hard link after a byte comparison)
  deserialize                mapping only (zero-copy)
  deserialize + sum          mapping plus reading every page, as a task would
  3 tasks end to end         serialize the same array 3 times, deserialize and sum each (the issue-5 case,
                             minus the engine's messaging)
"""

from __future__ import annotations

import argparse
import pickle
import time

import numpy as np

from minidist.comm.serialize import deserialize, serialize
from minidist.comm.shm import SegmentStore, new_cluster_id, sweep_cluster, unlink_segments


def best_ms(func, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    array = np.random.default_rng(0).random(args.mb * 2**20 // 8)
    store = SegmentStore(new_cluster_id())
    try:

        def fresh():
            payload = serialize(array.copy(), store)  # a new address each time: no re-use
            unlink_segments(payload.segments())

        kept = serialize(array, store)

        def again():
            unlink_segments(serialize(array, store).segments())

        def three_tasks() -> float:
            argument = array.copy()  # never serialized before: the first submit must write it
            start = time.perf_counter()
            payloads = [serialize(argument, store) for _ in range(3)]
            for payload in payloads:
                deserialize(payload).sum()
            elapsed = time.perf_counter() - start
            for payload in payloads:
                unlink_segments(payload.segments())
            return elapsed * 1000

        copy_ms = best_ms(array.copy, args.repeat)
        rows = [
            ("memcpy", copy_ms),
            ("pickle.dumps inline", best_ms(lambda: pickle.dumps(array, protocol=5), args.repeat)),
            ("serialize, new buffer", best_ms(fresh, args.repeat) - copy_ms),
            ("serialize, same buffer", best_ms(again, args.repeat)),
            ("deserialize", best_ms(lambda: deserialize(kept), args.repeat)),
            ("deserialize + sum", best_ms(lambda: deserialize(kept).sum(), args.repeat)),
            ("sum of the original", best_ms(array.sum, args.repeat)),
            ("3 tasks end to end", min(three_tasks() for _ in range(args.repeat))),
        ]
    finally:
        sweep_cluster(store.cluster_id)
    print(f"{args.mb} MB float64 array, best of {args.repeat}")
    for label, ms in rows:
        print(f"  {label:40s} {ms:9.2f} ms")


if __name__ == "__main__":
    main()

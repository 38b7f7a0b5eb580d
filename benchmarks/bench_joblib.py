"""joblib.Parallel on minidist against joblib's own loky backend: many trivial calls.

Run: python benchmarks/bench_joblib.py [--calls 10000] [--repeat 3]

Both backends get 2 workers (loky: n_jobs=2; minidist: Client with 2 process workers x 1 thread), are
warmed up by a short call first (processes started, batch size learnt), then time the same ``Parallel``
call of ``--calls`` trivial functions. Prints the best time of each and their ratio; joblib's
auto-batching is what keeps minidist's per-task cost out of the picture.
"""

from __future__ import annotations

import argparse
import time

import joblib


def square(x):
    return x * x


def best_seconds(calls: list, repeat: int) -> float:
    joblib.Parallel()(calls[:200])
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        results = joblib.Parallel()(calls)
        best = min(best, time.perf_counter() - start)
        assert results == [i * i for i in range(len(calls))]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    calls = [joblib.delayed(square)(i) for i in range(args.calls)]

    from minidist import Client

    with joblib.parallel_config(backend="loky", n_jobs=2):
        loky = best_seconds(calls, args.repeat)
    with Client(n_workers=2, threads_per_worker=1, dashboard_address=None):
        with joblib.parallel_config(backend="minidist"):
            ours = best_seconds(calls, args.repeat)
    print(f"loky {loky:.3f} s")
    print(f"minidist {ours:.3f} s")
    print(f"ratio {ours / loky:.2f}")


if __name__ == "__main__":
    main()

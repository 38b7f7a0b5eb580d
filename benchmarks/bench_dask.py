"""dask graphs on minidist against dask.distributed and dask's own schedulers, measured in one run.

    python benchmarks/bench_dask.py [--repeat 3] [--skip-distributed] [--big] [--tree-only]
                                    [--arrays-only]

Rows (2 workers x 1 thread for every cluster; each figure the best of ``--repeat`` runs):

- **transpose**: ``(x + x.T).mean()``, x random 8000² in 1000² chunks (64 chunks of 8 MB)
- **rechunk**: ``x.rechunk((250, 6000)).sum(axis=1)``, x random 6000² in (6000, 250) chunks
- **tree**: a pairwise tree reduction of 10,000 delayed leaves (20,000 tasks), ``.compute()`` on the
  default scheduler; dask's ``scheduler="sync"`` is the reference; the overhead per task is
  (minidist - sync) / tasks. minidist runs the tree's in-trees as fused tasks (up to 64 nodes each,
  ``integrations/dask_fusion.py``); the row **tree, fusion off** is the same graph with one task per
  node (``optimization.fuse.active`` False), the engine's own cost per task
- **100k graph**: a plain dask graph of 100,000 tasks (a pairwise tree over 50,000 leaves) through
  ``client.get`` on thread and on process workers, with the client's RSS with the graph built, once
  the client started, at the peak, at the end and after release

``--tree-only`` runs only the tree rows (dask sync, minidist threads and processes, fused and not) and
their breakdowns; ``--arrays-only`` only the two array rows (every engine).
After the table, the tree's cost per task by stage, one compute each, timed in the client process:
dask's own graph building and ``dask.order`` (both also part of dask's ``sync``), minidist's checks and
conversion of the nodes, fusing in-trees, packing them into tasks, and the run from posting the graph to the last result
(scheduler and workers); and the full garbage collections (generation 2) that fell in the compute,
taken out of whichever stage they interrupted and shown on their own.

Printed: seconds and ratios (engine / minidist threads for arrays, so processes should be <= 1.3;
dask.distributed / minidist processes should be >= 1.5). ``--big`` adds the 4 GB streaming sum on 2
process workers with ``memory_limit="1GB"`` each and reports whether any worker was paused or restarted.
"""

from __future__ import annotations

import argparse
import gc
import operator
import os
import time

import psutil

UNFUSED = "tree, fusion off"


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def array_rows():
    import dask.array as da

    rng = da.random.default_rng(42)
    x = rng.random((8000, 8000), chunks=(1000, 1000))
    y = rng.random((6000, 6000), chunks=(6000, 250))
    return {
        "transpose (x + x.T).mean()": (x + x.T).mean(),
        "rechunk(250, 6000).sum(axis=1)": y.rechunk((250, 6000)).sum(axis=1),
    }


def tree(leaves: int = 10_000):
    import dask

    layer = [dask.delayed(abs)(-i) for i in range(leaves)]
    while len(layer) > 1:
        layer = [
            dask.delayed(operator.add)(layer[i], layer[i + 1]) if i + 1 < len(layer) else layer[i]
            for i in range(0, len(layer), 2)
        ]
    return layer[0]


class FullCollections:
    """Counts and times generation-2 garbage collections while entered (``gc.callbacks``)."""

    def __enter__(self):
        self.count, self.seconds, self._start = 0, 0.0, 0.0
        gc.callbacks.append(self._observe)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self._observe)

    def _observe(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._start


def timed_stages(stages: dict, targets: list, collections: FullCollections):
    """Wrap ``(owner, name, stage)`` attributes so each call adds its seconds, less the full garbage
    collections that fell in it, to ``stages[stage]``; returns a function that puts the originals back."""
    originals = []
    for owner, name, stage in targets:
        original = getattr(owner, name)

        def wrapper(*args, _original=original, _stage=stage, **kwargs):
            start, collected = time.perf_counter(), collections.seconds
            try:
                return _original(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start - (collections.seconds - collected)
                stages[_stage] = stages.get(_stage, 0.0) + spent

        originals.append((owner, name, original))
        setattr(owner, name, wrapper)

    def restore() -> None:
        for owner, name, original in originals:
            setattr(owner, name, original)

    return restore


def sync_breakdown(total) -> dict:
    """dask ``sync`` on the tree: seconds of its graph building, its ``dask.order``, the rest."""
    from dask._expr import FinalizeCompute
    from dask._task_spec import convert_legacy_graph
    from dask.base import collections_to_expr
    from dask.order import order

    gc.collect()
    with FullCollections() as collections:
        start = time.perf_counter()
        total.compute(scheduler="sync")
        whole = time.perf_counter() - start
    gc.collect()
    with FullCollections() as apart:  # the same two stages again, alone
        start = time.perf_counter()
        expr = FinalizeCompute(collections_to_expr([total], True)).optimize()
        graph = dict(expr.__dask_graph__())
        built, collected = time.perf_counter(), apart.seconds
        order(convert_legacy_graph(graph))
        ordered = time.perf_counter()
    build = built - start - collected
    ordering = ordered - built - (apart.seconds - collected)
    return {
        "dask: collection -> graph": build,
        "dask.order": ordering,
        "execution (dask's local loop)": whole - collections.seconds - build - ordering,
        "total": whole,
        "full collections": (collections.count, collections.seconds),
    }


def minidist_breakdown(total) -> dict:
    """One ``total.compute()`` on the current default Client, by stage (see the module docstring)."""
    from minidist import Client
    from minidist.integrations import dask as graphs

    stages: dict = {}
    graph_nodes = graphs.graph_nodes

    def build_first(graph):
        # dask builds the expression's graph once and keeps it: timed apart from minidist's checks
        start, collected = time.perf_counter(), collections.seconds
        if hasattr(graph, "__dask_graph__"):
            graph.__dask_graph__()
        spent = time.perf_counter() - start - (collections.seconds - collected)
        stages["dask: collection -> graph"] = spent
        return graph_nodes(graph)

    collections = FullCollections()
    graphs.graph_nodes = build_first
    restore = timed_stages(
        stages,
        [
            (graphs, "graph_nodes", "minidist: checks, conversion"),
            (graphs, "needed_nodes", "minidist: cull to wanted keys"),
            (graphs, "static_order", "dask.order"),
            (graphs, "fuse_in_trees", "minidist: fuse in-trees"),
            (Client, "_graph_tasks", "minidist: pack tasks"),
            (Client, "gather", "run: posted -> last result"),
        ],
        collections,
    )
    try:
        gc.collect()
        with collections:
            start = time.perf_counter()
            total.compute()
            whole = time.perf_counter() - start
    finally:
        restore()
        graphs.graph_nodes = graph_nodes
    stages["minidist: checks, conversion"] -= stages["dask: collection -> graph"]
    stages["other (futures, post, dask's compute)"] = (
        whole - collections.seconds - sum(stages.values())
    )
    stages["total"] = whole
    stages["full collections"] = (collections.count, collections.seconds)
    return stages


def print_breakdown(name: str, stages: dict, tasks: int) -> None:
    count, seconds = stages.pop("full collections")
    cells = [f"{stage} {value / tasks * 1e6:.1f}" for stage, value in stages.items()]
    cells.insert(-1, f"{count} full collections {seconds / tasks * 1e6:.1f}")
    print(f"  {name}: " + ", ".join(cells) + " us/task")


def minidist_client(processes: bool, **kwargs):
    from minidist import Client

    return Client(
        processes=processes,
        n_workers=2,
        threads_per_worker=1,
        dashboard_address=None,
        **kwargs,
    )


def rss() -> float:
    return psutil.Process().memory_info().rss / 2**20


def measure(
    repeat: int, skip_distributed: bool, tree_only: bool = False, arrays_only: bool = False
) -> dict:
    import dask

    results: dict = {}
    rows = {} if tree_only else array_rows()
    total = None if arrays_only else tree()
    tasks = 20_000 - 1
    breakdowns = {} if total is None else {"dask sync": sync_breakdown(total)}
    for name, collection in rows.items():
        results[(name, "dask threads")] = best(
            lambda c=collection: c.compute(scheduler="threads"), repeat
        )
    if total is not None:
        results[("tree 20,000 tasks", "dask sync")] = best(
            lambda: total.compute(scheduler="sync"), repeat
        )
        results[(UNFUSED, "dask sync")] = results[("tree 20,000 tasks", "dask sync")]
    for processes, label in ((False, "minidist threads"), (True, "minidist procs")):
        with minidist_client(processes):
            for name, collection in rows.items():
                collection.compute()  # warm: functions shipped, prefixes timed
                results[(name, label)] = best(lambda c=collection: c.compute(), repeat)
            if total is not None:
                results[("tree 20,000 tasks", label)] = best(lambda: total.compute(), repeat)
                breakdowns[label] = minidist_breakdown(total)
                with dask.config.set({"optimization.fuse.active": False}):
                    results[(UNFUSED, label)] = best(lambda: total.compute(), repeat)
                    breakdowns[f"{label}, fusion off"] = minidist_breakdown(total)
    if not skip_distributed and not tree_only:
        from dask.distributed import Client as DaskClient

        with DaskClient(
            n_workers=2, threads_per_worker=1, dashboard_address=None, processes=True
        ) as client:
            for name, collection in rows.items():
                client.compute(collection, sync=True)
                results[(name, "distributed procs")] = best(
                    lambda c=collection: client.compute(c, sync=True), repeat
                )
            if total is not None:
                results[("tree 20,000 tasks", "distributed procs")] = best(
                    lambda: client.compute(total, sync=True), 1
                )
    del dask
    results["tasks"] = tasks
    results["breakdowns"] = breakdowns
    return results


def big_graph_memory(processes: bool, leaves: int = 50_000) -> dict:
    """A 100,000-task graph (a pairwise tree over 50,000 leaves, as a plain dask graph) through
    ``client.get``; the client's RSS (MiB) with the graph built, once the client started, at the peak,
    at the end and after release (the graph dict itself, the caller's, counts in all of them)."""
    from bench_floor import PeakRss, released_rss

    graph: dict = {f"leaf-{i}": (operator.neg, i) for i in range(leaves)}
    layer = list(graph)
    level = 0
    while len(layer) > 1:
        nxt = []
        for i in range(0, len(layer), 2):
            if i + 1 < len(layer):
                key = f"add-{level}-{i}"
                graph[key] = (operator.add, layer[i], layer[i + 1])
                nxt.append(key)
            else:
                nxt.append(layer[i])
        layer, level = nxt, level + 1
    gc.collect()
    me = psutil.Process()
    before = rss()
    with minidist_client(processes) as client:
        assert client.submit(operator.neg, 1).result() == -1
        gc.collect()
        started = rss()
        with PeakRss(me) as peak:
            start = time.perf_counter()
            assert client.get(graph, layer[0]) == -leaves * (leaves - 1) // 2
            seconds = time.perf_counter() - start
            end = rss()
            after = released_rss(client, me) / 2**20
    return {
        "seconds": seconds,
        "tasks": len(graph),
        "before": before,
        "started": started,
        "peak": peak.peak / 2**20,
        "end": end,
        "after": after,
    }


def streaming_sum(gigabytes: float = 4.0) -> dict:
    import dask.array as da

    from minidist import Client

    side = int((gigabytes * 2**30 / 8) ** 0.5)
    x = da.random.default_rng(0).random((side, side), chunks=(2048, 2048))
    with Client(
        n_workers=2,
        threads_per_worker=1,
        memory_limit="1GB",
        dashboard_address=None,
    ) as client:
        pids = {w: info.get("pid") for w, info in client.scheduler_info()["workers"].items()}
        start = time.perf_counter()
        total = x.sum().compute()
        seconds = time.perf_counter() - start
        after = {w: info.get("pid") for w, info in client.scheduler_info()["workers"].items()}
        logs = "\n".join(str(v) for v in client.get_worker_logs().values())
        logs += str(client.cluster.get_logs())
    return {
        "seconds": seconds,
        "gigabytes": x.nbytes / 2**30,
        "mean": total / x.size,
        "workers replaced": pids != after,
        "paused": "pause" in logs.lower(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-distributed", action="store_true")
    parser.add_argument("--big", action="store_true", help="add the 4 GB streaming sum")
    parser.add_argument(
        "--tree-only", action="store_true", help="only the tree row and its breakdown"
    )
    parser.add_argument("--arrays-only", action="store_true", help="only the two array rows")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} on {os.cpu_count()} cores; best of {args.repeat}")
    results = measure(args.repeat, args.skip_distributed, args.tree_only, args.arrays_only)
    tasks = results.pop("tasks")
    breakdowns = results.pop("breakdowns")
    engines = [
        "minidist procs",
        "minidist threads",
        "distributed procs",
        "dask threads",
        "dask sync",
    ]
    names = sorted({name for name, _ in results}, key=lambda n: (n.startswith("tree"), n))
    print(f"{'graph':34}" + "".join(f"{e:>19}" for e in engines))
    for name in names:
        cells = []
        for engine in engines:
            value = results.get((name, engine))
            cells.append(f"{value:>18.3f}s" if value is not None else f"{'–':>19}")
        print(f"{name:34}" + "".join(cells))
    for name in names:
        procs = results[(name, "minidist procs")]
        threads = results[(name, "minidist threads")]
        line = f"{name}: procs/threads {procs / threads:.2f}"
        if (name, "distributed procs") in results:
            line += f", distributed/procs {results[(name, 'distributed procs')] / procs:.2f}"
        if (name, "dask sync") in results:
            sync = results[(name, "dask sync")]
            line += f", threads/sync {threads / sync:.2f}, procs/sync {procs / sync:.2f}"
            line += f", overhead per task {(threads - sync) / tasks * 1e6:.0f} us (threads)"
            line += f" {(procs - sync) / tasks * 1e6:.0f} us (procs)"
        print(line)
    if args.arrays_only:
        return
    print("tree, one compute each, by stage:")
    for name, stages in breakdowns.items():
        print_breakdown(name, stages, tasks)
    if args.tree_only:
        return
    for processes in (False, True):
        big = big_graph_memory(processes)
        print(
            f"{big['tasks']:,}-task graph through client.get on "
            f"{'process' if processes else 'thread'} workers: {big['seconds']:.2f} s; client RSS "
            f"{big['before']:.0f} MiB with the graph built, {big['started']:.0f} MiB with the client "
            f"started, peak {big['peak']:.0f}, {big['end']:.0f} at the end, {big['after']:.0f} MiB "
            f"after release ({(big['after'] - big['started']) / big['started'] * 100:+.0f}% of "
            "the started client)"
        )
    if args.big:
        big = streaming_sum()
        print(
            f"{big['gigabytes']:.1f} GB random sum on 2 workers x 1 GB: {big['seconds']:.1f} s, "
            f"mean {big['mean']:.4f}, workers replaced: {big['workers replaced']}, "
            f"paused: {big['paused']}"
        )


if __name__ == "__main__":
    main()

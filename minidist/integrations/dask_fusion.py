"""Fusing a large dask graph's in-trees: many tiny nodes run as one minidist task each.

A task costs the scheduler and the workers tens of microseconds whatever it does (its state, the
hand-over to a worker thread or process, the report back), and a graph of many tiny nodes (a tree
reduction of ``delayed`` calls, a bag's partitions) pays that per node. ``fuse_in_trees`` groups nodes
into *in-trees*: a group is a node (its root) with whole subtrees under it that need nothing from
outside the group (down to nodes without dependencies) and whose values only the group uses. A group of
several nodes becomes one task under the root's key, running ``FusedNodes``: its members in
``dask.order`` order, each value dropped as soon as its one consumer ran. So a fused task needs from
outside exactly what its root would (placement and the data plane move the same values to it as to the
root alone), and the values made inside it never leave its worker::

    nodes, dependencies first ──► dependents counted ──► each node absorbs the groups of its
        single-use dependencies that need nothing from outside (up to ``cap`` nodes) ──► groups
        ──► one task per group, keyed by its root ──► dask.order over the tasks (not every node)

Never fused into a group below its root: keys the caller wants (they need a future of their own) or
holds futures of (the scheduler shares that task), and values another group could need (a node with two
or more dependents is always a root). A group's members have equal options (``priority``, ``retries``,
``workers``..., per task), which the fused task takes. The graph must have
``FUSE_MIN_NODES`` nodes or more (small graphs keep one task per node, as the dashboard shows them), and
groups hold at most ``cap`` nodes, chosen so the graph keeps at least ``MIN_GROUPS`` tasks to spread over
the workers. dask's own switch for low-level fusion, ``dask.config.set({"optimization.fuse.active":
False})``, turns it off. Workers import this module to run a group (it imports nothing from dask).
"""

from __future__ import annotations

FUSE_MIN_NODES = 1_000  # smaller graphs run one task per node
MAX_GROUP = 64  # nodes in one fused task at most
MIN_GROUPS = 256  # groups are made small enough for the graph to keep at least this many tasks


class FusedNodes:
    """Nodes of one in-tree run as one task: called with ``{dependency: value}`` for the group's
    dependencies outside it (as a dask node is), it returns the value of its root, ``nodes[-1]``."""

    __slots__ = ("nodes", "dependencies", "key")

    def __init__(self, nodes: tuple, dependencies: frozenset):
        self.nodes = nodes  # in dask.order order: each node's dependencies come before it
        self.dependencies = dependencies  # keys outside the group whose values it needs
        self.key = nodes[-1].key

    def __call__(self, values=()):
        local = dict(values)
        outside = self.dependencies
        for node in self.nodes:
            try:
                # each node gets only its own dependencies' values, as dask's schedulers give them
                value = node({d: local[d] for d in node.dependencies})
            except Exception as exc:
                if hasattr(exc, "add_note"):  # Python 3.11+
                    exc.add_note(
                        f"(in dask task {node.key!r}, one of {len(self.nodes)} fused into the "
                        f"minidist task {self.key!r})"
                    )
                raise
            for dependency in node.dependencies:
                # a member's value has one consumer, and this was it (outside values stay)
                if dependency not in outside:
                    del local[dependency]
            local[node.key] = value
        return value

    def __reduce__(self):
        return FusedNodes, (self.nodes, self.dependencies)

    def __repr__(self) -> str:
        return f"<FusedNodes {self.key!r}: {len(self.nodes)} nodes>"


def group_cap(nodes: int) -> int:
    """The most nodes one group of a graph of ``nodes`` nodes may hold (1: no fusion)."""
    if nodes < FUSE_MIN_NODES:
        return 1
    return max(1, min(MAX_GROUP, nodes // MIN_GROUPS))


def fuse_in_trees(ordered: list, nodes: dict, keep: set, cap: int, options: dict) -> dict:
    """``{task key: node or FusedNodes}`` for the graph ``nodes`` whose keys ``ordered`` lists with
    each after its dependencies, and in that order too. ``keep``: keys that must stay roots (wanted,
    held); ``options``: ``{key: task options}`` for keys with any; a group's members all have its
    root's (the task's), so a node joins only a group whose options equal its own."""
    if cap <= 1:
        return nodes
    consumers: dict = {}
    for key in ordered:
        for dependency in nodes[key].dependencies:
            consumers[dependency] = consumers.get(dependency, 0) + 1
    groups: dict = {}  # root key -> member keys, in ``ordered``'s order of the roots
    closed: set = set()  # roots whose groups need no value from outside them
    for key in ordered:
        members: list = []  # the subtrees taken in, each dependencies first, then the root
        absorbed_all = True
        for dependency in nodes[key].dependencies:
            if (
                dependency in closed
                and consumers[dependency] == 1
                and dependency not in keep
                and len(members) + len(groups[dependency]) < cap
                and (not options or options.get(dependency) == options.get(key))
            ):
                members.extend(groups.pop(dependency))
            else:
                absorbed_all = False
        members.append(key)
        groups[key] = members
        if absorbed_all:
            closed.add(key)
    tasks: dict = {}
    for root, members in groups.items():
        if len(members) == 1:
            tasks[root] = nodes[root]
            continue
        inside = set(members)
        outside = {d for m in members for d in nodes[m].dependencies if d not in inside}
        tasks[root] = FusedNodes(tuple(nodes[m] for m in members), frozenset(outside))
    return tasks

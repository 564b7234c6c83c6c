"""Memory-aware schedules: a DFS scheduler and a list scheduler, keeping whichever peaks lowest.

The pair is XLA's (``DFSMemoryScheduler`` and ``ListMemoryScheduler``): neither wins on every
graph, so both run and the order with the lowest arena lower bound is kept -- the graph's own
order included, so choosing never raises the bound.

- DFS: a post-order walk from the graph's sinks that visits an op's inputs largest-subgraph
  first (bytes produced by all its ancestors), so big subcomputations finish, and their
  temporaries die, before small ones start.
- List: among the ops whose inputs are ready, run the one that frees the most bytes net of what
  it allocates (ties: the graph's order).
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Sequence

import numpy as np

from llmc.passes.memory.liveness import ACTIVATION, MemoryGraph, liveness

# Ancestor sets are kept as a bool matrix up to this many ops (n^2 bytes); beyond it, an op's
# subgraph size is approximated by its largest input's.
_EXACT_ANCESTORS_MAX_OPS = 6000


@dataclasses.dataclass(frozen=True)
class Choice:
    order: list[int]
    scheduler: str  # "graph" (the graph's own order), "dfs" or "list"
    lower_bounds: dict[str, list[int]]  # per scheduler, per graph (shape set)


def choose_order(graphs: Sequence[MemoryGraph], alignment: int) -> Choice:
    """The schedule with the lowest lower bound, over ``graphs`` (one per shape set, same ops).

    A candidate must not raise the bound of any shape set over the graph's own order; among those,
    the one with the lowest worst-case ratio to the graph's order wins, ties going to the graph.
    """
    first = graphs[0]
    candidates = {
        "graph": list(range(len(first.ops))),
        "dfs": dfs_order(first),
        "list": list_order(first),
    }
    bounds = {
        name: [liveness(g, order, alignment).lower_bound() for g in graphs]
        for name, order in candidates.items()
    }
    base = bounds["graph"]

    def score(name: str) -> float:
        return max((b / a if a else 1.0) for a, b in zip(base, bounds[name], strict=True))

    best = "graph"
    for name in ("dfs", "list"):
        if all(b <= a for a, b in zip(base, bounds[name], strict=True)) and score(name) < score(best):
            best = name
    return Choice(candidates[best], best, bounds)


def dfs_order(graph: MemoryGraph) -> list[int]:
    """Post-order DFS from the sinks, inputs with the largest ancestor bytes first."""
    preds = graph.predecessors()
    weight = _subgraph_bytes(graph, preds)
    n = len(graph.ops)
    users = np.zeros(n, dtype=np.int64)
    for p in preds:
        for q in p:
            users[q] += 1
    sinks = [i for i in range(n) if users[i] == 0]
    done = np.zeros(n, dtype=bool)
    order: list[int] = []
    for sink in sinks:
        if done[sink]:
            continue
        stack = [(sink, False)]
        while stack:
            op, expanded = stack.pop()
            if done[op]:
                continue
            if expanded:
                done[op] = True
                order.append(op)
                continue
            stack.append((op, True))
            # Pushed in reverse so that the heaviest input is popped (visited) first.
            todo = sorted((q for q in preds[op] if not done[q]), key=lambda q: (-weight[q], q))
            stack.extend((q, False) for q in reversed(todo))
    return order


def _subgraph_bytes(graph: MemoryGraph, preds: list[list[int]]) -> np.ndarray:
    """Bytes produced by each op and all its ancestors."""
    n = len(graph.ops)
    own = np.array(
        [sum(graph.tensors[t].nbytes for t in op.outputs) for op in graph.ops], dtype=np.float64
    )
    if n <= _EXACT_ANCESTORS_MAX_OPS:
        ancestors = np.zeros((n, n), dtype=bool)
        for i in range(n):  # ops are in topological order
            ancestors[i, i] = True
            for p in preds[i]:
                ancestors[i] |= ancestors[p]
        return ancestors.astype(np.float64) @ own
    weight = own.copy()
    for i in range(n):
        if preds[i]:
            weight[i] += max(weight[p] for p in preds[i])
    return weight


def list_order(graph: MemoryGraph) -> list[int]:
    """Greedy list schedule: most bytes freed minus bytes allocated first, then graph order.

    Priorities live in a heap; an op's priority only rises, when it becomes the last user of a
    buffer, and it is then pushed again (stale entries are skipped).
    """
    n = len(graph.ops)
    preds = graph.predecessors()
    waiting = [len(p) for p in preds]
    successors: list[list[int]] = [[] for _ in range(n)]
    for i, p in enumerate(preds):
        for q in p:
            successors[q].append(i)
    arena = graph.buffer_kind == ACTIVATION
    size = [int(v) if a else 0 for v, a in zip(graph.buffer_bytes, arena, strict=True)]
    touched: list[list[int]] = []  # buffers each op reads or creates
    new: list[list[int]] = []  # buffers each op creates (a view's output shares its input's)
    users: list[list[int]] = [[] for _ in graph.buffer_root]
    for i, op in enumerate(graph.ops):
        ins = {int(graph.buffer_of[t]) for t in op.inputs}
        created = sorted({int(graph.buffer_of[t]) for t in op.outputs} - ins)
        touched.append(sorted(ins | set(created)))
        new.append(created)
        for b in touched[-1]:
            users[b].append(i)
    users_left = [len(u) for u in users]
    done = [False] * n

    def priority(i: int) -> int:
        freed = sum(size[b] for b in touched[i] if users_left[b] == 1)
        return freed - sum(size[b] for b in new[i])

    current = {i: priority(i) for i in range(n) if waiting[i] == 0}
    heap = [(-p, i) for i, p in current.items()]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        neg, i = heapq.heappop(heap)
        if done[i] or current.get(i) != -neg:
            continue
        done[i] = True
        order.append(i)
        for b in touched[i]:
            users_left[b] -= 1
            if users_left[b] == 1:
                (j,) = [u for u in users[b] if not done[u]]
                if waiting[j] == 0:
                    current[j] = priority(j)
                    heapq.heappush(heap, (-current[j], j))
        for s in successors[i]:
            waiting[s] -= 1
            if waiting[s] == 0:
                current[s] = priority(s)
                heapq.heappush(heap, (-current[s], s))
    if len(order) != n:
        raise ValueError("the graph has a cycle")
    return order

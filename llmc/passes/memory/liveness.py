"""Liveness of tensors over a schedule: buffers, live intervals, the lower bound, in-place candidates.

The analysis works on a :class:`MemoryGraph` -- ops and tensors with byte sizes, no ONNX -- so
that the arena planner, the schedulers and the property tests share one model of memory:

- A *buffer* is one allocation. View ops (Reshape, Squeeze, Unsqueeze, Flatten, Identity: ONNX
  Runtime aliases their output to their input on CPU) put their output in their input's buffer,
  which then lives until the last use of any of its tensors.
- Buffers rooted at a graph input or a weight, or holding a graph output, are *external*: they are
  accounted separately and are not placed in the activation arena.
- Under a schedule (a topological order of the ops), an activation buffer lives from the step of
  its producer to the step of its last user, inclusive: an op's inputs and outputs are live
  together while it runs.
- The lower bound of any arena for that schedule is the largest sum of (aligned) sizes of the
  buffers live at one step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

ACTIVATION, INPUT, OUTPUT, WEIGHT = "activation", "input", "output", "weight"
DEFAULT_ALIGNMENT = 64


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: str
    nbytes: int
    kind: str = ACTIVATION  # INPUT and WEIGHT tensors have no producer; OUTPUT is a graph output


@dataclasses.dataclass(frozen=True)
class Op:
    name: str
    op_type: str
    inputs: tuple[int, ...]  # tensor ids
    outputs: tuple[int, ...]
    view: bool = False  # output 0 aliases input 0 (same bytes)
    elementwise: bool = False  # output 0 may overwrite an input of the same size that dies here


class MemoryGraph:
    """Ops in their given (topological) order, tensors, and the buffers that hold them."""

    def __init__(self, tensors: Sequence[Tensor], ops: Sequence[Op]) -> None:
        self.tensors = list(tensors)
        self.ops = list(ops)
        n = len(self.tensors)
        self.producer = np.full(n, -1, dtype=np.int64)
        self.consumers: list[list[int]] = [[] for _ in range(n)]
        for i, op in enumerate(self.ops):
            for t in op.outputs:
                if self.producer[t] >= 0:
                    raise ValueError(f"tensor {self.tensors[t].name!r} has two producers")
                self.producer[t] = i
            for t in set(op.inputs):
                self.consumers[t].append(i)
        self._build_buffers()

    def _build_buffers(self) -> None:
        root = list(range(len(self.tensors)))
        for op in self.ops:
            if op.view and op.inputs and op.outputs:
                src, dst = op.inputs[0], op.outputs[0]
                if self.tensors[src].nbytes == self.tensors[dst].nbytes:
                    root[dst] = root[src]  # ops are topological: src's root is final
        roots = sorted(set(root))
        index = {r: i for i, r in enumerate(roots)}
        self.buffer_of = np.array([index[r] for r in root], dtype=np.int64)
        self.buffer_root = np.array(roots, dtype=np.int64)
        self.buffer_members: list[list[int]] = [[] for _ in roots]
        for t, b in enumerate(self.buffer_of):
            self.buffer_members[b].append(t)
        kinds = []
        for r, members in zip(roots, self.buffer_members, strict=True):
            kind = self.tensors[r].kind
            if kind == ACTIVATION and any(self.tensors[m].kind == OUTPUT for m in members):
                kind = OUTPUT
            kinds.append(kind)
        self.buffer_kind = np.array(kinds)
        self.buffer_bytes = np.array([self.tensors[r].nbytes for r in roots], dtype=np.int64)
        # Ops that touch each buffer (produce or read one of its tensors): its live interval's ends.
        users_b, users_op = [], []
        for i, op in enumerate(self.ops):
            for t in set(op.inputs) | set(op.outputs):
                users_b.append(self.buffer_of[t])
                users_op.append(i)
        self._users_b = np.array(users_b, dtype=np.int64)
        self._users_op = np.array(users_op, dtype=np.int64)

    @property
    def arena_buffers(self) -> np.ndarray:
        """Indices of the buffers the activation arena holds."""
        return np.flatnonzero((self.buffer_kind == ACTIVATION) & (self.buffer_bytes > 0))

    def bytes_of(self, kind: str) -> int:
        return int(self.buffer_bytes[self.buffer_kind == kind].sum())

    def predecessors(self) -> list[list[int]]:
        """Producer ops of each op's inputs (distinct, in input order)."""
        preds = []
        for op in self.ops:
            seen: dict[int, None] = {}
            for t in op.inputs:
                p = int(self.producer[t])
                if p >= 0:
                    seen[p] = None
            preds.append(list(seen))
        return preds

    def check_order(self, order: Sequence[int]) -> None:
        """Raise ValueError unless ``order`` is a permutation of the ops that respects data flow."""
        if sorted(order) != list(range(len(self.ops))):
            raise ValueError("the order is not a permutation of the ops")
        step = np.empty(len(self.ops), dtype=np.int64)
        step[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
        for i, preds in enumerate(self.predecessors()):
            if any(step[p] >= step[i] for p in preds):
                raise ValueError(f"op {self.ops[i].name!r} runs before one of its producers")


@dataclasses.dataclass
class Liveness:
    """Live intervals of a graph's buffers under one schedule."""

    graph: MemoryGraph
    order: np.ndarray  # op index per step
    start: np.ndarray  # per buffer: first step (external buffers: 0)
    end: np.ndarray  # per buffer: last step, inclusive (external buffers: last step)
    alignment: int

    @property
    def steps(self) -> int:
        return len(self.order)

    def aligned_bytes(self) -> np.ndarray:
        return align(self.graph.buffer_bytes, self.alignment)

    def live_bytes(self, buffers: np.ndarray | None = None) -> np.ndarray:
        """Aligned bytes of the given buffers (default: the arena's) live at each step."""
        buffers = self.graph.arena_buffers if buffers is None else buffers
        curve = np.zeros(self.steps + 1, dtype=np.int64)
        sizes = self.aligned_bytes()[buffers]
        np.add.at(curve, self.start[buffers], sizes)
        np.add.at(curve, self.end[buffers] + 1, -sizes)
        return np.cumsum(curve[:-1])

    def lower_bound(self) -> int:
        curve = self.live_bytes()
        return int(curve.max()) if len(curve) else 0

    def peak_step(self) -> int:
        curve = self.live_bytes()
        return int(curve.argmax()) if len(curve) else 0

    def live_at(self, step: int) -> np.ndarray:
        """Arena buffers live at ``step``, largest first."""
        b = self.graph.arena_buffers
        live = b[(self.start[b] <= step) & (self.end[b] >= step)]
        return live[np.argsort(-self.graph.buffer_bytes[live], kind="stable")]


def align(nbytes: np.ndarray | int, alignment: int) -> np.ndarray:
    if alignment < 1:
        raise ValueError("alignment must be at least 1 byte")
    return (np.asarray(nbytes, dtype=np.int64) + alignment - 1) // alignment * alignment


def liveness(graph: MemoryGraph, order: Sequence[int] | None = None, alignment: int = DEFAULT_ALIGNMENT) -> Liveness:
    """Buffer live intervals when the ops run in ``order`` (default: the graph's own order)."""
    n_ops = len(graph.ops)
    order_arr = np.arange(n_ops, dtype=np.int64) if order is None else np.asarray(order, dtype=np.int64)
    step = np.empty(n_ops, dtype=np.int64)
    step[order_arr] = np.arange(n_ops, dtype=np.int64)
    n_buf = len(graph.buffer_root)
    last = max(n_ops - 1, 0)
    start = np.full(n_buf, last, dtype=np.int64)
    end = np.zeros(n_buf, dtype=np.int64)
    if len(graph._users_b):
        user_steps = step[graph._users_op]
        np.minimum.at(start, graph._users_b, user_steps)
        np.maximum.at(end, graph._users_b, user_steps)
    external = graph.buffer_kind != ACTIVATION
    start[external] = 0
    end[external] = last
    untouched = start > end  # a buffer no op touches (an unused input)
    start[untouched] = end[untouched] = 0
    # An output buffer lives from its producer to the end; keep its real start for the picture.
    outputs = np.flatnonzero(graph.buffer_kind == OUTPUT)
    if len(outputs) and len(graph._users_b):
        first = np.full(n_buf, last, dtype=np.int64)
        np.minimum.at(first, graph._users_b, step[graph._users_op])
        start[outputs] = first[outputs]
    return Liveness(graph, order_arr, start, end, alignment)


@dataclasses.dataclass(frozen=True)
class InPlace:
    op: int
    input: int  # tensor id whose buffer the output may take over
    output: int
    nbytes: int


def inplace_candidates(live: Liveness) -> list[InPlace]:
    """Elementwise ops whose same-sized activation input dies at that op (its last user)."""
    graph = live.graph
    step = np.empty(live.steps, dtype=np.int64)
    step[live.order] = np.arange(live.steps)
    found = []
    for i, op in enumerate(graph.ops):
        if not op.elementwise or not op.outputs or op.view:
            continue
        out = op.outputs[0]
        if graph.buffer_kind[graph.buffer_of[out]] != ACTIVATION:
            continue
        for t in dict.fromkeys(op.inputs):
            b = graph.buffer_of[t]
            if (
                graph.buffer_kind[b] == ACTIVATION
                and graph.tensors[t].nbytes == graph.tensors[out].nbytes > 0
                and live.end[b] == step[i]
                and op.inputs.count(t) == 1
            ):
                found.append(InPlace(i, t, out, graph.tensors[out].nbytes))
                break
    return found


def with_inplace(graph: MemoryGraph, candidates: Sequence[InPlace]) -> MemoryGraph:
    """The graph with each candidate's output sharing its dying input's buffer."""
    ops = list(graph.ops)
    for c in candidates:
        op = ops[c.op]
        rest = tuple(t for t in op.inputs if t != c.input)
        ops[c.op] = dataclasses.replace(op, inputs=(c.input, *rest), view=True)
    return MemoryGraph(graph.tensors, ops)

"""Per-node int4 settings chosen by measurement: ``--block-size auto`` / ``--accuracy-level auto``.

Every int4 group (the MatMuls of one activation that run as one MatMulNBits) is measured at each
candidate setting: block sizes 32, 64 and 128 that divide its K (or the build's one), accuracy
level 0 (float32 activations) and 4 (int8 activations) (or the build's one):

* error: the relative error of the group's output on the model's own activations (captured from
  the fp32 graph on the gate's first windows), weights through the block minimum/range quantizer
  (the fallback's proxy for every method) and, at level 4, activations through int8 blocks as
  ONNX Runtime's kernels quantize them (per row and block, scale ``max|x| / 127``);
* time: the graph the build writes for that group (offsets included) on one token, in ONNX
  Runtime on this machine, median of runs, once per distinct shape and setting.

The choice is the fastest candidate whose error is within ``TOLERANCE`` of the most accurate
candidate's. On weights that already sit on a block-32 grid (a Q4_1 GGUF) the block-32, level-0
error is float rounding, so nothing else qualifies; elsewhere int8 activations add little to the
weights' own 4-bit error and are taken where they measure faster. The gate still judges the
whole graph, and its fallback still moves nodes to level 0 and to int8.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir

from llmc.runtime.ort import OrtRunner, SessionConfig, create_session
from llmc.runtime.timing import median_ms
from llmc.weight_only.blocks import q4_minmax
from llmc.weight_only.gate import Runner
from llmc.weight_only.kernel import use_kernels
from llmc.weight_only.options import AUTO, Int4Options
from llmc.weight_only.quantize import (
    Settings,
    head_nodes,
    node_name,
    node_precisions,
    packable_groups,
    quantize_model,
)

TOLERANCE = 0.10  # a candidate's output error may exceed the most accurate one's by 10%
BLOCKS = (32, 64, 128)
LEVELS = (0, 4)
ROWS = 256  # activation rows per group the errors are measured on
RUNS = 40


@dataclasses.dataclass
class Measured:
    block: int
    level: int
    error: float
    microseconds: float


def candidates(k: int, options: Int4Options) -> list[tuple[int, int]]:
    blocks = [b for b in BLOCKS if k % b == 0] if options.block_size == AUTO else [options.block]
    levels = list(LEVELS) if options.accuracy_level == AUTO else [options.level]
    return [(block, level) for block in blocks for level in levels]


def int8_blocks(x: np.ndarray, block: int) -> np.ndarray:
    """``x`` (rows, K) as accuracy level 4 computes with it: int8 per row and block of ``block``."""
    rows, k = x.shape
    blocks = x.reshape(rows, k // block, block)
    scale = np.abs(blocks).max(axis=-1, keepdims=True) / 127.0
    safe = np.where(scale > 0, scale, 1.0)
    return (np.clip(np.rint(blocks / safe), -127, 127) * scale).reshape(rows, k).astype(np.float32)


def output_error(x: np.ndarray, kn: np.ndarray, block: int, level: int) -> float:
    """Relative error of ``x @ kn`` through 4-bit blocks (and int8 activations at level 4)."""
    reference = x.astype(np.float64) @ kn.astype(np.float64)
    blocks = q4_minmax(kn, block)
    weights = blocks.dequantize().astype(np.float64)
    if level == 4:  # int8 activations reach the symmetric kernel; the offsets' block sums stay float
        symmetric = dataclasses.replace(blocks, offsets=None).dequantize().astype(np.float64)
        got = int8_blocks(x, block).astype(np.float64) @ symmetric + x.astype(np.float64) @ (
            weights - symmetric
        )
    else:
        got = x.astype(np.float64) @ weights
    return float(np.linalg.norm(got - reference) / max(float(np.linalg.norm(reference)), 1e-30))


class Timer:
    """Decode-step time of one group's quantized graph, per (K, N, block, level), cached; with
    ``kernel``, the graph as the build writes it onto llmc's 4-bit kernel (level 0 and 1 nodes)."""

    def __init__(self, options: Int4Options, kernel: bool = False) -> None:
        self.options = options
        self.kernel = kernel
        self._seen: dict[tuple[int, int, int, int], float] = {}

    def __call__(self, k: int, n: int, block: int, level: int) -> float:
        key = (k, n, block, level)
        if key not in self._seen:
            self._seen[key] = self._measure(k, n, block, level)
        return self._seen[key]

    def _measure(self, k: int, n: int, block: int, level: int) -> float:
        weight = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
        graph = oh.make_graph(
            [oh.make_node("MatMul", ["x", "w"], ["y"], name="matmul")],
            "one_group",
            [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, k])],
            [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, n])],
            [onnx.numpy_helper.from_array(weight, "w")],
        )
        model = ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]))
        setting = dataclasses.replace(self.options, block_size=block, accuracy_level=level, embedding="float")
        quantize_model(model, setting)
        if self.kernel:
            use_kernels(model)
        runner = OrtRunner(
            create_session(ir.serde.serialize_model(model).SerializeToString(), SessionConfig())
        )
        feeds = {"x": np.random.default_rng(1).standard_normal((1, k)).astype(np.float32)}
        ms = median_ms({"group": lambda: runner.run(feeds)}, rounds=1, runs=RUNS, warmup=5, per_call=True)
        return ms["group"] * 1e3


def capture(model: ir.Model, feeds: list[dict[str, np.ndarray]], names: set[str]) -> dict[str, np.ndarray]:
    """The values ``names`` of the fp32 graph on ``feeds``, each as (rows, last dim), at most ``ROWS`` rows."""
    clone = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    values = {v.name: v for v in clone.graph.inputs}
    values.update({v.name: v for node in clone.graph for v in node.outputs})
    present = {v.name for v in clone.graph.outputs}
    clone.graph.outputs.extend(
        values[name] for name in sorted(names) if name not in present and name in values
    )
    run = Runner(clone)
    found: dict[str, list[np.ndarray]] = {}
    for feed in feeds:
        outputs = run(feed)
        for name in names:
            if name in outputs:
                array = np.asarray(outputs[name], np.float32)
                found.setdefault(name, []).append(array.reshape(-1, array.shape[-1]))
    result = {}
    for name, arrays in found.items():
        rows = np.concatenate(arrays)
        pick = np.linspace(0, len(rows) - 1, min(ROWS, len(rows))).astype(int)
        result[name] = rows[pick]
    return result


def choose_settings(
    model: ir.Model, feeds: list[dict[str, np.ndarray]], options: Int4Options, log: Callable[[str], None],
    kernel: bool = False,
) -> tuple[Settings, dict[str, Any]]:
    """Each int4 node's (block size, accuracy level) and the manifest's record of the measurements;
    ``kernel``: float32 settings timed on llmc's 4-bit kernel, which the build will run them on."""
    precisions = node_precisions(model, options)
    pack = options.pack and model.opset_imports.get("", 0) >= 13
    groups = [
        g
        for g in packable_groups(model, precisions, head_nodes(model), options, {}, pack, {})
        if g[0].precision == "int4"
    ]
    log(f"int4: measuring {len(groups)} group(s) at every candidate block size / accuracy level")
    activations = capture(model, feeds, {g[0].node.inputs[0].name for g in groups})
    timer = Timer(options, kernel)
    settings: Settings = {}
    record = []
    for group in groups:
        kn = group[0].kn if len(group) == 1 else np.concatenate([item.kn for item in group], axis=1)
        k, n = (int(d) for d in kn.shape)
        x = activations.get(group[0].node.inputs[0].name)
        if (
            x is None
        ):  # not reached by the feeds (a branch they do not take): measure on none, keep the default
            continue
        measured = [
            Measured(block, level, output_error(x, kn, block, level), timer(k, n, block, level))
            for block, level in candidates(k, options)
        ]
        best = min(m.error for m in measured)
        eligible = [m for m in measured if m.error <= best * (1 + TOLERANCE) + 1e-7]
        chosen = min(eligible, key=lambda m: m.microseconds)
        names = [node_name(item.node) for item in group]
        settings.update({name: (chosen.block, chosen.level) for name in names})
        record.append(
            {
                "nodes": names,
                "K": k,
                "N": n,
                "chosen": [chosen.block, chosen.level],
                "candidates": [
                    [m.block, m.level, round(m.error, 6), round(m.microseconds, 1)] for m in measured
                ],
            }
        )
    return settings, {
        "tolerance": TOLERANCE,
        "columns": ["block_size", "accuracy_level", "error", "us"],
        "groups": record,
    }

"""Benchmark anchors: reference points that put llmc's latencies in context.

- **ONNX Runtime's transformers optimizer** (:func:`transformers_optimizer`): the hand-written
  Python fusions ORT ships for BERT-style models (``onnxruntime.transformers.optimizer``), the
  usual "what an expert would do offline" baseline. The optimized model is saved and then timed
  like any other model, in an ORT_ENABLE_ALL session. When the optimizer itself crashes on an
  export the failure is an :class:`AnchorFailed` with a one-line reason, for the results table.
  :func:`fused_op_counts` says which contrib (``com.microsoft``) ops it produced.
- **Torch eager** (:func:`torch_eager_target`): the Hugging Face module itself, called under
  ``torch.inference_mode()`` with the same intra-op thread count, timed interleaved with the ORT
  targets by :func:`llmc.runtime.bench.run_benchmark` (no peak RSS for it).
- **The machine's MatMul peak** (:func:`matmul_peak_gflops`): fp32 GFLOP/s of a one-node MatMul
  with a constant weight (as in a transformer layer) in ORT_ENABLE_ALL at a few transformer
  shapes, median of many runs, in-process. With :func:`matmul_flops` (the FLOPs of every
  MatMul/Gemm of a model at concrete inputs, shapes taken from an actual ORT run) it gives a
  roofline-style floor: ``matmul_flops / peak`` is the latency if every matmul ran at peak and
  everything else were free.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.inliner
import onnx.numpy_helper as onh

from llmc.runtime.bench import BenchModel
from llmc.runtime.ort import OrtRunner, SessionConfig, create_session

CONTRIB_DOMAIN = "com.microsoft"


class AnchorFailed(Exception):
    """An anchor could not be produced; ``reason`` is one line for the results table."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _one_line(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


# --- ONNX Runtime's transformers optimizer ------------------------------------------------------


def transformers_optimizer(
    src: Path, dst: Path, *, model_type: str, num_heads: int, hidden_size: int
) -> Path:
    """``onnxruntime.transformers.optimizer.optimize_model`` for CPU on ``src``, saved to ``dst``.

    Cached: nothing is done when ``dst`` exists and is newer than ``src``. Raises
    :class:`AnchorFailed` when the optimizer raises (e.g. IndexError in onnx_model_gpt2.py on a
    GPT-2 dynamo export, whose Gemm has no bias).
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.stat().st_mtime > src.stat().st_mtime:
        return dst
    from onnxruntime.transformers.optimizer import optimize_model

    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        # opt_level=1 (ORT_ENABLE_BASIC before the Python fusions; also optimize_model's own
        # default for "bert"/"gpt2"): basic rewrites are hardware-independent, so they are safe
        # to save offline, while extended/layout ones (levels 2/99) are tied to an execution
        # provider and hardware (ORT's graph-optimization docs; optimize_model's docstring
        # warns about it for opt_level > 1) and would also disable some ORT fusions
        # (MatMulScaleFusion, ...) for good. The saved model is then loaded, like every target
        # here, in an ORT_ENABLE_ALL session, which applies the extended and layout levels for
        # this machine at load time.
        optimized = optimize_model(
            str(src),
            model_type=model_type,
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=1,
            use_gpu=False,
        )
        tmp = dst.with_name(dst.name + ".tmp")
        optimized.save_model_to_file(str(tmp))
        tmp.replace(dst)
    except Exception as exc:  # the optimizer's own bugs: IndexError, AssertionError, KeyError...
        raise AnchorFailed(_one_line(exc)) from exc
    return dst


def fused_op_counts(path: Path) -> dict[str, int]:
    """How many nodes of each ``com.microsoft`` (ORT contrib) op type the model has."""
    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.domain == CONTRIB_DOMAIN:
                counts[node.op_type] = counts.get(node.op_type, 0) + 1
    for function in model.functions:
        for node in function.node:
            if node.domain == CONTRIB_DOMAIN:
                counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


# --- Torch eager --------------------------------------------------------------------------------


def torch_eager_target(
    label: str, model: Any, input_names: list[str] | tuple[str, ...], threads: int, positional: bool = False
) -> BenchModel:
    """A bench target calling the torch (Hugging Face) ``model`` in eager mode.

    The feeds named ``input_names`` are converted to tensors without a copy and passed by keyword
    (or in that order when ``positional``, for wrappers such as the decoder-with-cache module);
    ``torch.set_num_threads(threads)`` is applied when the runner is made (0 keeps torch's default).
    """

    def make_runner():
        import torch

        if threads:
            torch.set_num_threads(threads)
        module = model.eval()
        names = tuple(input_names)

        def run(feeds: dict[str, np.ndarray]) -> Any:
            tensors = {name: torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in names}
            with torch.inference_mode():
                if positional:
                    return module(*(tensors[name] for name in names))
                return module(**tensors)

        return run

    return BenchModel(label, make_runner=make_runner)


# --- MatMul peak and model FLOPs ----------------------------------------------------------------

# (M, K, N): activations [M, K] x constant weight [K, N], e.g. 128 tokens through a BERT-base
# projection / FFN up-projection, 1024 tokens (batch 8 x 128), and a square 1024 case.
PEAK_SHAPES = ((128, 768, 768), (128, 768, 3072), (1024, 768, 3072), (1024, 1024, 1024))


def matmul_peak_gflops(
    threads: int = 2, shapes=PEAK_SHAPES, rounds: int = 5, runs: int = 20, pause_s: float = 0.05
) -> dict[str, Any]:
    """This machine's fp32 MatMul throughput in ONNX Runtime (ORT_ENABLE_ALL, ``threads``).

    Returns ``{"threads": T, "shapes": {"[MxK]x[KxN]": GFLOP/s, ...}, "peak": max GFLOP/s}``.
    The shapes are timed round-robin, ``rounds`` times ``runs`` timed runs each (after a pause
    and one untimed run, as in :func:`run_benchmark`); each figure is ``2*M*K*N`` over the
    median of one round's runs, the best round kept: a capability, so the rounds in which
    another process held the (shared, 2-core) machine are discarded, not averaged in.
    """
    config = SessionConfig(graph_optimization_level="all", intra_op_num_threads=threads)
    rng = np.random.default_rng(0)
    cases = []
    for m, k, n in shapes:
        model = _matmul_model(k, n, rng.standard_normal((k, n), dtype=np.float32))
        runner = OrtRunner(create_session(model.SerializeToString(), config))
        feeds = {"a": rng.standard_normal((m, k), dtype=np.float32)}
        runner.run(feeds)
        cases.append((f"[{m}x{k}]x[{k}x{n}]", 2.0 * m * k * n, runner, feeds))
    best = dict.fromkeys((label for label, *_ in cases), 0.0)
    for _ in range(rounds):
        for label, flops, runner, feeds in cases:
            time.sleep(pause_s)  # let the previous session's spinning threads park
            runner.run(feeds)
            samples = []
            for _ in range(runs):
                start = time.perf_counter()
                runner.run(feeds)
                samples.append(time.perf_counter() - start)
            best[label] = max(best[label], flops / float(np.median(samples)) / 1e9)
    return {"threads": threads, "shapes": best, "peak": max(best.values())}


def _matmul_model(k: int, n: int, weight: np.ndarray) -> onnx.ModelProto:
    a = oh.make_tensor_value_info("a", onnx.TensorProto.FLOAT, ["m", k])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["m", n])
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["a", "w"], ["y"])], "matmul", [a], [y], [onh.from_array(weight, "w")]
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=10)


def matmul_flops(model_path: Path, feeds: dict[str, np.ndarray]) -> float:
    """FLOPs (``2*M*N*K``, batch dimensions counted fully) of all MatMul/Gemm nodes at ``feeds``.

    Shapes come from running the model once in ORT_DISABLE_ALL with every MatMul/Gemm input
    exposed as an extra graph output (export graphs compute Reshape targets at run time, which
    static shape inference cannot follow); initializer shapes are read from the model. External
    data is not loaded: the session reads it from the model's folder.
    """
    model_path = Path(model_path)
    model = onnx.load(str(model_path), load_external_data=False)
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    graph = model.graph
    static = {t.name: tuple(t.dims) for t in graph.initializer}
    nodes = [n for n in graph.node if n.domain in ("", "ai.onnx") and n.op_type in ("MatMul", "Gemm")]
    if not nodes:
        return 0.0
    wanted = []
    for node in nodes:
        for name in node.input[:2]:
            if name not in static and name not in feeds and name not in wanted:
                wanted.append(name)
    existing = {o.name for o in graph.output}
    graph.output.extend(oh.make_empty_tensor_value_info(name) for name in wanted if name not in existing)
    config = SessionConfig(graph_optimization_level="disable", intra_op_num_threads=2)
    options = config.session_options()
    options.add_session_config_entry(
        "session.model_external_initializers_file_folder_path", str(model_path.resolve().parent)
    )
    import onnxruntime as ort

    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=config.providers()
    )
    inputs = {i.name for i in session.get_inputs()}
    outputs = session.run(wanted, {k: v for k, v in feeds.items() if k in inputs}) if wanted else []
    shapes = dict(static)
    shapes.update({name: tuple(np.shape(v)) for name, v in feeds.items()})
    shapes.update({name: tuple(v.shape) for name, v in zip(wanted, outputs, strict=True)})
    return float(sum(_node_flops(node, shapes) for node in nodes))


def _node_flops(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    a, b = shapes[node.input[0]], shapes[node.input[1]]
    if node.op_type == "Gemm":
        attrs = {attr.name: oh.get_attribute_value(attr) for attr in node.attribute}
        m, k = (a[1], a[0]) if attrs.get("transA", 0) else a
        n = b[0] if attrs.get("transB", 0) else b[1]
        return 2 * m * n * k
    # MatMul, numpy semantics: a 1-D operand gets a unit dimension, batch dimensions broadcast.
    if len(a) == 1:
        a = (1, *a)
    if len(b) == 1:
        b = (*b, 1)
    batch = np.broadcast_shapes(a[:-2], b[:-2])
    return 2 * int(np.prod(batch, dtype=np.int64)) * a[-2] * a[-1] * b[-1]

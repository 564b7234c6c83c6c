"""INT8 post-training quantization of a compiled fp32 graph, with an accuracy budget.

Steps (``quantize_model``):

1. **Targets**: linear layers with constant weights (``linear.py``); output
   heads, tiny layers and ``--exclude-*`` matches stay float with their reason.
2. **Calibration** (streaming): the fp32 graph runs in ONNX Runtime with every linear node's input
   exposed, a batch at a time (the batch sized to a memory budget); each batch updates a
   constant-size :class:`TensorStats` per tensor and is dropped. Statistics are saved as JSON and
   reused when the model and the samples are the same.
3. **Per-node configuration**: on a few probe samples, each linear node's output error (noise ratio
   against x @ W in float) is measured in numpy for every candidate: SmoothQuant alpha in
   ``ALPHAS`` and, for ``ort``, dynamic or static activations. Smoothing (a Mul at run time) is
   taken only when it cuts the error below ``SMOOTH_GAIN`` times the best unsmoothed error; the
   chosen candidate's error is the node's sensitivity.
4. **Accuracy budget**: the quantized model runs on held-out samples; while the mean cosine to
   the fp32 outputs is below ``1 - max_accuracy_loss``, the most sensitive quantized node falls
   back to float, one at a time. The report names every fallback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from llmc.errors import LlmcError
from llmc.int8.linear import LinearNode, apply_exclusions, find_linear
from llmc.int8.numerics import (
    fake_dynamic_uint8,
    fake_int8,
    fake_uint8,
    fake_weight,
    int8_params,
    noise_ratio,
    uint8_params,
)
from llmc.int8.options import DEFAULT_MEMORY_BUDGET, QuantizeOptions  # noqa: F401  (re-exported)
from llmc.int8.rewrite import NodeConfig, quantize_ort, quantize_trt
from llmc.int8.stats import TensorStats
from llmc.model import io as model_io
from llmc.model.compare import cosine
from llmc.model.process import PeakRssSampler
from llmc.spec.target import QdqRules, Target

ALPHAS: tuple[float | None, ...] = (None, 0.5, 0.65, 0.8)
STATS_VERSION = 1
PROBE_SAMPLES = 4
PROBE_ROWS = 32  # output rows per probe sample whose error is measured
SMOOTH_GAIN = 0.8  # smoothing must reach <= 0.8x the best unsmoothed error to be worth its Mul
PROBE_COLUMNS = 256  # output channels whose error is measured (weights are per channel: exact)
MAX_BATCH = 32
Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class QuantizeResult:
    model: ir.Model
    report: dict[str, Any]
    accuracy: HoldoutBudget  # the budget, for the graph the target makes of ``model`` (TensorRT: float16)


def quantize_model(
    model: ir.Model,
    target: Target,
    samples: list[dict[str, np.ndarray]],
    options: QuantizeOptions,
    *,
    stats_path: Path | None = None,
    progress: Progress | None = None,
) -> QuantizeResult:
    """INT8 copy of the compiled fp32 ``model`` written by ``target``'s Q/DQ rules, within the
    accuracy budget."""
    progress = progress or (lambda _stage, _done, _total: None)
    calibration, holdout = split_samples(samples, options)
    linear = find_linear(model, target.qdq)
    apply_exclusions(linear, list(options.exclude_nodes), list(options.exclude_op_types))
    if not linear:
        raise LlmcError("--precision int8: the model has no MatMul/Gemm with a constant weight to quantize")
    chosen = [i for i, t in enumerate(linear) if t.float_reason is None]

    start = time.perf_counter()
    with PeakRssSampler() as rss:
        names = sorted({linear[i].activation.name for i in chosen})
        # One fp32 session serves the statistics, the probe activations and the held-out reference.
        # No arena: a calibration batch's buffers are freed after it, not kept for the next one.
        capture = _Capture(model, names, options.threads, arena=False)
        stats, probes, reused = _statistics(model, capture, names, calibration, options, stats_path, progress)
        configs, sensitivity, candidates = _choose_configs(linear, chosen, stats, probes, target.qdq, options)
        del probes
        model_io.release_freed_memory()
        calibration_seconds = time.perf_counter() - start

        start = time.perf_counter()
        reference = _Reference(capture, holdout, options.memory_budget)
        fallbacks, quantized, cosines = _budget(model, target.qdq, linear, configs, sensitivity, reference, holdout, options, progress)
        padding = _padding_skipped(quantized, reference, holdout, options) if cosines is not None else None
        del capture, reference
    budget_seconds = time.perf_counter() - start

    report = {
        "method": options.method,
        "target": target.name,
        "activations": target.qdq.activations,
        "weights": "int8 symmetric per output channel",
        "samples": {"calibration": len(calibration), "holdout": len(holdout)},
        "statistics": {"reused": reused, "file": str(stats_path) if stats_path else None},
        "nodes_quantized": len(configs),
        "nodes_float": len(linear) - len(configs),
        "nodes": [_node_report(i, t, configs.get(i), sensitivity.get(i), candidates.get(i)) for i, t in enumerate(linear)],
        "fallbacks": fallbacks,
        "accuracy": _accuracy(cosines, options.max_accuracy_loss),
        **({"padding_skipped": padding} if padding is not None else {}),
        "calibration_seconds": round(calibration_seconds, 3),
        "budget_seconds": round(budget_seconds, 3),
        "peak_rss_mb": round(rss.peak_mb, 1),
    }
    if cosines is not None and not report["accuracy"]["met"]:
        raise LlmcError(
            f"--precision int8 cannot meet the accuracy budget (mean cosine {np.mean(cosines):.5f} < "
            f"{1 - options.max_accuracy_loss:.4f}) even with every node in float; raise --max-accuracy-loss"
        )
    return QuantizeResult(quantized, report, HoldoutBudget(model, holdout, options))


# -- statistics --------------------------------------------------------------------------------


def _statistics(model, capture, names, samples, options, stats_path, progress):
    """Per-tensor statistics over ``samples`` (or reused from ``stats_path``) and the captured
    activations of the first ``PROBE_SAMPLES`` samples: (stats, probes, reused)."""
    key = {"version": STATS_VERSION, "model": model_io.ir_sha256(model), "samples": _samples_digest(samples), "tensors": names}
    probes: dict[str, list[np.ndarray]] = {n: [] for n in names}
    probe_rows = min(PROBE_SAMPLES, len(samples))
    if stats_path is not None and stats_path.is_file():
        try:
            data = json.loads(stats_path.read_text())
        except (OSError, ValueError):
            data = None
        if data and data.get("key") == key:
            for sample in samples[:probe_rows]:
                outputs = capture.run(sample, names)
                for n in names:
                    probes[n].append(outputs[n])
            return {k: TensorStats.from_json(v) for k, v in data["tensors"].items()}, probes, True
    stats = {name: TensorStats() for name in names}
    done = 0
    progress("calibration", 0, len(samples))
    size = [1]  # the first batch is one row; later ones fit the memory budget
    for batch in _batches(samples, lambda: size[0]):
        outputs = capture.run(batch, names)
        rows = _rows(batch)
        if done == 0:
            per_row = max(1, sum(v.nbytes for v in outputs.values()) // rows)
            size[0] = int(np.clip(options.memory_budget // per_row, 1, MAX_BATCH))
        take = min(rows, probe_rows - done) if done < probe_rows else 0
        for name in names:
            x = outputs[name]
            if take:
                probes[name].extend(np.array(x[i : i + 1]) for i in range(take))
            stats[name].update(x, channels=True)
        done += rows
        progress("calibration", done, len(samples))
        del outputs
    if stats_path is not None:
        stats_path.parent.mkdir(parents=True, exist_ok=True)
        stats_path.write_text(json.dumps({"key": key, "tensors": {k: v.to_json() for k, v in stats.items()}}))
    return stats, probes, False


def _samples_digest(samples: list[dict[str, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for sample in samples:
        for name in sorted(sample):
            digest.update(name.encode())
            digest.update(str(sample[name].shape).encode())
            digest.update(np.ascontiguousarray(sample[name]).tobytes())
    return digest.hexdigest()


class _Capture:
    """An ORT session over a copy of the model whose extra outputs are the named tensors."""

    def __init__(self, model: ir.Model, names: list[str], threads: int, arena: bool = True, level: str = "all") -> None:
        from llmc.model.io import ort_model_source
        from llmc.runtime.ort import SessionConfig, create_session

        capture = model.clone() if names else model
        values = {v.name: v for node in capture.graph for v in node.outputs}
        values.update({v.name: v for v in capture.graph.inputs})
        self.graph_outputs = [v.name for v in capture.graph.outputs]
        for name in names:
            if name not in self.graph_outputs:
                capture.graph.outputs.append(values[name])
        config = SessionConfig(graph_optimization_level=level, intra_op_num_threads=threads, enable_cpu_mem_arena=arena)
        with ort_model_source(capture) as source:
            self.session = create_session(source, config, capture)

    def run(self, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> dict[str, np.ndarray]:
        names = names if names is not None else self.graph_outputs
        if not names:  # session.run([]) would return every output
            return {}
        return dict(zip(names, self.session.run(names, feeds), strict=True))


def _batches(samples, size: Callable[[], int]):
    """Consecutive same-shape samples concatenated, ``size()`` rows at most per batch."""
    i = 0
    while i < len(samples):
        group = [samples[i]]
        while len(group) < size() and i + len(group) < len(samples) and _same_shapes(samples[i], samples[i + len(group)]):
            group.append(samples[i + len(group)])
        yield {k: np.concatenate([s[k] for s in group]) if group[0][k].ndim else group[0][k] for k in group[0]}
        i += len(group)


def _same_shapes(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return all(a[k].shape[1:] == b[k].shape[1:] and a[k].dtype == b[k].dtype for k in a)


def _rows(batch: dict[str, np.ndarray]) -> int:
    return max((v.shape[0] for v in batch.values() if v.ndim), default=1)


# -- per-node configuration --------------------------------------------------------------------


def smooth_scale(channel_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's s_j = max|X_j|^alpha / max|W_j|^(1-alpha), clamped to stay well-conditioned.

    ``weight_absmax`` is max |W[j, :]| per input channel j."""
    x = np.maximum(channel_absmax.astype(np.float64), 1e-5)
    w = np.maximum(weight_absmax.astype(np.float64), 1e-5)
    s = x**alpha / w ** (1.0 - alpha)
    return np.clip(s, 1e-4, 1e4).astype(np.float32)


def _choose_configs(linear, chosen, stats, probes, rules: QdqRules, options):
    """Pick each node's SmoothQuant alpha and activation mode by its measured output error."""
    configs: dict[int, NodeConfig] = {}
    sensitivity: dict[int, float] = {}
    candidates: dict[int, list[dict[str, Any]]] = {}
    for i in chosen:
        t = linear[i]
        s = stats[t.activation.name]
        xs = [x.reshape(x.shape[0], -1, x.shape[-1]) for x in probes[t.activation.name]]
        x = np.concatenate(xs)  # [samples, rows, K]
        rows = np.linspace(0, x.shape[1] - 1, min(PROBE_ROWS, x.shape[1])).astype(int)
        columns = np.unique(np.linspace(0, t.weight.shape[1] - 1, PROBE_COLUMNS).astype(int))
        weight = t.weight[:, columns]
        reference = x[:, rows] @ weight
        weight_absmax = np.abs(t.weight).max(axis=1)
        tried = []
        for alpha in ALPHAS if options.smooth_quant and s.channel_absmax is not None else (None,):
            config = _candidate_config(s, weight_absmax, alpha, options, "static")
            xq_in = x / config.smooth if config.smooth is not None else x
            w = fake_weight(weight * config.smooth[:, None] if config.smooth is not None else weight)
            modes = ("dynamic", "static") if rules.integer_ops else ("static",)
            for mode in modes:
                if mode == "dynamic":
                    xq = fake_dynamic_uint8(xq_in)
                elif rules.integer_ops:
                    xq = fake_uint8(xq_in, *uint8_params(config.lo, config.hi))
                else:
                    xq = fake_int8(xq_in, int8_params(max(-config.lo, config.hi)))
                error = noise_ratio(reference, xq[:, rows] @ w)
                tried.append((error, mode, alpha, dataclasses.replace(config, mode=mode)))
        best = min(e for e, *_ in tried)
        # Smoothing costs a Mul at run time (~5% of an int8 MiniLM): take it only when it cuts
        # the error by more than SMOOTH_GAIN. Then, within 2%, prefer static activations.
        plain = [c for c in tried if c[2] is None]
        if plain and min(e for e, *_ in plain) <= best / SMOOTH_GAIN:
            pool = plain
        else:
            pool = tried
        least = min(e for e, *_ in pool)
        pick = min(
            (c for c in pool if c[0] <= least * 1.02 + 1e-12),
            key=lambda c: (c[1] != "static", c[0]),
        )
        configs[i] = pick[3]
        sensitivity[i] = float(pick[0])
        candidates[i] = [{"alpha": a, "mode": m, "noise_ratio": float(e)} for e, m, a, _ in tried]
    return configs, sensitivity, candidates


def _candidate_config(s: TensorStats, weight_absmax: np.ndarray, alpha: float | None, options, mode: str) -> NodeConfig:
    if alpha is None:
        lo, hi = s.range_for(options.method, options.percentile)
        return NodeConfig(mode=mode, lo=lo, hi=hi)
    smooth = smooth_scale(s.channel_absmax, weight_absmax, alpha)
    # |x_j / s_j| <= max|X_j| / s_j on every calibration sample: the exact range after smoothing.
    bound = float((s.channel_absmax / smooth).max())
    lo = -bound if s.minimum < 0 else 0.0
    return NodeConfig(mode=mode, alpha=alpha, smooth=smooth, lo=lo, hi=bound)


# -- accuracy ------------------------------------------------------------------------------------


def _apply(model: ir.Model, rules: QdqRules, configs: dict[int, NodeConfig]) -> ir.Model:
    copy = model.clone()
    linear = find_linear(copy, rules)
    (quantize_ort if rules.integer_ops else quantize_trt)(copy, linear, configs)
    return copy


def split_samples(samples: list, options: QuantizeOptions) -> tuple[list, list]:
    """``(calibration, holdout)``: the first ``options.samples`` rows, then up to ``options.holdout``.
    Data no longer than ``options.samples`` would leave nothing held out: a quarter of its rows
    (at most ``options.holdout``) is held out instead, so the accuracy budget (and the padding
    verdict judged with it) is not skipped because the calibration file was exactly
    ``--calibration-samples`` long."""
    if len(samples) <= options.samples:
        held = min(options.holdout, len(samples) // 4)
        return samples[: len(samples) - held], samples[len(samples) - held :]
    return samples[: options.samples], samples[options.samples : options.samples + options.holdout]


def _budget(model, rules, linear, configs, sensitivity, reference, holdout, options, progress):
    """Quantize with ``configs``; while the held-out mean cosine misses the budget, drop the most
    sensitive node to float. Returns (fallbacks, quantized model, cosines or None)."""
    fallbacks: list[dict[str, Any]] = []
    total = len(configs) + 1
    while True:
        quantized = _apply(model, rules, configs)
        if not holdout:
            return fallbacks, quantized, None
        session = _Capture(quantized, [], options.threads)
        # One sample per run: dynamic activation ranges then match a batch-1 deployment.
        cosines = np.array([_sample_cosine(x, reference.get(i), session.run(x)) for i, x in enumerate(holdout)])
        del session
        model_io.release_freed_memory()
        progress("accuracy", len(fallbacks) + 1, total)
        if float(np.mean(cosines)) >= 1.0 - options.max_accuracy_loss or not configs:
            return fallbacks, quantized, cosines
        worst = max(configs, key=lambda i: sensitivity[i])
        fallbacks.append(
            {"node": linear[worst].name, "sensitivity": sensitivity[worst], "cosine_mean_before": float(np.mean(cosines))}
        )
        del configs[worst]
        linear[worst].float_reason = (
            f"fell back to float: mean cosine {np.mean(cosines):.5f} was below the budget "
            f"{1 - options.max_accuracy_loss:.4f}, and its sensitivity was the highest left"
        )


def _padding_skipped(quantized: ir.Model, reference: _Reference, holdout, options: QuantizeOptions) -> dict | None:  # noqa: ANN001
    """The held-out samples run with their padding skipped, judged against fp32 (llmc.int8.padding_budget)."""
    from llmc.int8 import padding_budget

    if not padding_budget.applies(holdout):
        return None
    session = _Capture(quantized, [], options.threads)
    try:
        return padding_budget.measure(session.run, holdout, reference.get, options.max_accuracy_loss)
    finally:
        del session
        model_io.release_freed_memory()


class HoldoutBudget:
    """The accuracy budget as a check of another graph: the held-out samples' cosine to the fp32
    ``model`` (as ``_budget`` measures it), for the graph a later step makes of the int8 one
    (TensorRT's float16 rest, run by its CPU emulation). One session of each at a time."""

    def __init__(self, model: ir.Model, holdout: list[dict[str, np.ndarray]], options: QuantizeOptions) -> None:
        self.model, self.holdout, self.options = model, holdout, options

    def __call__(self, candidate: ir.Model, feeds: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> dict[str, Any]:
        if not self.holdout:
            return _accuracy(None, self.options.max_accuracy_loss)
        model_io.release_freed_memory()  # what the caller dropped, before two sessions come
        # No arena: each run's buffers go back (two sessions at once). Unoptimized: the
        # emulation's rounding casts run as written.
        reference = _Capture(self.model, [], self.options.threads, arena=False)
        session = _Capture(candidate, [], self.options.threads, arena=False, level="disable")
        cosines = [_sample_cosine(x, reference.run(x), session.run(feeds(x))) for x in self.holdout]
        del session, reference
        model_io.release_freed_memory()
        return _accuracy(np.array(cosines), self.options.max_accuracy_loss)


class _Reference:
    """fp32 outputs of the held-out samples: kept while they fit ``budget`` bytes, the rest
    recomputed on demand (a decoder's logits and KV cache are ~35 MB per GPT-2 sample)."""

    def __init__(self, capture: _Capture, samples: list[dict[str, np.ndarray]], budget: int) -> None:
        self._capture, self._samples = capture, samples
        self._kept: dict[int, dict[str, np.ndarray]] = {}
        used = 0
        for i, sample in enumerate(samples):
            outputs = capture.run(sample)
            used += sum(v.nbytes for v in outputs.values())
            if used > budget:
                break
            self._kept[i] = outputs

    def get(self, i: int) -> dict[str, np.ndarray]:
        kept = self._kept.get(i)
        return kept if kept is not None else self._capture.run(self._samples[i])


def _sample_cosine(sample, ref: dict[str, np.ndarray], cand: dict[str, np.ndarray]) -> float:
    """Cosine of one sample's outputs, the lowest over the float outputs (padding masked out)."""
    mask = sample.get("attention_mask")
    worst = 1.0
    for name, a in ref.items():
        if a.dtype.kind != "f":
            continue
        b = cand[name]
        if mask is not None and a.ndim >= 2 and mask.shape == a.shape[:2]:
            keep = mask.astype(bool)
            a, b = a[keep], b[keep]
        worst = min(worst, cosine(a.astype(np.float64).ravel(), b.astype(np.float64).ravel()))
    return worst


def _accuracy(cosines: np.ndarray | None, loss: float) -> dict[str, Any]:
    if cosines is None:
        return {"holdout": 0, "met": True, "note": "no held-out samples: the budget was not checked"}
    return {
        "metric": "cosine to fp32 per held-out sample (min over float outputs, padding masked)",
        "budget": round(1.0 - loss, 6),
        "cosine_mean": round(float(np.mean(cosines)), 6),
        "cosine_worst": round(float(np.min(cosines)), 6),
        "holdout": int(len(cosines)),
        "met": bool(np.mean(cosines) >= 1.0 - loss),
    }


def _node_report(i, t: LinearNode, config: NodeConfig | None, sensitivity, candidates) -> dict[str, Any]:
    entry: dict[str, Any] = {"node": t.name, "op_type": t.node.op_type, "shape": list(t.weight.shape)}
    if config is None:
        entry["precision"] = "float"
        entry["reason"] = t.float_reason or "not quantized"
    else:
        entry.update(
            precision="int8",
            activations=config.mode,
            smooth_alpha=config.alpha,
            range=[round(config.lo, 6), round(config.hi, 6)] if config.mode == "static" else None,
        )
    if sensitivity is not None:
        entry["sensitivity"] = sensitivity
    return entry

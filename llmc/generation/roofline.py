"""The decode roofline (``llmc bench ARTIFACT --decode``): how far one decode step is from the
time its memory traffic takes at the machine's measured read bandwidth, in all and per op type.

A decode step at batch 1 reads every weight once and the KV cache once and computes little, so
its floor is ``bytes read / bandwidth``. For a decoder in the ``llmc export`` I/O contract (an
llmc artifact, or any ``.onnx`` file of that contract, e.g. onnxruntime-genai's model):

- the step: ``context`` tokens are prefilled once, then the next token's step (mask
  ``context + 1`` long, position ``context``) runs again and again on that same cache, through
  the generation loop's :class:`~llmc.generation.loop.Stepper` (IOBinding, the cache kept in
  ``OrtValue``\\ s; a shared GroupQueryAttention buffer is rewritten at the same slot), so every
  step is the step at ``context`` cached tokens; logits stay on the device;
- ms/token: the median of ``steps`` timed steps (:func:`llmc.runtime.timing.interleaved`)
  after ``warmup`` untimed ones, with ONNX Runtime's profiler off;
- bytes read per token (:mod:`llmc.generation.traffic`): the initializers the graph ONNX
  Runtime runs (saved after its own rewrites) reads per step, an embedding table read by
  Gather/GatherBlockQuantized counted as only the rows gathered (one row per token: ~0; its
  size is reported as left out; rotary cos/sin caches likewise), plus the KV cache at ``context`` tokens (keys and values of
  every layer); activations are not counted (kilobytes at batch 1);
- bandwidth: :func:`llmc.runtime.bandwidth.measure_bandwidth` on the same device and threads;
  achieved GB/s = bytes / ms per token, floor = bytes / bandwidth, % of floor = floor / measured;
- per op type, from ONNX Runtime's profiler (``enable_profiling``, :mod:`llmc.runtime.ort.profile`)
  over ``profiled`` steps (the session's first steps after warm-up, before profiling is ended
  and the timed steps run): kernel time per step, kernels per step, share of the profiled step,
  and the bytes its nodes read (weights, and the cache for the op that reads it), so each op
  type has its own achieved GB/s and floor. The profiled step is slower than the timed one
  (the profiler's own cost); what its kernels leave of it is time between kernels.

On a GPU (an artifact built for ``cuda``) the bandwidth is the device's and ms/token is right, but
ONNX Runtime's profiler times each kernel's launch on the host, not its run on the device: the op
types' times there say where launches go, not where the device's time goes.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from llmc.errors import LlmcError
from llmc.generation.loop import Stepper
from llmc.generation.target import decode_target, open_target
from llmc.generation.traffic import file_nodes, step_traffic
from llmc.model.decoder import LOGITS, DecoderLayout
from llmc.runtime.bandwidth import measure_bandwidth
from llmc.runtime.timing import interleaved

DEFAULT_CONTEXT, DEFAULT_STEPS, DEFAULT_WARMUP, MAX_PROFILED = 128, 100, 10, 20


@dataclasses.dataclass
class OpTypeTime:
    """One op type of a decode step: its nodes, kernel time and the bytes its nodes read."""

    op_type: str
    nodes: int  # in the graph ONNX Runtime runs
    kernels: float  # kernel runs per step (the profile)
    ms: float  # kernel time per profiled step
    share: float  # of the profiled step
    bytes: int  # weights (and KV cache) read per step
    floor_ms: float  # bytes at the measured bandwidth

    @property
    def gbs(self) -> float:
        return self.bytes / self.ms / 1e6 if self.ms > 0 else 0.0

    @property
    def floor_pct(self) -> float:
        return 100 * self.floor_ms / self.ms if self.ms > 0 else 0.0


@dataclasses.dataclass
class DecodeRoofline:
    """One decoder's decode step against the bandwidth floor (:func:`decode_roofline`)."""

    model: str
    device: str
    threads: int  # intra-op threads (0: ONNX Runtime's default)
    context: int  # cached tokens
    steps: int  # timed steps
    profiled: int  # profiled steps
    ms_per_token: float  # median timed step
    weight_bytes: int  # weights read per step
    kv_bytes: int  # KV cache read per step
    gathered_out: int  # bytes of tables read by row (embedding, rotary caches) that a step does not read
    bandwidth_gbs: float
    bandwidth_measured: bool  # False: given by the caller
    file_nodes: int  # nodes in the model file
    session_nodes: int  # nodes after ONNX Runtime's rewrites
    kernels_per_step: float  # kernels the profile saw per step
    profiled_ms: float  # mean profiled step (the profiler's own cost included)
    ops: list[OpTypeTime]  # by time, slowest first

    @property
    def bytes_per_token(self) -> int:
        return self.weight_bytes + self.kv_bytes

    @property
    def achieved_gbs(self) -> float:
        return self.bytes_per_token / self.ms_per_token / 1e6

    @property
    def floor_ms(self) -> float:
        return self.bytes_per_token / self.bandwidth_gbs / 1e6

    @property
    def floor_pct(self) -> float:
        return 100 * self.floor_ms / self.ms_per_token

    @property
    def between_kernels_ms(self) -> float:
        """What the profiled step's kernels leave of it: the executor, binding, allocation."""
        return max(0.0, self.profiled_ms - sum(op.ms for op in self.ops))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("bytes_per_token", "achieved_gbs", "floor_ms", "floor_pct", "between_kernels_ms"):
            out[key] = getattr(self, key)
        for row, op in zip(out["ops"], self.ops, strict=True):
            row.update(gbs=op.gbs, floor_pct=op.floor_pct)
        return out


def decode_roofline(
    model: str | Path, *, context: int = DEFAULT_CONTEXT, steps: int = DEFAULT_STEPS, warmup: int = DEFAULT_WARMUP,
    threads: int = 0, level: str = "all", bandwidth_gbs: float | None = None, profiled: int = MAX_PROFILED,
) -> DecodeRoofline:
    """The decode roofline of ``model`` (an artifact directory, or a decoder ``.onnx`` file run at
    graph optimization ``level``) at batch 1 after ``context`` cached tokens; ``threads`` 0 keeps
    an artifact's recorded threads. ``bandwidth_gbs`` None measures it
    (:func:`~llmc.runtime.bandwidth.measure_bandwidth`, same device and threads)."""
    from llmc.runtime.ort import Profiling, create_session, read_trace

    if context < 1 or steps < 1 or warmup < 0 or profiled < 1:
        raise LlmcError(
            f"decode roofline: --context and --steps must be >= 1 and --warmup >= 0 "
            f"(got context {context}, steps {steps}, warmup {warmup})"
        )
    target = decode_target(model, threads, level)  # every check before any work
    profiled = min(profiled, steps)
    bandwidth = bandwidth_gbs if bandwidth_gbs else measure_bandwidth(target.config)
    with tempfile.TemporaryDirectory(prefix="llmc-roofline-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        profiling = Profiling(trace_prefix=str(Path(tmp) / "trace"), optimized_model=str(optimized))
        session = create_session(target.model_path, target.config, profiling=profiling)
        stepper, layout = open_target(session, target)
        step = _fixed_context_step(stepper, layout, context, _vocab(session))
        for _ in range(warmup + profiled):
            step()
        runs = read_trace(session.end_profiling())[-profiled:]
        seconds = interleaved({"step": step}, 1, steps, warmup=warmup, per_call=True)["step"]
        traffic = step_traffic(optimized, layout, context)
    del session
    if len(runs) < profiled:
        raise LlmcError(f"{target.artifact}: ONNX Runtime's profile holds {len(runs)} runs, not the {profiled} profiled")
    profiled_ms = float(np.mean([run.us for run in runs])) / 1e3
    ops = _op_times(runs, traffic.nodes, traffic.bytes_by_op(), profiled_ms, bandwidth)
    return DecodeRoofline(
        model=str(model), device=target.config.device, threads=target.config.intra_op_num_threads, context=context,
        steps=steps, profiled=profiled, ms_per_token=float(np.median(seconds)) * 1e3,
        weight_bytes=sum(traffic.weights.values()), kv_bytes=sum(traffic.kv.values()),
        gathered_out=traffic.gathered_out, bandwidth_gbs=bandwidth, bandwidth_measured=not bandwidth_gbs,
        file_nodes=file_nodes(target.model_path),
        session_nodes=sum(traffic.nodes.values()),
        kernels_per_step=float(np.mean([len(run.kernels) for run in runs])), profiled_ms=profiled_ms, ops=ops,
    )


def _vocab(session: Any) -> int:
    """The logits' last axis if fixed, else 1 (token 0 only: the step's time does not depend on it)."""
    shape = next((o.shape for o in session.get_outputs() if o.name == LOGITS), None) or []
    return shape[-1] if shape and isinstance(shape[-1], int) and shape[-1] > 0 else 1


def _fixed_context_step(stepper: Stepper, layout: DecoderLayout, context: int, vocab: int) -> Any:
    """Prefill ``context`` seeded tokens; return a call that runs the next token's step on that
    cache (a shared buffer, capacity ``context + 1``, is rewritten at the same slot each time)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, size=(1, context), dtype=np.int64)
    mask = np.ones((1, context), np.int64)
    _, past = stepper.run(ids, mask, np.arange(context, dtype=np.int64)[None], None, capacity=context + 1, last_only=True)
    token = rng.integers(0, vocab, size=(1, 1), dtype=np.int64)
    mask = np.ones((1, context + 1), np.int64)
    position = np.array([[context]], np.int64)

    def step() -> None:
        stepper.run(token, mask, position, past, last_only=True)  # a cache of its own is not kept: every step sees `past`

    return step


def _op_times(
    runs: list[Any], counts: dict[str, int], read: dict[str, int], profiled_ms: float, bandwidth: float
) -> list[OpTypeTime]:
    """Per op type: the profile's kernel time and runs per step, the graph's nodes and bytes."""
    times: dict[str, float] = {}
    kernels: dict[str, int] = {}
    for run in runs:
        for kernel in run.kernels:
            times[kernel.op_type] = times.get(kernel.op_type, 0.0) + kernel.us
            kernels[kernel.op_type] = kernels.get(kernel.op_type, 0) + 1
    rows = []
    for op_type in {*times, *read}:
        ms = times.get(op_type, 0.0) / len(runs) / 1e3
        rows.append(
            OpTypeTime(
                op_type=op_type, nodes=counts.get(op_type, 0), kernels=kernels.get(op_type, 0) / len(runs), ms=ms,
                share=100 * ms / profiled_ms if profiled_ms else 0.0, bytes=read.get(op_type, 0),
                floor_ms=read.get(op_type, 0) / bandwidth / 1e6,
            )
        )
    return sorted(rows, key=lambda r: (-r.ms, -r.bytes, r.op_type))

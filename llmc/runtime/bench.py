"""Latency benchmarking (``llmc bench``): several models timed interleaved in one process
(:mod:`llmc.runtime.timing`: blocks of runs, a pause and one untimed run at each switch),
percentiles and ratios. Peak RSS is measured per model in a fresh
child process (session creation plus the same number of runs), because one process's peak
cannot be split between models.

A bench model is either an ONNX model run in ONNX Runtime (``model_path`` + ``config``) or any
in-process callable (``make_runner``, e.g. a torch module in eager mode); both kinds are
interleaved the same way. Peak RSS is only measured for ONNX Runtime models (a callable cannot
be re-created in a child process), ``None`` for the others.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llmc.errors import LlmcError
from llmc.model.process import run_in_fresh_process
from llmc.runtime.artifact import MODEL_FILE, padded_runner, read_artifact
from llmc.runtime.ort import OrtRunner, SessionConfig, create_session
from llmc.runtime.timing import interleaved

Runner = Callable[[dict[str, np.ndarray]], Any]


@dataclasses.dataclass
class BenchModel:
    """What to time: an ONNX model in ONNX Runtime, or ``make_runner``, a factory returning a
    callable that runs one inference on numpy feeds (called once, before warm-up)."""

    label: str
    model_path: Path | None = None
    config: SessionConfig = dataclasses.field(default_factory=SessionConfig)
    make_runner: Callable[[], Runner] | None = None
    wrap: Callable[[Runner], Runner] | None = None  # e.g. an artifact's padding-aware runner

    def __post_init__(self) -> None:
        if (self.model_path is None) == (self.make_runner is None):
            raise LlmcError(f"bench model '{self.label}': give either a model path or make_runner")

    @property
    def is_ort(self) -> bool:
        return self.make_runner is None

    def create_runner(self) -> Runner:
        if self.make_runner is not None:
            return self.make_runner()
        run = OrtRunner(create_session(self.model_path, self.config)).run
        return self.wrap(run) if self.wrap is not None else run


@dataclasses.dataclass
class BenchResult:
    label: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # samples (batch rows) per second at the mean latency
    session_create_s: float
    peak_rss_mb: float | None
    runs: int
    ratio_p50: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_bench_model(
    path: str | Path, threads: int = 0, level: str = "all", label: str | None = None, padding: str = "auto"
) -> BenchModel:
    """A model file (ORT at ``level``) or an artifact directory (its recorded session options and
    ``padding`` as ``llmc.load`` takes it)."""
    path = Path(path)
    if path.is_dir():
        artifact = read_artifact(path)
        recorded = artifact.manifest.session.options.get("intra_op_num_threads", 0)
        config = artifact.session_config(intra_op_num_threads=threads or recorded)
        padded_runner(artifact, None, padding)  # a mode that cannot apply is an error before any run
        name = label or f"{path.name}/"
        return BenchModel(name, path / MODEL_FILE, config, wrap=lambda run: padded_runner(artifact, run, padding, config) or run)
    if not path.is_file():
        raise LlmcError(f"{path}: no such model file or artifact directory")
    config = SessionConfig(graph_optimization_level=level, intra_op_num_threads=threads)
    return BenchModel(label or path.name, path, config)


def run_benchmark(
    models: list[BenchModel],
    feeds: dict[str, np.ndarray],
    runs: int = 100,
    warmup: int = 10,
    measure_rss: bool = True,
    block: int = 10,
    pause_s: float = 0.05,
) -> list[BenchResult]:
    """Time ``models`` interleaved on ``feeds``; ratios are p50 over the first model's p50."""
    if runs < 1:
        raise LlmcError("--runs must be at least 1")
    runners, create_times = {}, []
    for index, model in enumerate(models):
        start = time.perf_counter()
        runner = model.create_runner()
        create_times.append(time.perf_counter() - start)
        runners[str(index)] = functools.partial(runner, feeds)
    block = max(1, min(block, runs))
    timed = interleaved(runners, -(-runs // block), block, warmup=warmup, pause_s=pause_s, per_call=True, limit=runs)
    times = [timed[str(index)] for index in range(len(models))]
    del runners
    batch = _batch_size(feeds)
    rss = _peak_rss_all(models, feeds, warmup + 5) if measure_rss else [None] * len(models)
    results = []
    for model, samples, created, peak in zip(models, times, create_times, rss, strict=True):
        ms = np.array(samples) * 1e3
        results.append(
            BenchResult(
                label=model.label,
                p50_ms=float(np.percentile(ms, 50)),
                p90_ms=float(np.percentile(ms, 90)),
                p99_ms=float(np.percentile(ms, 99)),
                mean_ms=float(ms.mean()),
                throughput=float(batch * 1e3 / ms.mean()),
                session_create_s=created,
                peak_rss_mb=peak,
                runs=runs,
            )
        )
    for result in results:
        result.ratio_p50 = result.p50_ms / results[0].p50_ms
    return results


def _batch_size(feeds: dict[str, np.ndarray]) -> int:
    for array in feeds.values():
        if array.ndim:
            return int(array.shape[0])
    return 1


def _peak_rss_all(models: list[BenchModel], feeds: dict[str, np.ndarray], runs: int) -> list[float | None]:
    with tempfile.TemporaryDirectory(prefix="llmc-bench-") as tmp:
        feeds_path = Path(tmp) / "feeds.npz"
        np.savez(feeds_path, **feeds)
        out: list[float | None] = []
        for model in models:
            if not model.is_ort:
                out.append(None)  # an in-process callable cannot be re-created in a child
                continue
            _, peak = run_in_fresh_process(
                _session_runs, str(model.model_path), model.config.to_dict(), str(feeds_path), runs
            )
            out.append(peak)
        return out


def _session_runs(model_path: str, config: dict[str, Any], feeds_path: str, runs: int) -> None:
    """In the fresh process whose peak RSS is measured: create the session, run ``runs`` times."""
    with np.load(feeds_path) as data:
        feeds = {k: data[k] for k in data.files}
    runner = OrtRunner(create_session(model_path, SessionConfig.from_dict(config)))
    for _ in range(runs):
        runner.run(feeds)

"""``--target-speedup``: the mildest pruning whose built artifact is measured that much faster.

Candidates are a grid of (FFN fraction, head fraction, layers kept). Each is pruned (cheap) and
scored by how well it still agrees with the original on held-out text before any distillation;
those whose FLOPs could reach the target are then, best-agreeing first, exported, built by
``llmc build`` (fp32, batch 1 x 128) and timed against the original's build, interleaved. The
first measured at or past the target wins. A cut measured too slow raises the FLOP bar to its
own FLOPs (a cut with no fewer FLOPs would be no faster), and at most :data:`MAX_BUILDS` builds
run. Latency is not FLOPs: dropping a layer removes its norms, softmax and activations too, while
narrowing its FFN leaves them, so the bar only ever excludes what one measurement rules out. A
target beyond what the grid's deepest cut could give is refused before anything is built.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmc.compression import measure
from llmc.compression.arch import Arch
from llmc.compression.distill import agreement
from llmc.compression.prune import Plan, ffn_kept, heads_kept, prune, student_config
from llmc.errors import LlmcError

FFN = (0.0, 0.25, 0.5, 0.625, 0.75, 0.875)
HEADS = (0.0, 0.25, 0.5)
MAX_BUILDS = 5
THREADS = 2


@dataclasses.dataclass(frozen=True)
class Candidate:
    plan: Plan
    fractions: tuple[float, float]  # (ffn, heads) removed
    flop_speedup: float
    agreement: float = 0.0  # held-out cosine of the pruned cut (--target-speedup)
    pruned_loss: float = math.inf  # held-out loss of the pruned cut (llmc.compression.auto)


def candidates(model: Any, arch: Arch, layer_order: list[int]) -> list[Candidate]:
    """Every grid point, with its FLOP speed-up over the original."""
    config = model.config
    base = measure.flops_per_token(config, arch.decoder)
    found = []
    for keep in range(len(layer_order), max(1, len(layer_order) // 3) - 1, -1):
        layers = sorted(layer_order[:keep])
        for ffn in FFN:
            for head in HEADS:
                plan = Plan(layers, ffn_kept(config.intermediate_size, ffn), heads_kept(config, head))
                flops = measure.flops_per_token(student_config(model, arch, plan), arch.decoder)
                found.append(Candidate(plan, (ffn, head), base / flops))
    return found


def check_reachable(target: float, found: list[Candidate]) -> None:
    best = max(c.flop_speedup for c in found)
    if target <= 1.0:
        raise LlmcError(f"--target-speedup must be above 1 (x faster than the original), not {target}")
    if target > best:
        raise LlmcError(
            f"--target-speedup {target}: cannot be reached; the deepest cut llmc compress tries cuts the FLOPs "
            f"{best:.1f}x (latency falls less); ask for at most {best * 0.8:.1f}"
        )


def search(model: Any, arch: Arch, target: float, layer_order: list[int],
           scores: tuple[Any, ...], holdout: list[dict[str, Any]],
           log: Callable[[str], None]) -> tuple[Plan, dict[str, Any]]:
    """The chosen plan and what the search measured."""
    if arch.decoder:
        raise LlmcError("--target-speedup times encoders (batch 1 x 128); for a decoder give --heads/--ffn/--layers")
    found = candidates(model, arch, layer_order)
    check_reachable(target, found)
    log(f"searching for {target}x: scoring {len(found)} cuts on held-out text")
    scored = []
    for candidate in found:
        if candidate.flop_speedup >= target:
            student = prune(model, arch, candidate.plan, *scores)
            scored.append(dataclasses.replace(candidate, agreement=agreement(student, model, holdout)["cosine_mean"]))
    scored.sort(key=lambda c: -c.agreement)
    bar, tried = target, []
    with tempfile.TemporaryDirectory(prefix="llmc-search-") as tmp:
        original = _build(model, arch, Path(tmp) / "original")
        for candidate in scored:
            if len(tried) == MAX_BUILDS:
                break
            if candidate.flop_speedup < bar:
                continue
            student = prune(model, arch, candidate.plan, *scores)
            built = _build(student, arch, Path(tmp) / f"c{len(tried)}")
            speedup = _speedup(original, built, measure.timed_length(model.config), model.config.vocab_size)
            tried.append({"ffn": candidate.fractions[0], "heads": candidate.fractions[1],
                          "layers": len(candidate.plan.layers), "flop_speedup": round(candidate.flop_speedup, 3),
                          "measured_speedup": round(speedup, 3), "pruned_cosine": candidate.agreement})
            log(f"  ffn {candidate.fractions[0]}, heads {candidate.fractions[1]}, {len(candidate.plan.layers)} layers: "
                f"{speedup:.2f}x measured ({candidate.flop_speedup:.2f}x FLOPs), pruned cosine {candidate.agreement:.4f}")
            if speedup >= target:
                return candidate.plan, {"target": target, "tried": tried, "chosen": tried[-1]}
            bar = max(bar, candidate.flop_speedup * (1.0 + 1e-6))  # a cut with no fewer FLOPs would be slower too
    reached = max((t["measured_speedup"] for t in tried), default=1.0)
    raise LlmcError(
        f"--target-speedup {target}: cannot be reached; the builds measured at most {reached:.2f}x "
        f"({len(tried)} cuts tried); ask for at most {reached:.2f} or give --heads/--ffn/--layers"
    )


def _build(model: Any, arch: Arch, where: Path) -> Path:
    from llmc.compiler.build import build
    from llmc.export.hf import export_pretrained

    model.save_pretrained(where / "hf")
    export_pretrained(where / "hf", where / "onnx", task="decoder" if arch.decoder else "encoder")
    build(where / "onnx" / "model.onnx", output=where / "art", threads=THREADS, shapes={"input_ids": (1, measure.timed_length(model.config))},
          cache=False)
    return where / "art"


def _speedup(original: Path, candidate: Path, length: int, vocab: int, rounds: int = 7, runs: int = 20) -> float:
    """Original ms / candidate ms of the two built artifacts (:func:`llmc.runtime.timing.median_ms`)."""
    from llmc.runtime.artifact import load
    from llmc.runtime.timing import median_ms

    runners = {name: load(path, threads=THREADS, padding="off") for name, path in (("a", original), ("b", candidate))}
    feeds = measure.feeds(runners["a"].session, decoder=False, length=length, vocab=vocab)
    ms = median_ms({name: functools.partial(r.run, feeds) for name, r in runners.items()}, rounds, runs)
    return ms["a"] / ms["b"]

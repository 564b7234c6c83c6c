"""``llmc compress`` without a cut: the largest measured speed-up that stays within the quality
budget (:mod:`llmc.compression.budget`).

1. Screen: every cut of the grid (:func:`llmc.compression.search.candidates`; a coarser one for
   decoders) is pruned and scored on held-out text before any training. The frontier keeps, from
   the most FLOPs removed to the least, each cut that agrees better than every cut faster than
   it; at most :data:`MAX_TIMED` of them, spread over the FLOP range, go on.
2. Time: each is exported and timed against the original, interleaved (encoders: the ``llmc
   build`` fp32 artifact at batch 1 x 128, as ``--target-speedup`` does; decoders: one ONNX
   Runtime decode step after 128 tokens). Cuts measured no faster than :data:`MIN_SPEEDUP` drop out.
3. Distil and judge: a binary search over the timed cuts, fastest first. Each probe distils its
   cut for a share of ``--minutes`` (:data:`PROBE_SHARE` split over the probes the search can
   need) and measures the held-out loss; within the budget, a faster cut is tried, else a slower
   one. The fastest cut found within the budget keeps training for the rest of the minutes (none
   within: the least lossy probe does, and is judged again at the end).
   A probe is judged by the better of its distilled and its pruned weights (the final model keeps
   the pruned ones where distillation raised the held-out loss), and the chosen probe's last
   training is undone if it raises the loss, so a cut judged within the budget stays so; a cut
   judged over it might have made it with the whole budget (the search is conservative).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmc.compression import measure
from llmc.compression.arch import Arch
from llmc.compression.budget import Budget, lower
from llmc.compression.distill import Signal, agreement, distill, embeddings
from llmc.compression.prune import Plan, ffn_kept, heads_kept, prune, student_config
from llmc.compression.search import Candidate, candidates

MAX_TIMED = 6
SCREEN_BATCHES = 4  # held-out batches a cut is screened on (the probes use them all)
MIN_SPEEDUP = 1.05
PROBE_SHARE = 0.5
DECODER_FFN, DECODER_HEADS = (0.0, 0.125, 0.25, 0.375, 0.5), (0.0, 0.34)


@dataclasses.dataclass
class Probe:
    candidate: Candidate
    speedup: float
    loss: float | None = None  # the loss it was judged at (the report's distilled_loss): its pruned weights' if kept_pruned
    within: bool | None = None
    minutes: float = 0.0
    kept_pruned: bool = False  # judged (and kept) with its pruned weights: distillation raised the loss

    def to_dict(self) -> dict[str, Any]:
        plan = self.candidate.plan
        return {"ffn": self.candidate.fractions[0], "heads": self.candidate.fractions[1], "layers": len(plan.layers),
                "flop_speedup": round(self.candidate.flop_speedup, 3), "measured_speedup": round(self.speedup, 3),
                "pruned_loss": round(self.candidate.pruned_loss, 5),
                "distilled_loss": None if self.loss is None else round(self.loss, 5),
                "within": self.within, "kept_pruned": self.kept_pruned, "minutes": round(self.minutes, 2)}


def grid(model: Any, arch: Arch, layer_order: list[int]) -> list[Candidate]:
    """The cuts screened: the encoder grid of ``--target-speedup``; for decoders FFN and head
    fractions with all layers, a tenth or a fifth of them dropped."""
    if not arch.decoder:
        return candidates(model, arch, layer_order)
    config, count = model.config, len(layer_order)
    base = measure.flops_per_token(config, True)
    found = []
    for keep in sorted({count, count - count // 10, count - count // 5}, reverse=True):
        for ffn in DECODER_FFN:
            for head in DECODER_HEADS:
                plan = Plan(sorted(layer_order[:keep]), ffn_kept(config.intermediate_size, ffn), heads_kept(config, head))
                found.append(Candidate(plan, (ffn, head), base / measure.flops_per_token(student_config(model, arch, plan), True)))
    return found


def frontier(scored: list[Candidate], limit: int = MAX_TIMED) -> list[Candidate]:
    """From the most FLOPs removed to the least, the cuts whose pruned loss beats every faster
    cut's; at most ``limit``, spread over the range."""
    best, kept = math.inf, []
    for candidate in sorted(scored, key=lambda c: (-c.flop_speedup, c.pruned_loss)):
        if candidate.flop_speedup > MIN_SPEEDUP and candidate.pruned_loss < best:
            kept.append(candidate)
            best = candidate.pruned_loss
    if len(kept) <= limit:
        return kept
    step = (len(kept) - 1) / (limit - 1)
    return [kept[round(i * step)] for i in range(limit)]


def choose(teacher: Any, arch: Arch, layer_order: list[int], scores: tuple[Any, ...], train: list[Any],
           holdout: list[Any], budget: Budget, minutes: float, signal: Signal,
           log: Callable[[str], None]) -> tuple[Any, Plan, dict[str, Any]]:
    """``(student, plan, search report)``: the fastest probe within the budget, trained for the
    rest of the minutes, or (none within) the probe that lost least, trained likewise; the
    report says which (``found``: a probe was within)."""
    found = [c for c in grid(teacher, arch, layer_order) if c.flop_speedup > MIN_SPEEDUP]
    log(f"screening {len(found)} cuts on held-out text against --max-loss {budget.max_loss:g}")
    loss = _screen(teacher, arch, holdout[:SCREEN_BATCHES], budget)
    scored = [dataclasses.replace(c, pruned_loss=loss(prune(teacher, arch, c.plan, *scores))) for c in found]
    chosen = frontier(scored)
    probes = _timed(teacher, arch, chosen, scores, log)
    per_probe = minutes * PROBE_SHARE / max(1, math.ceil(math.log2(len(probes) + 1)))
    reference = None if arch.decoder or not probes else embeddings(teacher, holdout)
    best: tuple[Probe, Any] | None = None
    fallback: tuple[Probe, Any] | None = None
    low, high, spent = 0, len(probes) - 1, 0.0
    while low <= high:
        mid = (low + high) // 2
        probe = probes[mid]
        student = prune(teacher, arch, probe.candidate.plan, *scores)
        distill(student, teacher, train, per_probe, log, decoder=arch.decoder, signal=signal,
                start_loss=probe.candidate.pruned_loss)
        spent += per_probe
        student, after = _better_of(student, probe, teacher, arch, scores, holdout, budget, reference)
        probe.loss, probe.within, probe.minutes = budget.loss(after), budget.within(after), per_probe
        log(f"  probe {_name(probe)}: {probe.speedup:.2f}x measured, {budget.describe(after)} after "
            f"{per_probe:.1f} min{' (pruned weights kept: distillation raised the loss)' if probe.kept_pruned else ''}: "
            f"{'within' if probe.within else 'over'}")
        if probe.within:
            best, high, fallback = (probe, student), mid - 1, None  # a fallback is no longer needed
        else:
            if best is None and (fallback is None or lower(probe.loss, fallback[0].loss)):
                fallback = (probe, student)
            low = mid + 1
    report = {"mode": "largest measured speed-up within --max-loss", "probes": [p.to_dict() for p in probes],
              "screened": len(found), "timed": len(chosen), "found": best is not None}
    kept = best or fallback
    if kept is None:  # nothing measured faster than the original
        return None, None, report
    probe, student = kept
    rest = max(0.0, minutes - spent)
    if rest > 0:  # the fastest within the budget, else the least lossy: the final judgement comes after
        log(f"training {_name(probe)} for the remaining {rest:.1f} min")
        _train_rest(student, probe, rest, teacher, arch, train, holdout, budget, reference, signal, log)
    report["chosen"] = probe.to_dict()
    report["minutes"] = round(spent + rest, 2)  # distillation over the probes and the final training
    return student, probe.candidate.plan, report


def _train_rest(student: Any, probe: Probe, rest: float, teacher: Any, arch: Arch, train: list[Any],
                holdout: list[Any], budget: Budget, reference: list[Any] | None, signal: Signal,
                log: Callable[[str], None]) -> None:
    """Distil the chosen probe's ``student`` (in place) for the ``rest`` of the minutes; where that
    raises its held-out loss, its weights go back to the ones it was judged with, so a cut judged
    within the budget stays within it."""
    judged = {k: v.detach().clone() for k, v in student.state_dict().items()}
    distill(student, teacher, train, rest, log, decoder=arch.decoder, signal=signal, start_loss=probe.loss)
    probe.minutes += rest
    loss = budget.loss(agreement(student, teacher, holdout, arch.decoder, reference))
    if not lower(loss, probe.loss) and math.isfinite(probe.loss):
        log(f"the last {rest:.1f} min raised the held-out loss ({probe.loss:.4f} -> {loss:.4f}): "
            "keeping the weights the probe was judged with")
        student.load_state_dict(judged)


def _better_of(student: Any, probe: Probe, teacher: Any, arch: Arch, scores: tuple[Any, ...], holdout: list[Any],
               budget: Budget, reference: list[Any] | None) -> tuple[Any, dict[str, float]]:
    """A distilled probe's student and held-out agreement, or its pruned weights' where those
    lose less: distillation can move a mild cut away from the original on held-out text (MiniLM,
    FFN -1/4: pruned 0.027, distilled 0.035), and the final model keeps the pruned weights then
    (``llmc.compression.compress``), so a probe is judged the same way. The pruned student is
    judged on the whole held-out text only when its screening loss (a part of it) is lower."""
    after = agreement(student, teacher, holdout, arch.decoder, reference)
    if not lower(probe.candidate.pruned_loss, budget.loss(after)):
        return student, after
    pruned = prune(teacher, arch, probe.candidate.plan, *scores)
    before = agreement(pruned, teacher, holdout, arch.decoder, reference)
    if lower(budget.loss(before), budget.loss(after)):
        probe.kept_pruned = True
        return pruned, before
    return student, after


def _screen(teacher: Any, arch: Arch, holdout: list[Any], budget: Budget) -> Callable[[Any], float]:
    """The held-out loss of a pruned student. Encoders: the original's embeddings are computed
    once for every cut (decoders' logits would not fit: the original runs beside)."""
    reference = None if arch.decoder else embeddings(teacher, holdout)
    return lambda student: budget.loss(agreement(student, teacher, holdout, arch.decoder, reference))


def _name(probe: Probe) -> str:
    ffn, heads = probe.candidate.fractions
    return f"ffn {ffn:g}, heads {heads:g}, {len(probe.candidate.plan.layers)} layers"


def _timed(teacher: Any, arch: Arch, chosen: list[Candidate], scores: tuple[Any, ...],
           log: Callable[[str], None]) -> list[Probe]:
    """The frontier's cuts with their measured speed-ups, fastest first (those above
    :data:`MIN_SPEEDUP`)."""
    probes = []
    with tempfile.TemporaryDirectory(prefix="llmc-compress-time-") as tmp:
        original = _artifact(_whole(teacher, arch, scores), arch, Path(tmp) / "original")
        for index, candidate in enumerate(chosen):
            student = prune(teacher, arch, candidate.plan, *scores)
            built = _artifact(student, arch, Path(tmp) / f"c{index}")
            speedup = _timed_speedup(original, built, teacher.config, arch.decoder)
            log(f"  ffn {candidate.fractions[0]:g}, heads {candidate.fractions[1]:g}, {len(candidate.plan.layers)} layers: "
                f"{speedup:.2f}x measured ({candidate.flop_speedup:.2f}x FLOPs), pruned loss {candidate.pruned_loss:.4f}")
            if speedup > MIN_SPEEDUP:
                probes.append(Probe(candidate, speedup))
    return sorted(probes, key=lambda p: -p.speedup)


def _whole(teacher: Any, arch: Arch, scores: tuple[Any, ...]) -> Any:
    """The original as a plain model (every layer, neuron and head kept): a teacher loaded from a
    GGUF file is marked quantized and transformers will not save it."""
    config = teacher.config
    plan = Plan(list(range(config.num_hidden_layers)), ffn_kept(config.intermediate_size, 0.0), heads_kept(config, 0.0))
    return prune(teacher, arch, plan, *scores)


def _artifact(model: Any, arch: Arch, where: Path) -> Path:
    """Encoders: the fp32 ``llmc build`` (:func:`llmc.compression.search._build`); decoders: the
    export's ``model.onnx``."""
    from llmc.compression import search

    if not arch.decoder:
        return search._build(model, arch, where)
    from llmc.export.hf import export_pretrained

    model.save_pretrained(where / "hf")
    export_pretrained(where / "hf", where / "onnx", task="decoder")
    return where / "onnx" / "model.onnx"


def _timed_speedup(original: Path, candidate: Path, config: Any, decoder: bool) -> float:
    """Original time / candidate time, interleaved (encoders: :func:`llmc.compression.search._speedup`)."""
    from llmc.compression import search

    if not decoder:
        return search._speedup(original, candidate, measure.timed_length(config), config.vocab_size)
    ms = measure.latency({"a": original, "b": candidate}, True, measure.timed_length(config), config.vocab_size,
                         threads=search.THREADS)
    return ms["a"] / ms["b"]

"""``llmc compress``: prune a model's attention heads, FFN neurons and layers by importance on the
user's text (or 2:4-sparsify its projections), refit the output projections to what was removed
(:mod:`llmc.compression.refit`), distill it against the original, export it, and report what it
cost and what it kept.

The held-out loss is the contract (:mod:`llmc.compression.budget`): without a cut
(``--ffn``/``--heads``/``--layers``/``--sparsity``/``--target-speedup``) the largest measured
speed-up within ``--max-loss`` is searched for (:mod:`llmc.compression.auto`); with one, the cut is
judged against it. A model over its budget is one line and nothing is written, unless
``allow_loss``.

The text (one sentence per line) is split: the last tenth (at least 16 lines) is held out and
never trained on; agreement with the original is measured on it before and after distillation.
``DIR/model.onnx`` is exported as ``llmc export`` does (tokenizer included); ``DIR/hf`` holds the
pruned weights as a Hugging Face directory; ``DIR/compress_report.json`` the report.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llmc.errors import LlmcError

BATCH, MAX_LENGTH, MIN_LINES = 16, 128, 32
GRAM_BATCHES = 32  # batches of text the output refit sees (llmc.compression.refit); encoders: twice (_scored_on)
IMPORTANCE_BATCHES = 8  # batches the importance is measured on; encoders: twice (_scored_on)
REPORT = "compress_report.json"
IMPORTANCE = ("activation", "taylor")


@dataclasses.dataclass(frozen=True)
class CompressOptions:
    ffn: float | None = None  # fraction of every layer's FFN neurons removed (None: see ffn_fraction)
    heads: float = 0.0  # fraction of every layer's attention (query) heads removed
    layers: int | None = None  # layers kept (None: all)
    minutes: float = 5.0  # distillation budget
    sparsity: str | None = None  # "2:4": magnitude 2:4 sparsity of the layer projections
    target_speedup: float | None = None  # search ffn/heads/layers by measured latency instead
    importance: str = "activation"
    refit: bool = True  # least-squares refit of the output projections after pruning
    seed: int = 0
    max_loss: float | None = None  # held-out loss allowed (None: llmc.compression.budget's default)
    allow_loss: bool = False  # write a model over its budget all the same
    self_text: bool = True  # decoders: the original's continuations join the text (llmc.compression.continuations)

    @property
    def auto(self) -> bool:
        """No cut given: search for the largest measured speed-up within the budget."""
        return (self.ffn is None and not self.heads and self.layers is None and self.sparsity is None
                and self.target_speedup is None)

    def ffn_fraction(self) -> float:
        """The FFN fraction of an explicit cut: as given, else 0 with --sparsity and half otherwise."""
        return self.ffn if self.ffn is not None else (0.0 if self.sparsity else 0.5)

    def check(self, num_layers: int | None) -> None:
        """One line for an option out of range (non-finite numbers included); ``num_layers``
        None (the model not read yet): everything but --layers, which the model's layer count bounds."""
        from llmc.compression.budget import check_max_loss

        check_max_loss(self.max_loss)
        if self.ffn is not None and not 0.0 <= self.ffn <= 0.95:
            raise LlmcError(f"--ffn is the fraction of FFN neurons removed, 0 to 0.95, not {self.ffn}")
        if not 0.0 <= self.heads <= 0.95:
            raise LlmcError(f"--heads is the fraction of attention heads removed, 0 to 0.95, not {self.heads}")
        if num_layers is not None and self.layers is not None and not 1 <= self.layers <= num_layers:
            raise LlmcError(f"--layers keeps 1 to {num_layers} layers (the model has {num_layers}), not {self.layers}")
        if not (math.isfinite(self.minutes) and self.minutes >= 0):
            raise LlmcError(f"--minutes is a distillation budget in minutes, a number >= 0, not {self.minutes}")
        if self.sparsity not in (None, "2:4"):
            raise LlmcError(f"--sparsity: only 2:4 (2 of every 4 weights kept) is supported, not '{self.sparsity}'")
        if self.importance not in IMPORTANCE:
            raise LlmcError(f"--importance must be one of {', '.join(IMPORTANCE)}, not '{self.importance}'")
        if self.target_speedup is not None and not (math.isfinite(self.target_speedup) and self.target_speedup > 1.0):
            raise LlmcError(f"--target-speedup must be above 1 (x faster than the original), not {self.target_speedup}")


def read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise LlmcError(f"--data {path}: no such file")
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise LlmcError(f"--data {path}: not UTF-8 text (one sentence per line)") from None
    if len(lines) < MIN_LINES:
        raise LlmcError(f"--data {path}: {len(lines)} non-empty lines; give at least {MIN_LINES} sentences, one per line")
    return lines


def _batches(tokenizer: Any, lines: list[str]) -> list[dict[str, Any]]:
    return [
        dict(tokenizer(lines[i : i + BATCH], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"))
        for i in range(0, len(lines), BATCH)
    ]


def _check_first(source: Path, data: Path, output: Path) -> list[str]:
    from llmc.compression.arch import source_parts

    source_parts(source)
    lines = read_lines(data)
    if output.is_symlink() or output.is_file() or (output.is_dir() and any(output.iterdir())):
        raise LlmcError(f"-o {output} exists and is not an empty directory; choose a new directory")
    return lines


def compress(source: Path, data: Path, output: Path, options: CompressOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """Compress the Hugging Face model (or .gguf) at ``source`` into ``output``; returns the report."""
    from llmc.compression import importance
    from llmc.compression.arch import load_teacher
    from llmc.compression.budget import Budget

    lines = _check_first(source, data, output)
    began = time.perf_counter()
    teacher, tokenizer, arch = load_teacher(source)
    options.check(teacher.config.num_hidden_layers)
    if options.importance == "taylor" and not arch.decoder:
        raise LlmcError("--importance taylor needs a next-token loss: decoders only (encoders use activation)")
    budget = Budget.of(options.max_loss, arch.decoder)
    held = max(16, len(lines) // 10)
    train, holdout = _batches(tokenizer, lines[:-held]), _batches(tokenizer, lines[-held:])
    log(f"measuring {options.importance} importance on {len(lines) - held} sentences ({held} held out)")
    scored, refitted = _scored_on(tokenizer, arch, train)
    scores = getattr(importance, options.importance)(teacher, arch, scored)
    if options.refit:
        from llmc.compression.refit import grams

        scores = (*scores, grams(teacher, arch, refitted))
    written, seconds = _self_text(teacher, tokenizer, arch, options, lines[:-held], log)
    train = train + _batches(tokenizer, written)
    minutes = max(0.0, options.minutes - seconds / 60.0)  # the generation counts against the budget
    trained = _trained(teacher, tokenizer, arch, options, minutes, scores, train, holdout, budget, log)
    student, plan, before, after = trained["student"], trained["plan"], trained["before"], trained["after"]
    _judge(budget, options, after, trained["search"])
    report = _report(source, data, lines, held, teacher, student, arch, plan, options, before, after, trained["distillation"])
    report["budget"] = {**budget.record(before, after), "allowed_over": options.allow_loss and not budget.within(after)}
    if trained["search"]:
        report["search"] = trained["search"]
    if written:
        report["self_text"] = {"texts": len(written), "seconds": round(seconds, 1)}
    _write(source, student, tokenizer, arch, output, report, log)
    report["seconds"] = round(time.perf_counter() - began, 1)
    (output / REPORT).write_text(json.dumps(report, indent=2))
    return report


def _self_text(teacher: Any, tokenizer: Any, arch: Any, options: CompressOptions, lines: list[str],
               log: Callable[[str], None]) -> tuple[list[str], float]:
    """Decoders: the original's continuations of the training lines, and the seconds they took."""
    if not (arch.decoder and options.self_text and options.minutes > 0):
        return [], 0.0
    from llmc.compression.continuations import continuations

    start = time.perf_counter()
    texts = continuations(teacher, tokenizer, lines, seed=options.seed)
    log(f"the original wrote {len(texts)} continuations of the text to train on ({time.perf_counter() - start:.0f} s)")
    return texts, time.perf_counter() - start


def _trained(teacher: Any, tokenizer: Any, arch: Any, options: CompressOptions, minutes: float, scores: Any,
             train: list[Any], holdout: list[Any], budget: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """The distilled student of the cut given, or of the one the budget search chose
    (:mod:`llmc.compression.auto`), with its held-out agreement before and after distillation."""
    from llmc.compression.budget import lower
    from llmc.compression.distill import agreement, distill

    signal = _signal(tokenizer, arch)
    if options.auto:
        from llmc.compression import auto

        order = _layer_order(teacher, arch, train)
        student, plan, search = auto.choose(teacher, arch, order, scores, train, holdout, budget, minutes, signal, log)
        if student is None:
            raise LlmcError(
                f"{search['timed']} cuts timed, none measured more than {auto.MIN_SPEEDUP}x faster than the "
                "original: nothing to compress here; give a cut (--ffn, --heads, --layers) to force one"
            )
        pruned = _pruned(teacher, arch, plan, scores)
        before = agreement(pruned, teacher, holdout, arch.decoder)
        distillation = {"minutes": search["minutes"], "search": True}
    else:
        plan, search = _plan(teacher, arch, options, scores, train, holdout, log)
        student = _pruned(teacher, arch, plan, scores)
        hold = _sparse_hold(student, arch) if options.sparsity else None
        before = agreement(student, teacher, holdout, arch.decoder)
        log(f"pruned: layers {plan.layers}, {plan.ffn} FFN neurons and {plan.heads} heads each"
            f"{', 2:4 sparse' if hold else ''}; held-out {_line(before)}")
        pruned = copy.deepcopy(student)
        distillation = distill(student, teacher, train, minutes, log, decoder=arch.decoder, after_step=hold,
                               seed=options.seed, signal=signal, start_loss=budget.loss(before))
    after = agreement(student, teacher, holdout, arch.decoder)
    log(f"distilled: held-out {_line(after)}; {budget.describe(after)}")
    distillation["kept"] = "distilled"
    if lower(budget.loss(before), budget.loss(after)):  # distillation moved it away: the pruned weights stay
        log(f"distillation raised the held-out loss ({budget.loss(before):.4f} -> {budget.loss(after):.4f}): "
            "keeping the pruned, refitted weights")
        student, after, distillation["kept"] = pruned, before, "pruned (distillation raised the held-out loss)"
    return {"student": student, "plan": plan, "before": before, "after": after, "search": search,
            "distillation": distillation}


def _signal(tokenizer: Any, arch: Any) -> Any:
    """What distillation trains on besides the text (:class:`llmc.compression.distill.Signal`).

    Encoders: tokens replaced from the whole vocabulary. Measured on MiniLM (3/4 of the FFN
    removed, 3 minutes each, held-out docstrings / everyday prose the text never holds, mean
    cosine): replaced from the batch 0.927 / 0.714; + masked and shuffled spans 0.927 / 0.713;
    + layer matching 0.931 / 0.716; from the vocabulary 0.924 / 0.771; vocabulary + batch
    0.925 / 0.755. Layer matching helps the held-out text a little and the prose not at all,
    so it stays off."""
    from llmc.compression.augment import ordinary_ids
    from llmc.compression.distill import Signal

    if arch.decoder:
        return Signal(augmentations=())
    return Signal(augmentations=("vocabulary",), mask_id=getattr(tokenizer, "mask_token_id", None),
                  vocabulary=ordinary_ids(tokenizer))


def _scored_on(tokenizer: Any, arch: Any, train: list[Any]) -> tuple[list[Any], list[Any]]:
    """The batches importance is measured on and the output refit is fit to.

    Decoders: the text's first batches. Encoders: twice as many, every other importance batch and
    a copy of every refit batch with tokens replaced from the whole vocabulary (the
    distillation's own variants, :func:`_signal`), so the neurons kept and the refit are not only
    the ones the user's sentences use. Measured on MiniLM pruned and refitted, before any
    distillation (held-out docstrings / everyday prose the text never holds, mean cosine):
    importance on 8 batches, refit on 32 (the text alone): FFN -1/4 0.976 / 0.874, FFN -1/2
    0.940 / 0.772; 16 and 64 of the text alone 0.978 / 0.879, 0.944 / 0.778; 16 mixed and 64
    + 64 replaced 0.977 / 0.912, 0.941 / 0.822 (the refit's variants do most of it: 8 and 32
    mixed 0.974 / 0.894; refit on replaced text alone 0.972 / 0.916, the docstrings lower)."""
    if arch.decoder:
        return train[:IMPORTANCE_BATCHES], train[:GRAM_BATCHES]
    from llmc.compression.augment import ordinary_ids, variant

    rng, vocabulary = np.random.default_rng(0), ordinary_ids(tokenizer)
    plain = train[: 2 * IMPORTANCE_BATCHES]
    scored = [b if i % 2 == 0 else variant(b, "vocabulary", rng, vocabulary=vocabulary) for i, b in enumerate(plain)]
    refitted = train[: 2 * GRAM_BATCHES]
    return scored, refitted + [variant(b, "vocabulary", rng, vocabulary=vocabulary) for b in refitted]


def _sparse_hold(student: Any, arch: Any) -> Callable[[], None]:
    from llmc.compression.sparsity import hold, sparsify

    masks = sparsify(student, arch)
    return lambda: hold(student, arch, masks)


def _judge(budget: Any, options: CompressOptions, after: dict[str, float], search: dict[str, Any] | None) -> None:
    """One line, before anything is written, for a model over its budget (unless --allow-loss)."""
    if budget.within(after) or options.allow_loss:
        return
    fixes = "give more --minutes, a larger --max-loss, or --allow-loss to write it anyway"
    if options.auto:
        tried = len((search or {}).get("probes", []))
        raise LlmcError(
            f"no cut stays within --max-loss {budget.max_loss:g} after {options.minutes:g} minutes of distillation "
            f"({tried} cuts timed; the least lossy: {budget.describe(after)}); {fixes}"
        )
    raise LlmcError(
        f"the cut loses too much: {budget.describe(after)} after {options.minutes:g} minutes of distillation; "
        f"{fixes}, or a milder cut"
    )


def _layer_order(teacher: Any, arch: Any, train: list[Any]) -> list[int]:
    from llmc.compression import importance

    return np.argsort(importance.layers(teacher, arch, train[:4]))[::-1].tolist()


def _line(agree: dict[str, float]) -> str:
    if "perplexity" in agree:
        return (f"perplexity {agree['perplexity']:.2f} (original {agree['teacher_perplexity']:.2f}), "
                f"top-1 agreement {agree['top1_agreement']:.3f}")
    return f"cosine {agree['cosine_mean']:.4f} (worst {agree['cosine_worst']:.4f})"


def _plan(teacher: Any, arch: Any, options: CompressOptions, scores: Any, train: list[Any], holdout: list[Any],
          log: Callable[[str], None]) -> tuple[Any, dict[str, Any] | None]:
    from llmc.compression.prune import Plan, ffn_kept, heads_kept

    count = teacher.config.num_hidden_layers
    needs_order = options.target_speedup is not None or (options.layers is not None and options.layers < count)
    order = _layer_order(teacher, arch, train) if needs_order else list(range(count))
    if options.target_speedup is not None:
        from llmc.compression.search import search

        return search(teacher, arch, options.target_speedup, order, scores, holdout, log)
    layers = sorted(order[: options.layers or count])
    return Plan(layers, ffn_kept(teacher.config.intermediate_size, options.ffn_fraction()), heads_kept(teacher.config, options.heads)), None


def _pruned(teacher: Any, arch: Any, plan: Any, scores: Any) -> Any:
    from llmc.compression.prune import prune

    return prune(teacher, arch, plan, *scores)


def _report(source: Path, data: Path, lines: list[str], held: int, teacher: Any, student: Any, arch: Any, plan: Any,
            options: CompressOptions, before: dict[str, float], after: dict[str, float], trained: dict[str, Any]
            ) -> dict[str, Any]:
    from llmc.compression import measure
    from llmc.compression.arch import heads

    return {
        "source": str(source), "data": str(data), "architecture": arch.name,
        "sentences": {"train": len(lines) - held, "held_out": held},
        "options": dataclasses.asdict(options), "layers_kept": plan.layers,
        "ffn_neurons": {"before": teacher.config.intermediate_size, "after": plan.ffn},
        "attention_heads": {"before": heads(teacher.config)[0], "after": plan.heads},
        "sparsity": options.sparsity,
        "parameters": {"before": measure.parameters(teacher), "after": measure.parameters(student)},
        "flops_per_token": {"before": measure.flops_per_token(teacher.config, arch.decoder),
                            "after": measure.flops_per_token(student.config, arch.decoder)},
        "held_out_agreement": {"pruned": before, "distilled": after}, "distillation": trained,
    }


def _write(source: Path, student: Any, tokenizer: Any, arch: Any, output: Path, report: dict[str, Any],
           log: Callable[[str], None]) -> None:
    """``output``: the ONNX export (tokenizer included), ``hf/`` the pruned weights; the latency
    of the original's export and of the compressed one, and the 2:4 check of the export."""
    from llmc.compression import measure
    from llmc.export.hf import export_pretrained

    task = "decoder" if arch.decoder else "encoder"
    parent = output.parent if output.parent.exists() else None
    with tempfile.TemporaryDirectory(prefix=".llmc-compress-", dir=parent) as tmp:
        hf, original = Path(tmp) / "hf", Path(tmp) / "original"
        student.save_pretrained(hf)
        tokenizer.save_pretrained(hf)
        log("exporting the compressed model")
        export_pretrained(hf, output, task=task)
        log("exporting the original to time it")
        export_pretrained(source, original / "onnx", task=task)
        ms = measure.latency({"original": original / "onnx" / "model.onnx", "compressed": output / "model.onnx"},
                             arch.decoder, measure.timed_length(student.config),
                             student.config.vocab_size)
        shutil.move(str(hf), str(output / "hf"))
    report["latency_ms"] = {**ms, "speedup": round(ms["original"] / ms["compressed"], 3),
                            "what": "ONNX Runtime, " + (f"one decode step after {measure.timed_length(student.config)} "
                                                        "tokens" if arch.decoder else
                                                        f"batch 1 x {measure.timed_length(student.config)} tokens")}
    if report["sparsity"]:
        _check_sparse(output / "model.onnx", report)
    from llmc.compression.budget import metadata
    from llmc.export.models import add_metadata

    add_metadata(output / "model.onnx", metadata(report))  # the budget and figures travel with the model
    report["files"] = sorted(p.name for p in output.iterdir())


def _check_sparse(model_path: Path, report: dict[str, Any]) -> None:
    from llmc.compression.arch import ARCHS
    from llmc.model import io as model_io
    from llmc.model.sparsity import report as sparsity_report

    found = sparsity_report(model_io.load_model(model_path))
    arch = ARCHS[report["architecture"]]
    expected = len(report["layers_kept"]) * (len(arch.attn_in) + len(arch.ffn_in) + 2)
    if len(found.sparse) < expected:
        raise AssertionError(f"2:4 lost in the export: {len(found.sparse)} of {expected} projections sparse ({found.dense})")
    report["sparsity_check"] = found.to_dict()

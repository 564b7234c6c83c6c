"""The weight-only accuracy gate: does the quantized graph still model the text as fp32 does?

A decoder (``input_ids`` in, ``*logits*`` out) is judged on token windows, teacher-forced from an
empty KV cache: its perplexity must stay within ``max_perplexity_increase`` of the fp32 graph's
(after the passes) and the top-1 agreement of the logits with fp32 over every position must
reach ``min_top1_agreement``. The windows are held-out text when the build is given one
(``--eval-text``, tokenized with the source's tokenizer), else sequences the fp32 graph samples
itself (seeded, top-k 50): text from the model's own distribution, which needs no data.

Another model is judged by the worst cosine of its float outputs on the verification feeds plus
``gate_samples`` more seeded feeds (a decoder's KV cache computed by fp32 from a seeded prefill).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from llmc.model.compare import cosine, token_nll
from llmc.model.decoder import is_logits
from llmc.model.feeds import cache_prefill, make_feeds, prefill_feeds, with_computed_cache
from llmc.model.io import ort_model_source
from llmc.runtime.ort import REFERENCE_CONFIG, OrtRunner, create_session
from llmc.weight_only.options import Int4Options

WINDOW = 128  # tokens per text window
TEXT_WINDOWS = 16
SAMPLES, SAMPLE_LENGTH, TOP_K = 4, 64, 50


class Runner:
    """One reference session of an in-memory model, run on several feeds."""

    def __init__(self, model: ir.Model) -> None:
        with ort_model_source(model) as source:
            self.runner = OrtRunner(create_session(source, REFERENCE_CONFIG, model))

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.run(feeds)


def logits_name(model: ir.Model) -> str | None:
    return next((v.name for v in model.graph.outputs if is_logits(v.name)), None)


def text_windows(ids: list[int]) -> list[np.ndarray]:
    """Up to ``TEXT_WINDOWS`` windows of ``WINDOW`` tokens (fewer, shorter, for a short text)."""
    tokens = np.asarray(ids, dtype=np.int64)
    length = min(WINDOW, tokens.size)
    count = min(TEXT_WINDOWS, tokens.size // max(length, 1))
    return [tokens[i * length : (i + 1) * length] for i in range(count)]


def sampled_windows(model: ir.Model, run: Runner, seed: int) -> list[np.ndarray]:
    """``SAMPLES`` sequences of ``SAMPLE_LENGTH`` tokens sampled from ``run`` (full recompute per
    token: no KV-cache plumbing, and these are short), each from a seeded random first token."""
    name = logits_name(model)
    rng = np.random.default_rng(seed)
    ids = None
    for _ in range(SAMPLE_LENGTH):
        if ids is None:
            logits = run(prefill_feeds(model, np.zeros((SAMPLES, 1), np.int64)))[name]
            ids = rng.integers(0, logits.shape[-1], size=(SAMPLES, 1))
            continue
        last = run(prefill_feeds(model, ids))[name][:, -1, :].astype(np.float64)
        top = np.argpartition(-last, TOP_K, axis=-1)[:, :TOP_K]
        weights = np.take_along_axis(last, top, axis=-1)
        probs = np.exp(weights - weights.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        chosen = [top[row, rng.choice(TOP_K, p=probs[row])] for row in range(SAMPLES)]
        ids = np.concatenate([ids, np.array(chosen, np.int64)[:, None]], axis=1)
    return list(ids)


@dataclasses.dataclass
class Evaluation:
    """What every candidate graph is judged on, with the fp32 graph's answers."""

    source: str
    windows: list[np.ndarray]
    feeds: list[dict[str, np.ndarray]]
    references: list[dict[str, np.ndarray]]
    logits: str | None

    def judge(self, run: Runner, options: Int4Options) -> dict[str, Any]:
        candidates = [run(feeds) for feeds in self.feeds]
        if self.logits is None:
            measured = agreement(self.references, candidates)
            return {**measured, "passed": measured["value"] >= options.min_top1_agreement}
        reference = [r[self.logits][0] for r in self.references]
        candidate = [c[self.logits][0] for c in candidates]
        return perplexity_report(reference, candidate, self.windows, self.source, options)


def evaluation(
    model: ir.Model, feeds: dict[str, np.ndarray], options: Int4Options, seed: int, run: Runner,
    text_ids: list[int] | None,
) -> Evaluation:
    """The windows (or seeded feeds) and fp32's outputs on them."""
    name = logits_name(model)
    if name is not None and prefill_feeds(model, np.zeros((1, 2), np.int64)) is not None:
        if text_ids:
            windows, source = text_windows(text_ids), "held-out text (--eval-text)"
        else:
            windows, source = sampled_windows(model, run, seed), "sequences sampled from the fp32 graph"
        window_feeds = [prefill_feeds(model, w[None, :]) for w in windows]
        return Evaluation(source, windows, window_feeds, [run(f) for f in window_feeds], name)
    samples = gate_feeds(model, feeds, seed, options.gate_samples, run)
    return Evaluation("seeded inputs", [], samples, [run(f) for f in samples], None)


def perplexity_report(
    reference: list[np.ndarray], candidate: list[np.ndarray], windows: list[np.ndarray], source: str,
    options: Int4Options,
) -> dict[str, Any]:
    """Perplexity of both over ``windows`` and the top-1 agreement; ``passed`` against ``options``."""
    nll_ref = np.concatenate([token_nll(r, w) for r, w in zip(reference, windows, strict=True)])
    nll = np.concatenate([token_nll(c, w) for c, w in zip(candidate, windows, strict=True)])
    same = sum(int((r[:-1].argmax(-1) == c[:-1].argmax(-1)).sum()) for r, c in zip(reference, candidate, strict=True))
    ppl_ref, ppl = float(np.exp(nll_ref.mean())), float(np.exp(nll.mean()))
    increase, top1 = ppl / ppl_ref - 1.0, same / nll.size
    passed = increase <= options.max_perplexity_increase and top1 >= options.min_top1_agreement
    return {
        "metric": "perplexity", "on": source, "windows": len(windows), "positions": int(nll.size),
        "perplexity_fp32": round(ppl_ref, 4), "perplexity": round(ppl, 4), "increase": round(increase, 5),
        "max_increase": options.max_perplexity_increase, "top1_agreement": round(top1, 5),
        "min_top1_agreement": options.min_top1_agreement, "passed": passed,
    }


def gate_feeds(
    model: ir.Model, feeds: dict[str, np.ndarray], seed: int, samples: int, run: Runner
) -> list[dict[str, np.ndarray]]:
    """``feeds`` and ``samples`` more seeded feeds of the same shapes (cache from ``run``)."""
    shapes = {name: tuple(array.shape) for name, array in feeds.items()}
    result = [feeds]
    for index in range(1, samples + 1):
        sample_seed = seed + 1000 * index
        extra = make_feeds(model, shapes, sample_seed)
        prefill = cache_prefill(model, extra, sample_seed)
        result.append(extra if prefill is None else with_computed_cache(extra, prefill, run))
    return result


def agreement(references: list[dict[str, np.ndarray]], candidates: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """The worst cosine of the float outputs (models without logits)."""
    cosines = [
        cosine(ref[name].astype(np.float64), cand[name].astype(np.float64))
        for ref, cand in zip(references, candidates, strict=True)
        for name in ref
        if ref[name].dtype.kind == "f"
    ]
    value = round(min(cosines, default=1.0), 6)
    return {"metric": "cosine_min", "on": "seeded inputs", "samples": len(references), "value": value}


def eval_text_ids(text: str, folder: Path | None) -> list[int]:
    """``--eval-text`` FILE as token ids with the ``tokenizer.json`` in ``folder`` (``--tokenizer``
    DIR or the source model's folder; None: an in-memory model); one line for what is wrong."""
    from llmc.errors import LlmcError
    from llmc.model.text import TOKENIZER_JSON, encode, load_tokenizer

    path = Path(text)
    if not path.is_file():
        raise LlmcError(f"--eval-text {text}: no such file")
    if folder is None or not (folder / TOKENIZER_JSON).is_file():
        raise LlmcError(
            f"--eval-text {text}: no {TOKENIZER_JSON} {'in ' + str(folder) if folder else 'for an in-memory model'}; "
            f"give --tokenizer DIR (a folder with {TOKENIZER_JSON})"
        )
    tokenizer = load_tokenizer(folder)  # a bad file is one line there
    try:
        ids = encode(tokenizer, path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, OSError) as exc:
        raise LlmcError(f"--eval-text {text}: cannot read it as UTF-8 text ({exc})") from None
    if len(ids) < 16:
        raise LlmcError(f"--eval-text {text} is {len(ids)} token(s); the gate needs at least 16 (give a few paragraphs)")
    return ids

"""The INT4 accuracy gate: does the int4 graph still pick the fp32 graph's next token?

Measured without text: the fp32 graph (after the passes) and the int4 graph run on the build's
verification feeds plus ``samples`` more seeded token sequences (a decoder's KV cache computed
by the fp32 graph from a seeded prefill, as for verification). The metric is the top-1
agreement of the last-axis argmax of every ``*logits*`` output over all positions; a model
with no logits output is judged by the worst cosine of its float outputs instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from llmc.backends.ort import REFERENCE_CONFIG, OrtRunner, create_session
from llmc.model.compare import cosine
from llmc.model.feeds import cache_prefill, make_feeds, with_computed_cache
from llmc.model.io import ort_model_source


class Runner:
    """One reference session of an in-memory model, run on several feeds."""

    def __init__(self, model: ir.Model) -> None:
        with ort_model_source(model) as source:
            self.runner = OrtRunner(create_session(source, REFERENCE_CONFIG, model))

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.run(feeds)


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
    """Top-1 agreement over every logits position (or the worst output cosine), per the docstring."""
    names = [n for n in references[0] if "logits" in n and references[0][n].dtype.kind == "f"]
    cosines = [
        cosine(ref[name].astype(np.float64), cand[name].astype(np.float64))
        for ref, cand in zip(references, candidates, strict=True)
        for name in ref
        if ref[name].dtype.kind == "f" and (not names or name in names)
    ]
    report: dict[str, Any] = {"samples": len(references), "cosine_min": round(min(cosines, default=1.0), 6)}
    if names:
        same = total = 0
        for ref, cand in zip(references, candidates, strict=True):
            for name in names:
                a, b = ref[name].argmax(axis=-1), cand[name].argmax(axis=-1)
                same += int((a == b).sum())
                total += a.size
        report.update(metric="top1_agreement", outputs=names, positions=total, value=round(same / max(total, 1), 6))
    else:
        report.update(metric="cosine_min", value=report["cosine_min"])
    return report

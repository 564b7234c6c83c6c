"""Skipping an int8 encoder's padding judged against fp32 (llmc.int8.padding_budget): a run whose
real positions do not depend on the padding meets the budget, one whose do misses it."""

from __future__ import annotations

import numpy as np

from llmc.int8 import padding_budget

WIDTH = 12
LENGTHS = (3, 12, 7, 5, 9)


def _samples() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for n in LENGTHS:
        ids = rng.integers(1, 50, (1, WIDTH))
        mask = (np.arange(WIDTH) < n).astype(np.int64)[None]
        out.append({"input_ids": ids * mask, "attention_mask": mask})
    return out


def _exact(feeds):  # noqa: ANN001, ANN202
    ids = feeds["input_ids"].astype(np.float32)
    return {"states": np.stack([ids, ids**2 + 1], -1), "pooled": (ids * feeds["attention_mask"]).sum(1, keepdims=True) + 1}


def _padding_dependent(feeds):  # noqa: ANN001, ANN202
    """Like a dynamic per-tensor scale: every value shifted by the run's width."""
    out = _exact(feeds)
    return {k: v + 40.0 * (feeds["input_ids"].shape[1] - WIDTH) for k, v in out.items()}


def test_a_run_that_ignores_padding_meets_the_budget():
    samples = _samples()
    report = padding_budget.measure(_exact, samples, lambda i: _exact(samples[i]), 0.005)
    assert report["met"] and report["samples"] == len(LENGTHS)
    assert report["alone"]["cosine_worst"] > 0.999999 and report["batched"]["cosine_worst"] > 0.999999


def test_a_run_that_depends_on_padding_misses_it():
    samples = _samples()
    report = padding_budget.measure(_padding_dependent, samples, lambda i: _padding_dependent(samples[i]), 0.005)
    assert not report["met"] and report["alone"]["cosine_mean"] < 0.995


def test_decoder_samples_are_not_measured():
    sample = {"input_ids": np.ones((1, 4), np.int64), "attention_mask": np.ones((1, 6), np.int64),
              "past_key_values.0.key": np.zeros((1, 2, 2, 8), np.float32)}
    assert padding_budget.measure(_exact, [sample], lambda i: {}, 0.005) is None


def test_samples_without_padding_are_not_evidence():
    samples = [{"input_ids": np.ones((1, n), np.int64), "attention_mask": np.ones((1, n), np.int64)} for n in (4, 9)]
    assert padding_budget.measure(_exact, samples, lambda i: _exact(samples[i]), 0.005) is None


def test_samples_of_different_padded_lengths_are_batched():
    samples = _samples()
    samples[1] = {k: v[:, :6] for k, v in samples[1].items()}  # unpadded, shorter than the others' rows
    samples[1]["attention_mask"][:] = 1
    report = padding_budget.measure(_exact, samples, lambda i: _exact(samples[i]), 0.005)
    assert report["met"] and report["batched"]["cosine_worst"] > 0.999999

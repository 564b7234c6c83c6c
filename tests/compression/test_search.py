"""``--target-speedup``: the best-agreeing cut measured at the target wins; the FLOP bar moves with
what was measured; an unreachable target is one line (before any build when FLOPs rule it out)."""

from __future__ import annotations

import numpy as np
import pytest

from llmc.errors import LlmcError

torch = pytest.importorskip("torch")


@pytest.fixture()
def bert(bert4_dir):
    from transformers import AutoModel, AutoTokenizer

    from llmc.compression import importance
    from llmc.compression.arch import BERT
    from tests.compression.conftest import batch

    model = AutoModel.from_pretrained(str(bert4_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(bert4_dir))
    batches = [batch(tokenizer, ["w4 w5 w6 w7", "w8 w9 w10"])]
    return model, importance.activation(model, BERT, batches), batches


def _fake_builds(monkeypatch, efficiency):
    """Builds that only remember the model's FLOPs; a measured speed-up of FLOP speed-up x efficiency."""
    from llmc.compression import measure, search

    flops, built = {}, []

    def build(model, arch, where):
        flops[where] = measure.flops_per_token(model.config, arch.decoder)
        built.append(where)
        return where

    monkeypatch.setattr(search, "_build", build)
    monkeypatch.setattr(search, "_speedup", lambda a, b, *_: flops[a] / flops[b] * efficiency)
    return built


def test_search_takes_the_best_agreeing_cut_that_measures_fast_enough(bert, monkeypatch):
    from llmc.compression.arch import BERT
    from llmc.compression.search import candidates, search

    model, scores, batches = bert
    built = _fake_builds(monkeypatch, efficiency=0.8)
    plan, found = search(model, BERT, 1.5, [1, 0], scores, batches, lambda _m: None)
    assert found["chosen"]["measured_speedup"] >= 1.5 and len(built) == 1 + len(found["tried"])
    fast_enough = [c for c in candidates(model, BERT, [1, 0]) if c.flop_speedup * 0.8 >= 1.5]
    assert found["chosen"]["flop_speedup"] >= 1.5 / 0.8 - 1e-6 and fast_enough
    # every cut tried before the winner measured short of the target
    assert all(t["measured_speedup"] < 1.5 for t in found["tried"][:-1])


def test_target_past_the_grid_is_refused_before_building(bert, monkeypatch):
    from llmc.compression.arch import BERT
    from llmc.compression.search import search

    model, scores, batches = bert
    built = _fake_builds(monkeypatch, efficiency=1.0)
    with pytest.raises(LlmcError, match="cannot be reached; the deepest cut"):
        search(model, BERT, 40.0, [1, 0], scores, batches, lambda _m: None)
    assert built == []


def test_target_the_builds_never_reach_is_one_line(bert, monkeypatch):
    from llmc.compression.arch import BERT
    from llmc.compression.search import MAX_BUILDS, search

    model, scores, batches = bert
    built = _fake_builds(monkeypatch, efficiency=0.3)  # latency falls far less than FLOPs
    with pytest.raises(LlmcError, match=r"cannot be reached; the builds measured at most"):
        search(model, BERT, 2.0, [1, 0], scores, batches, lambda _m: None)
    assert 1 < len(built) <= MAX_BUILDS + 1


def test_builds_and_timing_are_real_llmc_artifacts(bert, tmp_path):
    from llmc.compression.arch import BERT
    from llmc.compression.search import _build, _speedup

    model, _, _ = bert
    original = _build(model, BERT, tmp_path / "a")
    assert (original / "manifest.json").is_file()
    ratio = _speedup(original, original, 32, model.config.vocab_size, rounds=3, runs=5)
    assert np.isfinite(ratio) and ratio > 0  # the same artifact against itself (microseconds: no tighter bound)

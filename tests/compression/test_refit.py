"""The least-squares refit after pruning: a removed neuron or head whose output the kept ones can
write costs nothing; with nothing removed, nothing changes."""

from __future__ import annotations

import numpy as np
import pytest

from tests.compression.conftest import batch

torch = pytest.importorskip("torch")


def _bert(bert4_dir):
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(str(bert4_dir)).eval(), AutoTokenizer.from_pretrained(str(bert4_dir))


def test_a_duplicate_neuron_is_removed_at_no_cost(bert4_dir):
    from llmc.compression.arch import BERT
    from llmc.compression.prune import Plan, prune
    from llmc.compression.refit import grams

    model, tokenizer = _bert(bert4_dir)
    with torch.no_grad():  # in both layers neuron 3 computes what neuron 4 computes
        for layer in model.encoder.layer:
            layer.intermediate.dense.weight[3] = layer.intermediate.dense.weight[4]
            layer.intermediate.dense.bias[3] = layer.intermediate.dense.bias[4]
    layer = model.encoder.layer[0]
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(4, 60)]
    batches = [batch(tokenizer, [" ".join(rng.choice(words, size=12)) for _ in range(8)]) for _ in range(12)]
    ffn = [np.ones(64) for _ in range(2)]
    ffn[0][3] = ffn[1][3] = 0.0  # the one removed
    heads = [np.ones(4) for _ in range(2)]
    plan = Plan([0, 1], 63, 4)
    gram = grams(model, BERT, batches)
    plain, refitted = prune(model, BERT, plan, ffn, heads), prune(model, BERT, plan, ffn, heads, gram)
    with torch.no_grad():
        want = model(**batches[0]).last_hidden_state
        plain_error = (plain(**batches[0]).last_hidden_state - want).abs().max()
        refit_error = (refitted(**batches[0]).last_hidden_state - want).abs().max()
        assert plain_error > 5e-3 and refit_error < plain_error / 10
        # neuron 4 now writes for both: its column took neuron 3's (up to near-collinear neighbours)
        kept, original = refitted.encoder.layer[0].output.dense.weight, layer.output.dense.weight
        both = original[:, 3] + original[:, 4]
        assert (kept[:, 3] - both).norm() < 0.2 * both.norm() < (original[:, 4] - both).norm()


def test_refit_leaves_projections_with_nothing_removed_untouched(bert4_dir):
    from llmc.compression.arch import BERT
    from llmc.compression.prune import Plan, prune
    from llmc.compression.refit import grams

    model, tokenizer = _bert(bert4_dir)
    batches = [batch(tokenizer, ["w4 w5 w6 w7 w8", "w9 w10 w11"])]
    ffn, heads = [np.arange(64.0)] * 2, [np.arange(4.0)] * 2
    same = prune(model, BERT, Plan([0, 1], 64, 4), ffn, heads, grams(model, BERT, batches))
    for a, b in zip(same.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)

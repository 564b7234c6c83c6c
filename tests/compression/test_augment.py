"""Variants of the text for distillation keep every row's first and last real token and its
padding; masking writes only the mask id; a shuffled span is a permutation of the row's tokens."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _batch():
    ids = torch.arange(1, 41).reshape(2, 20)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    ids[1, 12:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _kept(got, ids):
    assert got[:, 0].tolist() == [1, 21] and got[0, 19] == 20 and got[1, 11] == 32  # first and last real tokens
    assert (got[1, 12:] == 0).all()  # padding


def test_masked_tokens_are_inner_and_only_the_mask_id():
    from llmc.compression.augment import mask_tokens

    batch = _batch()
    got = mask_tokens(batch, np.random.default_rng(0), mask_id=99, rate=0.5)["input_ids"]
    _kept(got, batch["input_ids"])
    changed = got != batch["input_ids"]
    assert 4 <= int(changed.sum()) <= 24 and (got[changed] == 99).all()


def test_a_shuffled_span_permutes_inner_tokens_of_each_row():
    from llmc.compression.augment import shuffle_span

    batch = _batch()
    got = shuffle_span(batch, np.random.default_rng(1), fraction=0.5)["input_ids"]
    _kept(got, batch["input_ids"])
    for row, length in ((0, 20), (1, 12)):
        assert sorted(got[row, :length].tolist()) == sorted(batch["input_ids"][row, :length].tolist())
    assert (got != batch["input_ids"]).any()


def test_variants_by_name_and_unknown_ones_refused():
    from llmc.compression.augment import variant

    batch = _batch()
    for kind in ("replace", "mask", "shuffle"):
        _kept(variant(batch, kind, np.random.default_rng(2), mask_id=99)["input_ids"], batch["input_ids"])
    with pytest.raises(ValueError, match="mask token"):
        variant(batch, "mask", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown augmentation"):
        variant(batch, "rotate", np.random.default_rng(0))


def test_ordinary_ids_leave_out_special_and_reserved_tokens():
    from llmc.compression.augment import ordinary_ids

    class Tokenizer:
        all_special_ids = [0, 1]

        def get_vocab(self):
            return {"[PAD]": 0, "[CLS]": 1, "[unused3]": 2, "<extra_id_0>": 3, "[": 4, "the": 5, "##ing": 6, "<0x0A>": 7}

    assert ordinary_ids(Tokenizer()).tolist() == [4, 5, 6]


def test_encoders_score_and_refit_on_their_text_and_vocabulary_variants_decoders_on_the_text():
    import importlib
    import types

    compress = importlib.import_module("llmc.compression.compress")

    class Tokenizer:
        all_special_ids = [0]

        def get_vocab(self):
            return {"[PAD]": 0, **{f"w{i}": i for i in range(1000, 1100)}}

    train = [_batch() for _ in range(100)]
    scored, refitted = compress._scored_on(Tokenizer(), types.SimpleNamespace(decoder=False), train)
    assert len(scored) == 2 * compress.IMPORTANCE_BATCHES and len(refitted) == 4 * compress.GRAM_BATCHES
    plain = 2 * compress.GRAM_BATCHES
    assert all(b is train[i] for i, b in enumerate(refitted[:plain]))  # the text itself, then its variants
    for variant in [*scored[1::2], *refitted[plain:]]:
        changed = variant["input_ids"] != train[0]["input_ids"]
        assert changed.any() and (variant["input_ids"][changed] >= 1000).all()  # replaced from the vocabulary
        _kept(variant["input_ids"], train[0]["input_ids"])
    assert all(b is train[i] for i, b in enumerate(scored) if i % 2 == 0)
    scored, refitted = compress._scored_on(Tokenizer(), types.SimpleNamespace(decoder=True), train)
    assert scored == train[: compress.IMPORTANCE_BATCHES] and refitted == train[: compress.GRAM_BATCHES]

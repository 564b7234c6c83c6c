"""A token's own bytes for OpenAI's logprobs: byte-level BPE, ``<0xHH>`` byte fallback, and plain
tokens; decoding a token alone gives U+FFFD for part of a character, its bytes do not."""

from __future__ import annotations

import pytest

from llmc.model.token_bytes import token_bytes

tokenizers = pytest.importorskip("tokenizers")
TEXT = "Repeat 🎉🎉 日本語 café!"


def _byte_level():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["Repeat after me", "a café in Paris", "plain words only"], trainer)
    return bpe


def test_byte_level_tokens_give_their_bytes():
    bpe = _byte_level()
    ids = bpe.encode(TEXT).ids
    alone = [bpe.decode([i]) for i in ids]
    assert any("\ufffd" in piece for piece in alone)  # the emoji and the CJK characters are split
    assert bytes(b for i in ids for b in token_bytes(bpe, i)) == TEXT.encode()
    end = bpe.token_to_id("<|end|>")
    assert bytes(token_bytes(bpe, end)) == b"<|end|>"
    added = _byte_level()
    added.add_tokens(["é"])  # an added token is its own text, not byte-level stand-ins
    assert bytes(token_bytes(added, added.token_to_id("é"))) == "é".encode()


def test_byte_fallback_and_plain_tokens():
    from tokenizers import Tokenizer, decoders, models

    vocab = {"<unk>": 0, "<0xE2>": 1, "hello": 2, "▁world": 3}
    plain = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    assert token_bytes(plain, 1) == [0xE2]
    assert bytes(token_bytes(plain, 2)) == b"hello"
    sentencepiece = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    sentencepiece.decoder = decoders.Metaspace()
    assert bytes(token_bytes(sentencepiece, 3)) == b" world"  # "▁" is a space

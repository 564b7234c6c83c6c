"""Grammar-constrained decoding (``response_format``) through llguidance: random-logits walks that
choose only allowed tokens end in JSON that parses and matches the schema; invalid fields give one
error line; ids past the tokenizer's vocabulary are never allowed; after completion only EOS is.

The tokenizer is a small byte-level BPE trained here on benchmark sentences (every byte is in its
alphabet, JSON punctuation included), so the tests need no downloaded model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmc.errors import LlmcError

pytest.importorskip("llguidance")
tokenizers = pytest.importorskip("tokenizers")
from llmc.generation import grammar  # noqa: E402
from llmc.generation.grammar import response_constraint  # noqa: E402

SENTENCES = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "sentences.txt"
EOS = {0, 1}  # <|endoftext|> and <|im_end|>
EXTRA = 13  # logits wider than the tokenizer's vocabulary, as padded embeddings are
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    },
    "required": ["name", "age", "color", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> tuple[Path, int]:
    """(a byte-level BPE tokenizer.json, its vocabulary size)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    lines = SENTENCES.read_text(encoding="utf-8").splitlines()[:400]
    tokenizer.train_from_iterator([*lines, '{"a": [1, 2.5e-3], "b": null, "c": true}'], trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tokenizer.save(str(path))
    return path, tokenizer.get_vocab_size()


def _walk(constraint, width: int, words: int, seed: int, limit: int = 20000) -> list[int]:
    """Seeded random logits, the argmax among allowed tokens each step, until done; checks that
    every mask allows something and nothing past the tokenizer's vocabulary."""
    rng = np.random.default_rng(seed)
    tokens: list[int] = []
    while not constraint.done:
        assert len(tokens) < limit, "the walk did not end"
        allowed = constraint.allowed()
        assert allowed.shape == (width,) and allowed.dtype == bool
        assert allowed.any() and not allowed[words:].any()
        token = int(np.argmax(np.where(allowed, rng.standard_normal(width), -np.inf)))
        constraint.advance(token)
        tokens.append(token)
    return tokens


def _text(path: Path, tokens: list[int]) -> str:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)).decode([t for t in tokens if t not in EOS])


def test_json_object_walks_parse_to_dicts(bpe):
    path, words = bpe
    values = []
    for seed in range(6):
        constraint = response_constraint({"type": "json_object"}, path, words + EXTRA, EOS)
        values.append(json.loads(_text(path, _walk(constraint, words + EXTRA, words, seed))))
    assert all(isinstance(value, dict) for value in values)
    assert any(values), "every walk closed the object at once: nothing inside was checked"


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_json_schema_walk_matches_the_schema(bpe, seed):
    path, words = bpe
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    value = json.loads(_text(path, _walk(response_constraint(fmt, path, words + EXTRA, EOS), words + EXTRA, words, seed)))
    assert list(value) == ["name", "age", "color", "tags"]  # every property, in the schema's order
    assert isinstance(value["name"], str) and len(value["name"]) <= 12
    assert type(value["age"]) is int and 0 <= value["age"] <= 120
    assert value["color"] in ("red", "green", "blue")
    assert isinstance(value["tags"], list) and len(value["tags"]) <= 3
    assert all(type(tag) is bool for tag in value["tags"])
    try:
        import jsonschema
    except ImportError:
        return
    jsonschema.validate(value, SCHEMA)


def test_after_done_only_eos_is_allowed(bpe):
    path, words = bpe
    constraint = response_constraint({"type": "json_object"}, path, words + EXTRA, EOS)
    _walk(constraint, words + EXTRA, words, seed=5)
    assert constraint.done
    assert set(np.flatnonzero(constraint.allowed())) == EOS
    with pytest.raises(ValueError, match="not allowed"):
        constraint.advance(5)
    constraint.advance(1)  # an EOS after completion is accepted
    assert constraint.done and set(np.flatnonzero(constraint.allowed())) == EOS


def test_a_token_the_grammar_refuses_raises(bpe):
    path, words = bpe
    constraint = response_constraint({"type": "json_object"}, path, words, EOS)
    allowed = constraint.allowed()
    refused = int(np.flatnonzero(~allowed)[5])
    with pytest.raises(ValueError, match="not allowed"):
        constraint.advance(refused)
    assert constraint.done and set(np.flatnonzero(constraint.allowed())) == EOS  # it ended
    with pytest.raises(ValueError, match="not allowed"):
        response_constraint({"type": "json_object"}, path, words, EOS).advance(0)  # EOS before any value


@pytest.mark.parametrize("fmt", [None, {"type": "text"}])
def test_text_or_absent_is_no_constraint(bpe, fmt):
    assert response_constraint(fmt, bpe[0], bpe[1], EOS) is None


@pytest.mark.parametrize(
    ("fmt", "names"),
    [
        ({"type": "xml"}, "response_format.type 'xml'"),
        ({}, "response_format.type None"),
        ("json", "response_format must be an object"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}}, "strict 'yes'"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}, "nonsense"),
        ({"type": "json_schema", "json_schema": {"schema": {"$ref": "http://example.com/s.json"}}}, "example.com"),
        ({"type": "json_schema", "json_schema": {"schema": {"type": "string", "pattern": "[a"}}}, "unclosed"),
        ({"type": "json_schema", "json_schema": {"schema": True}}, "response_format.json_schema.schema"),
    ],
)
def test_invalid_fields_give_one_error_line(bpe, fmt, names):
    with pytest.raises(LlmcError) as info:
        response_constraint(fmt, bpe[0], bpe[1], EOS)
    message = str(info.value)
    assert "\n" not in message and names in message and "response_format" in message


def test_no_eos_or_no_tokenizer_is_an_error(bpe, tmp_path):
    with pytest.raises(LlmcError, match="end-of-sequence"):
        response_constraint({"type": "json_object"}, bpe[0], bpe[1], set())
    with pytest.raises(LlmcError, match="tokenizer"):
        response_constraint({"type": "json_object"}, tmp_path / "tokenizer.json", bpe[1], EOS)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(LlmcError, match="cannot be used for constrained decoding"):
        response_constraint({"type": "json_object"}, tmp_path / "tokenizer.json", bpe[1], EOS)


def test_the_tokenizer_and_schema_are_compiled_once(bpe):
    path, words = bpe
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}
    response_constraint(fmt, path, words, EOS)
    tokenizers_before, schemas_before = grammar._tokenizer.cache_info(), grammar._compiled.cache_info()
    first, second = response_constraint(fmt, path, words, EOS), response_constraint(fmt, path, words, EOS)
    assert grammar._tokenizer.cache_info().misses == tokenizers_before.misses
    assert grammar._compiled.cache_info().misses == schemas_before.misses
    first.advance(int(np.flatnonzero(first.allowed())[0]))  # copies: advancing one leaves the other
    assert not np.array_equal(first.allowed(), second.allowed())


def test_strict_refuses_keywords_llguidance_cannot_enforce(bpe):
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    with pytest.raises(LlmcError, match="uniqueItems"):
        response_constraint({"type": "json_schema", "json_schema": {"schema": schema, "strict": True}}, *bpe, EOS)
    lenient = response_constraint({"type": "json_schema", "json_schema": {"schema": schema}}, *bpe, EOS)
    assert lenient is not None and lenient.allowed().any()

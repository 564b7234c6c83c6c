"""The model's context (``llmc.model.text.context_limit``): the smaller of the tokenizer's
``model_max_length`` and the context ``llmc export`` recorded in the manifest's task, named for
error lines; artifacts built before the context was recorded read the tokenizer's limit as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmc.model.text import context_length, context_limit

TOKENIZER = "tokenizer_config.json's model_max_length"
RECORDED = "config.json's max_position_embeddings"


def _artifact(path: Path, tokenizer: object = None, task: object = None) -> Path:
    path.mkdir()
    if tokenizer is not None:
        (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": tokenizer}))
    if task is not None:
        (path / "manifest.json").write_text(json.dumps({"schema_version": 1, "task": task}))
    return path


def _task(context: object, source: object = RECORDED) -> dict:
    return {"task": "text-generation", "context": context, "context_source": source}


@pytest.mark.parametrize(("tokenizer", "task", "expected"), [
    (None, None, None),
    (1e30, None, None),  # transformers' "no limit" sentinel
    (512, None, (512, TOKENIZER)),
    (512, {"task": "text-generation"}, (512, TOKENIZER)),  # built before the context was recorded
    (None, {"task": "text-generation"}, None),
    (1e30, _task(2048), (2048, RECORDED)),
    (4096, _task(2048), (2048, RECORDED)),
    (1024, _task(2048), (1024, TOKENIZER)),
    (2048, _task(2048), (2048, TOKENIZER)),  # a tie names the tokenizer
    (None, _task(2048, None), (2048, "the model's recorded context")),
    (None, _task(True), None),
    (None, _task(-3), None),
    (None, _task("2048"), None),
], ids=lambda value: json.dumps(value) if not isinstance(value, str) else value)
def test_the_context_is_the_smaller_limit_and_says_where_it_came_from(tmp_path, tokenizer, task, expected):
    artifact = _artifact(tmp_path / "a", tokenizer, task)
    assert context_limit(artifact) == expected
    assert context_length(artifact) == (expected and expected[0])


def test_a_manifest_that_is_not_json_leaves_the_tokenizer_limit(tmp_path):
    artifact = _artifact(tmp_path / "a", 256)
    (artifact / "manifest.json").write_text("{not json")
    assert context_limit(artifact) == (256, TOKENIZER)
    (artifact / "manifest.json").write_text("[1, 2]")
    assert context_limit(artifact) == (256, TOKENIZER)

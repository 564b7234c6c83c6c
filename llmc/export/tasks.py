"""What an encoder export is for (:mod:`llmc.spec.task`): which task a directory holds, the
transformers class that loads its head, the graph that computes the task's outputs and the
:class:`~llmc.spec.task.TaskSpec` written into ``model.onnx``.

Detection (``--task auto``): a sentence-transformers CrossEncoder is text-classification of a
pair; any other sentence-transformers directory (``modules.json``) is sentence-embedding (a
causal LM's too: :func:`llmc.export.hf.detect_task`); else
config.json's ``architectures``: ``...ForSequenceClassification`` text-classification,
``...ForTokenClassification`` token-classification, ``...ForQuestionAnswering``
question-answering, ``...ForMaskedLM`` fill-mask; anything else feature-extraction (the token
states, ``last_hidden_state``).

A head task is loaded with its ``AutoModelFor...`` class; weights the checkpoint does not hold
(transformers would initialise them at random, "newly initialized") are refused in one line.
``pair``: question-answering always reads a question and a context; text-classification reads a
pair when the directory is a sentence-transformers CrossEncoder (a reranker), else one text.
The graph takes ``input_ids`` and ``attention_mask``, as :func:`export_encoder` does, and
``token_type_ids`` too for a pair model whose family has segment embeddings
(:func:`encoder_inputs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmc.errors import LlmcError
from llmc.export import sentence
from llmc.export.phases import Phases
from llmc.spec.task import (
    FEATURE_EXTRACTION,
    FILL_MASK,
    QUESTION_ANSWERING,
    SENTENCE_EMBEDDING,
    TEXT_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    Task,
    TaskSpec,
)

_ARCHITECTURES = (
    ("ForSequenceClassification", TEXT_CLASSIFICATION), ("ForTokenClassification", TOKEN_CLASSIFICATION),
    ("ForQuestionAnswering", QUESTION_ANSWERING), ("ForMaskedLM", FILL_MASK),
)
# A task's transformers auto class and the table of the model types it loads.
_AUTO = {
    FEATURE_EXTRACTION: ("AutoModel", "MODEL_MAPPING_NAMES"),
    SENTENCE_EMBEDDING: ("AutoModel", "MODEL_MAPPING_NAMES"),
    TEXT_CLASSIFICATION: ("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
    TOKEN_CLASSIFICATION: ("AutoModelForTokenClassification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"),
    QUESTION_ANSWERING: ("AutoModelForQuestionAnswering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"),
    FILL_MASK: ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
}
HEAD_TASKS = frozenset({TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, QUESTION_ANSWERING, FILL_MASK})
# Outputs with one row per text; the others have one per token too.
_PER_TEXT = frozenset({TEXT_CLASSIFICATION, SENTENCE_EMBEDDING})


def detect_encoder_task(config: dict[str, Any], directory: Path | None) -> Task:
    """The task of an encoder's directory (see the module), from its files alone."""
    if directory is not None and sentence.is_cross_encoder(directory, config):
        return TEXT_CLASSIFICATION
    if directory is not None and sentence.is_sentence_transformer(directory, config):
        return SENTENCE_EMBEDDING
    named = _named_head(config)
    return named[1] if named is not None else FEATURE_EXTRACTION


def _named_head(config: dict[str, Any]) -> tuple[str, Task] | None:
    """The head class config.json's ``architectures`` names and its task (None: no head named)."""
    for architecture in (str(a) for a in config.get("architectures") or []):
        for suffix, task in _ARCHITECTURES:
            if architecture.endswith(suffix):
                return architecture, task
    return None


def check_task(task: Task, config: dict[str, Any], where: str, directory: Path | None) -> sentence.SentenceModules | None:
    """One line, before any weights are read, for an encoder task the model cannot serve; the
    sentence-transformers modules of a sentence-embedding export."""
    model_type = str(config.get("model_type") or "unknown")
    if task in HEAD_TASKS:
        from llmc.export.models import _torch

        _torch()
        from transformers.models.auto import modeling_auto

        auto, table = _AUTO[task]
        if model_type not in getattr(modeling_auto, table):
            raise LlmcError(
                f"{where}: --task {task}: model_type '{model_type}' has no {auto} class in transformers; "
                "export it with --task feature-extraction (its token states)"
            )
        named = _named_head(config)
        if named is not None and named[1] is not task:  # another head's weights may carry the same names
            raise LlmcError(
                f"{where}: --task {task}: the checkpoint is a {named[0]}, trained for {named[1]}; its head does not "
                f"serve {task}: leave --task out (or give --task {named[1]}), or export its token states with "
                "--task feature-extraction"
            )
    if directory is not None and task is TEXT_CLASSIFICATION and sentence.is_cross_encoder(directory, config):
        sentence.cross_encoder_activation(config, 1, where, directory)  # one line for one llmc cannot read
    if task is not SENTENCE_EMBEDDING:
        return None
    if directory is None or not (directory / sentence.MODULES_FILE).is_file():
        raise LlmcError(
            f"{where}: --task {task} needs a sentence-transformers directory ({sentence.MODULES_FILE} beside "
            "config.json); export this model with --task feature-extraction"
        )
    return sentence.read_modules(directory)


def auto_class(task: Task) -> Any:
    """The transformers class loading ``task``'s model."""
    import transformers

    return getattr(transformers, _AUTO[task][0])


def check_loaded(task: Task, info: dict[str, Any], directory: Path) -> None:
    """One line when the checkpoint lacks weights a head task's model needs (transformers
    initialised them at random: ``missing_keys`` of ``output_loading_info``)."""
    missing = sorted(info.get("missing_keys") or [])
    if task not in HEAD_TASKS or not missing:
        return
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    raise LlmcError(
        f"{directory}: --task {task}: the checkpoint has no weights for {shown} (transformers would initialise "
        f"them at random); give a checkpoint fine-tuned for {task}, or export it with --task feature-extraction"
    )


def task_spec(
    task: Task, config: Any, modules: sentence.SentenceModules | None, pair: bool = False,
    raw: dict[str, Any] | None = None, where: str = "config.json", directory: Path | None = None,
) -> TaskSpec:
    """The spec of an export of ``task`` from a model with transformers config ``config``;
    ``pair``: a CrossEncoder, whose score activation comes from ``raw`` (its config.json) and the
    sentence-transformers config in ``directory``."""
    if modules is not None:
        modules.check_width(getattr(config, "hidden_size", None))
        return TaskSpec(
            task, pooling=modules.pooling, normalize=modules.normalize, dimension=modules.dimension,
            max_length=modules.max_length,
        )
    if task in (TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION):
        id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
        labels = tuple(id2label.get(i, f"LABEL_{i}") for i in range(int(config.num_labels)))
        # as the config says; unset stays unset: transformers' pipeline then applies a sigmoid to
        # one label and a softmax to several (llmc.tasks reads it the same way)
        problem_type = getattr(config, "problem_type", None) if task is TEXT_CLASSIFICATION else None
        cross_encoder = pair and task is TEXT_CLASSIFICATION
        activation = (sentence.cross_encoder_activation(raw or {}, len(labels), where, directory)
                      if cross_encoder else None)
        return TaskSpec(task, labels, problem_type, pair=cross_encoder, score_activation=activation)
    return TaskSpec(task, pair=task is QUESTION_ANSWERING)


def describe(spec: TaskSpec) -> str:
    """``text-classification, 3 labels``, ``text-generation, 2048-token context``: the task and what
    sizes it, for ``llmc export``'s line."""
    parts = [spec.task.name]
    if spec.labels:
        parts.append(f"{len(spec.labels)} label{'s' if len(spec.labels) != 1 else ''}")
    if spec.pooling:
        parts.append(f"{spec.pooling} pooling{', normalized' if spec.normalize else ''}, {spec.dimension} dimensions")
    if spec.pair:
        parts.append("text pairs")
    if spec.context and not spec.task.encoder:  # an encoder's is its position table's size
        parts.append(f"{spec.context}-token context")
    return ", ".join(parts)


def encoder_inputs(spec: TaskSpec, model_config: Any) -> tuple[str, ...]:
    """The exported graph's inputs: ``input_ids``, ``attention_mask``, and ``token_type_ids`` for a
    model that may read text pairs (a text classifier: NLI, rerankers; question answering) whose
    family has segment embeddings (``type_vocab_size`` > 1: BERT, ELECTRA,
    ALBERT), which its tokenizer gives 1 on the second text: without them a reranker or a QA model
    would score pairs differently from transformers and sentence-transformers."""
    from llmc.export.models import ENCODER_INPUTS, TOKEN_TYPE_IDS

    reads_pairs = spec.pair or spec.task is TEXT_CLASSIFICATION  # a classifier may be given pairs (NLI)
    segments = reads_pairs and int(getattr(model_config, "type_vocab_size", 0) or 0) > 1
    return (*ENCODER_INPUTS, TOKEN_TYPE_IDS) if segments else ENCODER_INPUTS


def export_task(
    model: Any, spec: TaskSpec, modules: sentence.SentenceModules | None, path: Path, *, dynamo: bool,
    opset: int | None, phases: Phases,
) -> tuple[str, ...]:
    """Export ``model`` (loaded by :func:`auto_class`) computing ``spec.task.outputs`` from
    :func:`encoder_inputs` (all [batch, sequence], dynamic); returns the input names."""
    from llmc.export.models import ENCODER_INPUTS, export_encoder_module

    task = spec.task
    inputs = encoder_inputs(spec, model.config) if modules is None else ENCODER_INPUTS
    module = sentence.sentence_embedding(model, modules) if modules is not None else _outputs_module()(model, task.outputs)
    axes = {0: "batch"} if task in _PER_TEXT else {0: "batch", 1: "sequence"}
    export_encoder_module(
        module.eval(), path, {name: axes for name in task.outputs}, dynamo=dynamo, opset=opset, phases=phases,
        inputs=inputs,
    )
    return inputs


def _outputs_module():
    from llmc.export.models import _torch

    torch = _torch()

    class TaskOutputs(torch.nn.Module):
        """Calls the model with keyword inputs; returns the named fields of its output."""

        def __init__(self, model: Any, names: tuple[str, ...]) -> None:
            super().__init__()
            self.model, self.names = model, names

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            segments = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **segments)
            values = tuple(getattr(out, name) for name in self.names)
            return values[0] if len(values) == 1 else values

    return TaskOutputs

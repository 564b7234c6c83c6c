"""What a model is for: its task, named as optimum names them, and what the task needs to be
read (labels, problem type, pooling): the one contract between ``llmc export`` (which writes it),
builds (which carry it into the artifact and its manifest) and the task-level runtime
(``runner.embed`` / ``classify`` / ``extract`` / ``answer`` / ``rerank``, ``llmc predict``).

A task is a :class:`Task` object of :data:`TASKS`; code asks the object (its outputs, whether it
is an encoder), never compares names. The exported ``model.onnx`` carries the :class:`TaskSpec`
as the JSON of its ``llmc.task`` metadata entry (:func:`read_spec` / :func:`spec_metadata`),
which every pass keeps, so an artifact built by any precision or target still knows its task.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from llmc.errors import LlmcError

TASK_METADATA = "llmc.task"  # the ONNX metadata_props key holding TaskSpec.to_json()


@dataclasses.dataclass(frozen=True)
class Task:
    name: str  # optimum's name (``--task``)
    outputs: tuple[str, ...]  # the exported graph's outputs, in order
    encoder: bool = True
    description: str = ""

    def __str__(self) -> str:
        return self.name


FEATURE_EXTRACTION = Task("feature-extraction", ("last_hidden_state",), description="token states")
SENTENCE_EMBEDDING = Task(
    "sentence-embedding", ("sentence_embedding",),
    description="one vector per text (sentence-transformers pooling, dense layers and normalisation in the graph)",
)
TEXT_CLASSIFICATION = Task(
    "text-classification", ("logits",), description="labels of a text or a text pair (cross-encoder rerankers too)"
)
TOKEN_CLASSIFICATION = Task("token-classification", ("logits",), description="a label per token (entities)")
QUESTION_ANSWERING = Task(
    "question-answering", ("start_logits", "end_logits"), description="an answer span in a context"
)
FILL_MASK = Task("fill-mask", ("logits",), description="the vocabulary's scores at every position")
TEXT_GENERATION = Task(
    "text-generation", ("logits",), encoder=False, description="a causal LM with its KV cache"
)
TASKS: tuple[Task, ...] = (
    FEATURE_EXTRACTION, SENTENCE_EMBEDDING, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, QUESTION_ANSWERING,
    FILL_MASK, TEXT_GENERATION,
)
# Earlier names ``--task`` still takes.
ALIASES: Mapping[str, Task] = {"encoder": FEATURE_EXTRACTION, "decoder": TEXT_GENERATION}

PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
POOLING_MODES = ("mean", "cls", "max", "lasttoken")
SCORE_ACTIVATIONS = ("sigmoid", "identity", "tanh")  # a cross-encoder's score of its one logit


def task_named(name: str, flag: str = "--task") -> Task:
    """The :class:`Task` called ``name`` (or an alias), else one line listing the names."""
    for task in TASKS:
        if task.name == name:
            return task
    if name in ALIASES:
        return ALIASES[name]
    names = ", ".join(t.name for t in TASKS)
    raise LlmcError(f"{flag} {name!r} is not a task llmc knows; use one of: auto, {names}")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A model's task and what reading its outputs needs.

    ``labels``: the head's label names in id order (``id2label``), for text and token
    classification; ``problem_type``: one of :data:`PROBLEM_TYPES` (softmax, sigmoid or the raw
    value); ``pooling``: one of :data:`POOLING_MODES` and ``normalize`` for sentence embeddings
    (already applied in the graph: recorded so a user can see it); ``dimension``: the embedding's
    size; ``pair``: the model reads two texts (a cross-encoder, question-answering);
    ``max_length``: the tokens a text is truncated to where the model says so (sentence-transformers'
    ``max_seq_length``), else the tokenizer's limit applies; ``score_activation``: one of
    :data:`SCORE_ACTIVATIONS`, what a sentence-transformers CrossEncoder applies to its logit
    (``CrossEncoder.predict``'s score, which ``rerank`` gives); ``context``: the positions a
    decoder was trained for (its config's ``max_position_embeddings`` as transformers names it for
    the architecture, a GGUF's ``context_length``), or the tokens an encoder's position table
    holds, which ``context_source`` names for error lines (``llmc.model.text.context_limit``);
    None in exports made before llmc recorded it (and for encoders without a position table).
    """

    task: Task
    labels: tuple[str, ...] = ()
    problem_type: str | None = None
    pooling: str | None = None
    normalize: bool = False
    dimension: int | None = None
    pair: bool = False
    max_length: int | None = None
    score_activation: str | None = None
    context: int | None = None
    context_source: str | None = None

    def __post_init__(self) -> None:
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise LlmcError(f"problem_type {self.problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")
        if self.pooling is not None and self.pooling not in POOLING_MODES:
            raise LlmcError(f"pooling {self.pooling!r} is not one of {', '.join(POOLING_MODES)}")
        if self.score_activation is not None and self.score_activation not in SCORE_ACTIVATIONS:
            raise LlmcError(f"score_activation {self.score_activation!r} is not one of {', '.join(SCORE_ACTIVATIONS)}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task.name}
        if self.labels:
            out["labels"] = list(self.labels)
        optional = ("problem_type", "pooling", "dimension", "max_length", "score_activation", "context", "context_source")
        for key in optional:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.normalize:
            out["normalize"] = True
        if self.pair:
            out["pair"] = True
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TaskSpec:
        """The spec in ``data`` (parsed JSON), else one line naming ``where`` and the fix."""
        def refuse(what: str) -> LlmcError:
            return LlmcError(f"{where}: the task record {what}; re-export the model with `llmc export`")

        if not isinstance(data, dict) or not isinstance(data.get("task"), str):
            raise refuse("is not an object with a 'task' name")
        try:
            task = task_named(data["task"], flag="task")
        except LlmcError:
            raise refuse(f"names an unknown task {data['task']!r}") from None
        labels = data.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise refuse("has 'labels' that are not a list of strings")
        for key in ("dimension", "max_length", "context"):
            value = data.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise refuse(f"has a {key!r} that is not a positive integer")
        if not isinstance(data.get("context_source", ""), str):
            raise refuse("has a 'context_source' that is not a string")
        try:
            return cls(
                task, tuple(labels), data.get("problem_type"), data.get("pooling"), bool(data.get("normalize")),
                data.get("dimension"), bool(data.get("pair")), data.get("max_length"), data.get("score_activation"),
                data.get("context"), data.get("context_source"),
            )
        except LlmcError as exc:
            raise refuse(f"is invalid ({exc})") from None

    @classmethod
    def from_json(cls, text: str, where: str) -> TaskSpec:
        try:
            data = json.loads(text)
        except ValueError:
            raise LlmcError(f"{where}: the task record is not JSON; re-export the model with `llmc export`") from None
        return cls.from_dict(data, where)


def spec_metadata(spec: TaskSpec) -> dict[str, str]:
    """The ONNX ``metadata_props`` entry that carries ``spec``."""
    return {TASK_METADATA: spec.to_json()}


def read_spec(metadata: Mapping[str, str], where: str) -> TaskSpec | None:
    """The spec a model's ``metadata_props`` carry, None for a model exported without one."""
    text = metadata.get(TASK_METADATA)
    return None if text is None else TaskSpec.from_json(text, where)


def task_shapes(model: Any, given: dict[str, tuple[int, ...]] | None = None) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """``llmc.model.feeds.resolve_shapes`` of an ``onnx_ir`` model, an assumed sequence no longer
    than the tokens an encoder export's position table holds (its task record's ``context``; a
    record read badly is reported where the task is read)."""
    from llmc.model.feeds import resolve_shapes

    try:
        spec = read_spec(model.metadata_props, "model.onnx")
    except LlmcError:
        spec = None
    return resolve_shapes(model, given, spec.context if spec is not None and spec.task.encoder else None)

"""An artifact as the task runtime sees it: its :class:`TaskSpec`, its tokenizer and how to run it.

The spec is read from the model's ONNX metadata (the ``llmc.task`` entry ``llmc export`` writes
and every pass keeps): from the ONNX Runtime session when there is one, else from ``model.onnx``
without its external data. An artifact without one (exported before export recorded tasks) is
refused in one line that says to re-export it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmc.errors import LlmcError
from llmc.spec.task import (
    FEATURE_EXTRACTION,
    FILL_MASK,
    QUESTION_ANSWERING,
    SENTENCE_EMBEDDING,
    TEXT_CLASSIFICATION,
    TEXT_GENERATION,
    TOKEN_CLASSIFICATION,
    Task,
    TaskSpec,
    read_spec,
)

Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

# What each task is read with: the runner's method (and `llmc predict`), for the refusals.
_READ_WITH: dict[Task, str] = {
    SENTENCE_EMBEDDING: "runner.embed or runner.rerank",
    FEATURE_EXTRACTION: "runner.embed (mean pooling) or runner.rerank",
    TEXT_CLASSIFICATION: "runner.classify or runner.rerank",
    TOKEN_CLASSIFICATION: "runner.extract",
    QUESTION_ANSWERING: "runner.answer",
    FILL_MASK: "runner.fill_mask",
    TEXT_GENERATION: "runner.generate (`llmc generate`)",
}


# Each task's outputs: their rank, and whether axis 1 is the sequence (cut to each text's tokens).
_OUTPUTS: dict[Task, tuple[int, bool, str]] = {
    SENTENCE_EMBEDDING: (2, False, "[batch, dimension]"),
    FEATURE_EXTRACTION: (3, True, "[batch, sequence, hidden]"),
    TEXT_CLASSIFICATION: (2, False, "[batch, labels]"),
    TOKEN_CLASSIFICATION: (3, True, "[batch, sequence, labels]"),
    QUESTION_ANSWERING: (2, True, "[batch, sequence]"),
    FILL_MASK: (3, True, "[batch, sequence, vocabulary]"),
}


def metadata_of(session: Any, model_path: Path) -> dict[str, str]:
    """The model's ``metadata_props``: from an ONNX Runtime session, else from the ONNX file
    (its graph only: external data is not read)."""
    meta = getattr(session, "get_modelmeta", None)
    if meta is not None:
        return dict(meta().custom_metadata_map)
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    return {prop.key: prop.value for prop in proto.metadata_props}


class TaskModel:
    """An artifact's task spec, tokenizer (loaded on first use) and run function."""

    def __init__(
        self, where: str, spec: TaskSpec | None, run: Run, input_names: list[str], output_names: list[str],
        artifact: Path | None = None, max_length: int | None = None,
    ) -> None:
        self.where, self.spec, self.run = where, spec, run
        self.input_names, self.output_names = list(input_names), list(output_names)
        self.artifact = artifact if artifact is not None else Path(where)
        self._max_length = max_length

    def require(self, verb: str, *tasks: Task) -> TaskSpec:
        """The spec, if its task is one of ``tasks``; else one line saying what the model can do."""
        spec = self.spec
        if spec is None:
            raise LlmcError(
                f"{self.where}: the model records no task (it was exported before `llmc export` recorded "
                f"one, or not by llmc), so llmc cannot {verb} with it; re-export it with `llmc export` and rebuild"
            )
        if not any(spec.task is task for task in tasks):
            hint = _READ_WITH.get(spec.task, "runner.run")
            raise LlmcError(f"{self.where}: a {spec.task} model cannot {verb}; read it with {hint}")
        missing = [name for name in spec.task.outputs if name not in self.output_names]
        if missing:
            raise LlmcError(
                f"{self.where}: its task record says {spec.task} but the model has no output {missing[0]!r} "
                f"(it has {', '.join(self.output_names)}); re-export it with `llmc export` and rebuild"
            )
        return spec

    def labels(self, count: int) -> list[str]:
        """The spec's label names for a head of ``count`` labels (``LABEL_i`` where it names none)."""
        labels = self.spec.labels if self.spec is not None else ()
        if not labels:
            return [f"LABEL_{i}" for i in range(count)]  # transformers' names for a config without id2label
        if len(labels) != count:
            raise LlmcError(
                f"{self.where}: its task record names {len(labels)} labels but the model gives {count} scores; "
                "re-export it with `llmc export` and rebuild"
            )
        return list(labels)

    def rows(self, encodings: Sequence[Any], batch_size: int) -> list[dict[str, np.ndarray]]:
        """Each encoding's outputs (``llmc.tasks.batching``), the task's outputs' shapes checked."""
        from llmc.tasks.batching import run_batched

        assert self.spec is not None  # require() first
        rank, per_token, shape = _OUTPUTS[self.spec.task]

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            outputs = self.run(feeds)
            batch, width = feeds["input_ids"].shape
            for name in self.spec.task.outputs:
                array = outputs[name]
                if array.ndim != rank or array.shape[0] != batch or (per_token and array.shape[1] != width):
                    raise LlmcError(
                        f"{self.where}: its output {name!r} has shape {list(array.shape)} for {batch} texts of "
                        f"{width} tokens, not a {self.spec.task} model's {shape}; re-export it with `llmc export`"
                    )
            return outputs

        return run_batched(run, encodings, self.input_names, batch_size, per_token=per_token)

    @functools.cached_property
    def tokenizer(self) -> Any:
        from llmc.tasks.text import TextEncoder

        return TextEncoder.load(self.artifact, self.max_length)

    @property
    def max_length(self) -> int | None:
        """Tokens a text is truncated to: the spec's ``max_length`` (sentence-transformers'
        ``max_seq_length``) within the model's context (:func:`llmc.model.text.context_length`: the
        tokenizer's ``model_max_length``; None: no limit known)."""
        if self._max_length is None:
            from llmc.model.text import context_length

            limits = [n for n in (context_length(self.artifact), self.spec and self.spec.max_length) if n]
            self._max_length = min(limits) if limits else None
        return self._max_length

    @property
    def takes_token_types(self) -> bool:
        return "token_type_ids" in self.input_names


def task_model(runner: Any) -> TaskModel:
    """The :class:`TaskModel` of a loaded runtime runner (``llmc.load``)."""
    artifact = runner.artifact
    where = str(artifact.path)
    spec = read_spec(metadata_of(runner.session, artifact.model_path), where)
    return TaskModel(where, spec, runner.run, runner.input_names, runner.output_names, artifact.path)

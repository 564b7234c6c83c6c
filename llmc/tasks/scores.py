"""Scores of logits as transformers' text-classification pipeline gives them: the raw value for
``regression``, sigmoid for ``multi_label_classification`` or a single label, softmax for
``single_label_classification`` or several labels."""

from __future__ import annotations

import numpy as np

from llmc.spec.task import TaskSpec


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def activation(spec: TaskSpec, num_labels: int) -> str:
    """``none``, ``sigmoid`` or ``softmax``: transformers' pipeline rule, in its order."""
    if spec.problem_type == "regression":
        return "none"
    if spec.problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"


def label_scores(logits: np.ndarray, spec: TaskSpec) -> np.ndarray:
    """The scores of a [..., num_labels] logits array."""
    kind = activation(spec, logits.shape[-1])
    if kind == "sigmoid":
        return sigmoid(logits)
    if kind == "softmax":
        return softmax(logits)
    return np.asarray(logits, dtype=np.float64)


def cross_encoder_scores(logits: np.ndarray, spec: TaskSpec) -> np.ndarray:
    """A CrossEncoder's scores of its one logit per pair, as ``CrossEncoder.predict`` gives them
    (``spec.score_activation``, recorded at export); the logit where nothing was recorded."""
    logits = np.asarray(logits, dtype=np.float64)
    if spec.score_activation == "sigmoid":
        return sigmoid(logits)
    if spec.score_activation == "tanh":
        return np.tanh(logits)
    return logits

"""Tiny task artifacts, exported by ``llmc export`` and built once per session
(``tests/tasks/models.py``; the embedder and the cross-encoder, which tests/serving serves too,
are in tests/conftest.py)."""

from __future__ import annotations

import pytest

from llmc.spec.task import (
    FEATURE_EXTRACTION,
    FILL_MASK,
    QUESTION_ANSWERING,
    TEXT_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    TaskSpec,
)
from tests.tasks.models import ENTITIES, SENTIMENT, TaskModel, export_task_model


def _build(tmp_path_factory, name: str, spec: TaskSpec) -> TaskModel:
    return export_task_model(spec, tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def sentiment(tmp_path_factory) -> TaskModel:
    return _build(tmp_path_factory, "sentiment", TaskSpec(TEXT_CLASSIFICATION, SENTIMENT, "single_label_classification"))


@pytest.fixture(scope="session")
def ner(tmp_path_factory) -> TaskModel:
    return _build(tmp_path_factory, "ner", TaskSpec(TOKEN_CLASSIFICATION, ENTITIES))


@pytest.fixture(scope="session")
def qa(tmp_path_factory) -> TaskModel:
    return _build(tmp_path_factory, "qa", TaskSpec(QUESTION_ANSWERING, pair=True))


@pytest.fixture(scope="session")
def features(tmp_path_factory) -> TaskModel:
    """A feature-extraction model whose graph takes no token_type_ids."""
    return _build(tmp_path_factory, "features", TaskSpec(FEATURE_EXTRACTION))


@pytest.fixture(scope="session")
def masked_lm(tmp_path_factory) -> TaskModel:
    return _build(tmp_path_factory, "masked_lm", TaskSpec(FILL_MASK))

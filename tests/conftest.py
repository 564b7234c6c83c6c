"""Shared fixtures: small models built on the fly (nothing is downloaded)."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from tests.helpers import TINY_BERT, TINY_GPT2, TINY_LLAMA, make_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests build the same tiny models many times with patched internals: the build cache stays off
# unless a test turns it on (tests/compiler/test_cache.py, with its own LLMC_CACHE_DIR).
os.environ["LLMC_NO_CACHE"] = "1"


def pytest_runtest_setup(item):
    """Before each test: collect the garbage of the tests before it, then freeze what is still
    alive (imports, session fixtures) out of the cyclic collector's reach.

    Builds call ``gc.collect()`` several times each (``llmc.model.io.release_freed_memory``), and a
    full collection walks every tracked object: in a worker that has imported torch and
    transformers and built hundreds of models that is 0.2 to over 1 s a call, most of a tiny
    model's build. Frozen objects are skipped, so a collection walks only what the running test
    made (the test still frees its own cycles). Measured on tests/fuzz/test_fuzz_cache.py alone:
    26 s -> 12 s."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session", autouse=True)
def _private_config_home(tmp_path_factory):
    """The build cache's signing key (``$XDG_CONFIG_HOME/llmc/cache.key``) in a folder of the
    test session, never the user's own."""
    before = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
    yield
    if before is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = before



@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_bert_dynamo(models_dir) -> Path:
    from llmc.export import bert_model, export_encoder

    return export_encoder(bert_model(**TINY_BERT), models_dir / "tiny_bert_dynamo.onnx", dynamo=True)


@pytest.fixture(scope="session")
def tiny_bert_legacy(models_dir) -> Path:
    from llmc.export import bert_model, export_encoder

    return export_encoder(bert_model(**TINY_BERT), models_dir / "tiny_bert_legacy.onnx", dynamo=False)


@pytest.fixture(scope="session")
def minilm_dynamo(models_dir) -> Path:
    from llmc.export import export_encoder, minilm_model

    return export_encoder(minilm_model(), models_dir / "minilm.onnx", dynamo=True)


@pytest.fixture()
def relu_model(tmp_path) -> Path:
    """y = Relu(x + w) with a dynamic batch dim."""
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3])
    w = onnx.numpy_helper.from_array(np.arange(3, dtype=np.float32), "w")
    model = make_model(
        [oh.make_node("Add", ["x", "w"], ["s"]), oh.make_node("Relu", ["s"], ["y"])], [x], [y], [w]
    )
    path = tmp_path / "relu.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2_dynamo(models_dir) -> Path:
    from llmc.export import export_decoder, gpt2_model

    return export_decoder(gpt2_model(**TINY_GPT2), models_dir / "tiny_gpt2_dynamo.onnx", dynamo=True)


@pytest.fixture(scope="session")
def tiny_gpt2_legacy(models_dir) -> Path:
    from llmc.export import export_decoder, gpt2_model

    return export_decoder(gpt2_model(**TINY_GPT2), models_dir / "tiny_gpt2_legacy.onnx", dynamo=False)


@pytest.fixture(scope="session")
def tiny_llama_dynamo(models_dir) -> Path:
    from llmc.export import export_decoder, llama_model

    return export_decoder(llama_model(**TINY_LLAMA), models_dir / "tiny_llama_dynamo.onnx", dynamo=True)


@pytest.fixture(scope="session")
def tiny_llama_legacy(models_dir) -> Path:
    from llmc.export import export_decoder, llama_model

    return export_decoder(llama_model(**TINY_LLAMA), models_dir / "tiny_llama_legacy.onnx", dynamo=False)


@pytest.fixture(scope="session")
def cross_encoder(tmp_path_factory):
    """A one-logit cross-encoder (reranker), ``tests/tasks/models.py``: no problem type, so its
    classify score is a sigmoid; no activation recorded, so sentence-transformers scores it with a
    sigmoid too."""
    from llmc.spec.task import TEXT_CLASSIFICATION, TaskSpec
    from tests.tasks.models import export_task_model

    spec = TaskSpec(TEXT_CLASSIFICATION, ("LABEL_0",), pair=True, score_activation="sigmoid")
    return export_task_model(spec, tmp_path_factory.mktemp("cross"))


@pytest.fixture(scope="session")
def embedder(tmp_path_factory):
    """A sentence-embedding model (mean pooling, normalised, 64 dims), ``tests/tasks/models.py``."""
    from llmc.spec.task import SENTENCE_EMBEDDING, TaskSpec
    from tests.tasks.models import export_task_model

    spec = TaskSpec(SENTENCE_EMBEDDING, pooling="mean", normalize=True, dimension=64)
    return export_task_model(spec, tmp_path_factory.mktemp("embedder"))

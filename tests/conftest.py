"""Shared fixtures: small models built on the fly (nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_BERT = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    vocab_size=1000,
    max_position_embeddings=256,
)


def make_model(nodes, inputs, outputs, initializers=(), opset=18, extra_opsets=()) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [oh.make_opsetid("", opset), *(oh.make_opsetid(d, v) for d, v in extra_opsets)]
    return oh.make_model(graph, opset_imports=opsets, ir_version=10)


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


TINY_GPT2 = dict(
    n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=256, bos_token_id=0, eos_token_id=0
)
TINY_LLAMA = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=1000,
    max_position_embeddings=256,
)


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

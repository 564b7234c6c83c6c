"""Model builders and tiny model configs shared by the tests (conftest.py holds the fixtures)."""

from __future__ import annotations

import onnx
import onnx.helper as oh

TINY_BERT = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    vocab_size=1000,
    max_position_embeddings=256,
)

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


def make_model(nodes, inputs, outputs, initializers=(), opset=18, extra_opsets=()) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [oh.make_opsetid("", opset), *(oh.make_opsetid(d, v) for d, v in extra_opsets)]
    return oh.make_model(graph, opset_imports=opsets, ir_version=10)

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


def manifest_json(**sections) -> dict:
    """The smallest manifest.json ``llmc.runtime.manifest.Manifest.from_dict`` accepts: an fp32
    ort artifact of one model.onnx; ``sections`` replace or add top-level sections."""
    digest = "0" * 64
    return {
        "schema_version": 1, "llmc_version": "0", "source": {"path": None, "sha256": digest}, "target": "ort",
        "precision": "fp32", "pipeline": "prune", "passes": [], "rewrites": {}, "fusions": {}, "fused_ops": {},
        "not_fused": [], "fusion_families": {"enabled": [], "disabled": []}, "nodes": {"before": 1, "after": 1},
        "compile_seconds": 0.0, "validity": None, "memory": {}, "shapes": {"inputs": {}, "assumed": {}},
        "verification": {"max_abs_error": 0.0, "max_rel_error": 0.0, "cosine_min": 1.0, "tolerance": 1e-4},
        "artifact": {"files": ["model.onnx"], "model_sha256": digest, "external_data": False,
                     "sha256": {"model.onnx": digest}},
        "versions": {}, "session": {"providers": ["CPUExecutionProvider"], "options": {}, "create_seconds": 0.0},
        **sections,
    }

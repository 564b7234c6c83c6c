"""Model builders and tiny model configs shared by the tests (conftest.py holds the fixtures)."""

from __future__ import annotations

import numpy as np
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


def decoder_feeds(config, batch: int, sequence: int, past: int, pad: int = 0) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Random tokens and cache for a decoder export of ``config``; the last batch row is
    left-padded by ``pad`` tokens (in the past)."""
    from llmc.export import decoder_cache_shape, decoder_input_names

    layers, kv_heads, head_dim = decoder_cache_shape(config)
    rng = np.random.default_rng(batch * 1000 + sequence * 10 + past)
    mask = np.ones((batch, past + sequence), dtype=np.int64)
    mask[-1, :pad] = 0
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)[:, past:]
    ids = rng.integers(0, config.vocab_size, (batch, sequence), dtype=np.int64)
    cache = [
        rng.standard_normal((batch, kv_heads, past, head_dim), dtype=np.float32) for _ in range(2 * layers)
    ]
    return dict(zip(decoder_input_names(layers), [ids, mask, positions, *cache], strict=True))


def eager_decoder(model, feeds: dict[str, np.ndarray], *, windowed: bool = True) -> list[np.ndarray]:  # noqa: ANN001
    """transformers on a decoder export's inputs: logits and every layer's key/value cache.
    ``windowed``: the cache built with the model's config, as transformers builds it
    (sliding-window layers keep their window); otherwise every layer's cache is full, the
    export's contract (present = past + current, the window in the mask)."""
    import torch
    from transformers import DynamicCache

    past = [torch.from_numpy(v) for k, v in feeds.items() if k.startswith("past_key_values.")]
    pairs = list(zip(past[0::2], past[1::2], strict=True)) if past[0].shape[2] else None
    cache = DynamicCache(pairs, config=model.config) if windowed else DynamicCache(pairs)
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(feeds["input_ids"]),
            attention_mask=torch.from_numpy(feeds["attention_mask"]),
            position_ids=torch.from_numpy(feeds["position_ids"]),
            past_key_values=cache,
            use_cache=True,
        )
    layers = out.past_key_values.layers
    return [out.logits.numpy(), *(t.numpy() for layer in layers for t in (layer.keys, layer.values))]

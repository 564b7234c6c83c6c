"""Decoder exports (GPT-2, LLaMA-style; dynamo and legacy): one graph runs prefill and decode in
onnxruntime and matches the HF model called eagerly with the same cache."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.helpers import TINY_GPT2, TINY_LLAMA, decoder_feeds, eager_decoder

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

FIXTURES = ["tiny_gpt2_dynamo", "tiny_gpt2_legacy", "tiny_llama_dynamo", "tiny_llama_legacy"]


@pytest.fixture(scope="module")
def eager_models() -> dict:
    """The same seeded tiny models the fixtures export."""
    from llmc.export import gpt2_model, llama_model

    return {"gpt2": gpt2_model(**TINY_GPT2), "llama": llama_model(**TINY_LLAMA)}


@pytest.mark.parametrize("fixture", FIXTURES)
@pytest.mark.parametrize(
    "case",
    [
        pytest.param((2, 16, 0, 0), id="prefill"),
        pytest.param((2, 16, 0, 3), id="prefill-padded"),
        pytest.param((1, 1, 16, 0), id="decode"),
        pytest.param((2, 1, 128, 5), id="decode-padded"),
    ],
)
def test_decoder_matches_eager(request, eager_models, fixture, case):
    from llmc.export import decoder_output_names

    path = request.getfixturevalue(fixture)
    model = eager_models["gpt2" if "gpt2" in fixture else "llama"]
    batch, sequence, past, pad = case
    feeds = decoder_feeds(model.config, batch, sequence, past, pad)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)
    want = eager_decoder(model, feeds)
    assert [o.name for o in sess.get_outputs()] == decoder_output_names(model.config.num_hidden_layers)
    assert got[0].shape == (batch, sequence, model.config.vocab_size)
    # Padding tokens' own outputs are meaningless (their attention row is empty), so only real tokens count.
    real = feeds["attention_mask"].astype(bool)
    for name, g, w in zip(decoder_output_names(model.config.num_hidden_layers), got, want, strict=True):
        assert g.shape == w.shape, name
        keep = real[:, past:, None] if name == "logits" else real[:, None, :, None]
        g, w = np.where(keep, g, 0), np.where(keep, w, 0)
        assert np.abs(g - w).max() <= 1e-4 * np.abs(w).max(), name
    # present = past (returned unchanged) followed by the new keys/values.
    np.testing.assert_array_equal(got[1][:, :, :past], feeds["past_key_values.0.key"])


@pytest.mark.parametrize("fixture", FIXTURES)
def test_decoder_io_names_and_dims(request, eager_models, fixture):
    from llmc.export import decoder_cache_shape, decoder_input_names, decoder_output_names

    model = onnx.load(request.getfixturevalue(fixture), load_external_data=False)
    config = eager_models["gpt2" if "gpt2" in fixture else "llama"].config
    layers, kv_heads, head_dim = decoder_cache_shape(config)
    assert [i.name for i in model.graph.input] == decoder_input_names(layers)
    assert [o.name for o in model.graph.output] == decoder_output_names(layers)

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = {i.name: dims(i) for i in model.graph.input}
    assert inputs["input_ids"] == inputs["position_ids"] == ["batch", "sequence"]
    assert inputs["attention_mask"] == ["batch", "total_sequence"]
    for name in decoder_input_names(layers)[3:]:
        assert inputs[name] == ["batch", kv_heads, "past_sequence", head_dim]
    outputs = {o.name: dims(o) for o in model.graph.output}
    assert outputs["logits"] == ["batch", "sequence", config.vocab_size]
    total = "past_sequence + sequence" if "dynamo" in fixture else "total_sequence"
    for name in decoder_output_names(layers)[1:]:
        assert outputs[name] == ["batch", kv_heads, total, head_dim]

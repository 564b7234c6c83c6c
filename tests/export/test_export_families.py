"""Every decoder family ``llmc export`` lists exports exactly: a small random-weight model of each
(``llmc.export.families``), exported by ``export_decoder``, run in onnxruntime and compared with
transformers: prefill, a left-padded prefill, decode steps on a cache (longer than the sliding
windows, and past LongRoPE's original length), a left-padded decode batch. Families the export
cannot reproduce are refused in one line, before any loading.

Each family's export takes 5-15 s on two cores, so all but a few are ``slow`` (``make test-slow``):
the quick ones cover the mixtures of experts (Mixtral; GPT-OSS: transposed, biased experts, top-3,
attention sinks) and LongRoPE past its original length.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from llmc.errors import LlmcError
from tests.cli.test_bad_inputs import _assert_one_line_error
from tests.helpers import decoder_feeds, eager_decoder

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

from llmc.export.families import FAMILIES, VARIANTS  # noqa: E402

QUICK = {"mixtral", "gpt_oss", "phi3-rope-longrope"}
NAMES = [*sorted(FAMILIES), *sorted(VARIANTS)]

# (batch, new tokens, cached tokens, left padding of the last row). The test models' sliding
# windows are 8 tokens and LongRoPE's original length 256: 12 new or 20 cached tokens cross the
# windows, 300 cached tokens cross LongRoPE's switch to its long factors.
CASES = {
    "prefill": (2, 12, 0, 0),
    "prefill-padded": (2, 12, 0, 3),
    "decode": (1, 1, 20, 0),
    "decode-padded": (2, 1, 20, 5),
    "decode-long": (1, 1, 300, 0),
}


def _close(got: np.ndarray, want: np.ndarray) -> float:
    """The largest difference relative to the reference's largest magnitude."""
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in QUICK else pytest.mark.slow) for n in NAMES]
)
def test_family_export_matches_transformers(tmp_path, name):
    from llmc.export import decoder_output_names, export_decoder
    from llmc.export.families import family_model

    model = family_model(name)
    path = export_decoder(model, tmp_path / "model.onnx")
    # The export leaves the model as it was (no swapped experts, no state cached by tracing): the
    # references below are this same model, called eagerly after the export.
    assert not any("forward" in module.__dict__ for module in model.modules())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = decoder_output_names(model.config.num_hidden_layers)
    assert [o.name for o in session.get_outputs()] == names
    for case, (batch, sequence, past, pad) in CASES.items():
        feeds = decoder_feeds(model.config, batch, sequence, past, pad)
        got = session.run(None, feeds)
        logits = eager_decoder(model, feeds, windowed=True)[0]
        presents = eager_decoder(model, feeds, windowed=False)[1:]
        # Padding tokens' own outputs are meaningless (their attention row is empty): real tokens only.
        real = feeds["attention_mask"].astype(bool)
        tokens, cached = real[:, past:, None], real[:, None, :, None]
        assert got[0].shape == logits.shape == (batch, sequence, model.config.vocab_size), case
        assert _close(np.where(tokens, got[0], 0), np.where(tokens, logits, 0)) <= 1e-4, case
        for output, g, w in zip(names[1:], got[1:], presents, strict=True):
            assert g.shape == w.shape, (case, output)
            assert _close(np.where(cached, g, 0), np.where(cached, w, 0)) <= 1e-4, (case, output)
        np.testing.assert_array_equal(got[1][:, :, :past], feeds["past_key_values.0.key"])


def test_every_family_is_listed_for_llmc_export():
    """The families tested above are exactly the causal LMs ``llmc export`` takes."""
    from llmc.export.hf import DECODER_TYPES

    assert set(FAMILIES) == set(DECODER_TYPES)


@pytest.mark.parametrize(
    ("config", "fragments"),
    [
        pytest.param(
            {"model_type": "custom", "architectures": ["CustomForCausalLM"]},
            ["model_type 'custom' is a causal LM llmc export does not export", "mixtral"],
            id="unknown-causal-lm",
        ),
        pytest.param(
            {"model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"]},
            ["model_type 'deepseek_v3'"],
            id="unlisted-family",
        ),
        pytest.param(
            {"model_type": "falcon", "alibi": True, "architectures": ["FalconForCausalLM"]},
            ["falcon with alibi"],
            id="falcon-alibi",
        ),
        pytest.param(
            {"model_type": "llama", "rope_scaling": {"type": "dynamic", "factor": 2.0}},
            ["llama with dynamic NTK RoPE"],
            id="dynamic-rope",
        ),
        pytest.param(
            {"model_type": "gemma3_text", "rope_parameters": {"full_attention": {"rope_type": "dynamic"}}},
            ["gemma3_text with dynamic NTK RoPE"],
            id="dynamic-rope-per-layer-type",
        ),
    ],
)
def test_what_cannot_be_exported_exactly_is_refused_in_one_line(tmp_path, config, fragments):
    """Refused from config.json alone, before any weights are read (there are none here), with
    --task decoder too."""
    from llmc.cli.main import app
    from llmc.export.hf import detect_task

    with pytest.raises(LlmcError, match=fragments[0]):
        detect_task(config)
    source = tmp_path / "model"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(config))
    runner = CliRunner()
    for task in ([], ["--task", "decoder"]):
        result = runner.invoke(app, ["export", str(source), "-o", str(tmp_path / "out"), *task])
        _assert_one_line_error(result, str(source / "config.json"), *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"model_type": "cohere"}, "cohere's interleaved rotary embedding"),
        ({"model_type": "phi3", "rope_scaling": {"type": "longrope"}}, "phi3's LongRoPE"),
    ],
)
def test_what_the_legacy_exporter_fails_on_is_refused_in_one_line(tmp_path, config, fragment):
    from llmc.cli.main import app
    from llmc.export.hf import detect_task
    from llmc.spec.task import TEXT_GENERATION

    assert detect_task(config) == TEXT_GENERATION  # the dynamo exporter takes it
    source = tmp_path / "model"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["export", str(source), "-o", str(tmp_path / "out"), "--legacy"])
    _assert_one_line_error(result, fragment, "without --legacy")

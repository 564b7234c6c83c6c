"""``logits``: a decoder's LM head runs on the positions ``logits_to_keep`` names (llmc.passes.logits)."""

from __future__ import annotations

import numpy as np
import pytest

import llmc
from llmc.compiler.verify import keeps_last_logits
from llmc.errors import LlmcError
from llmc.model import decoder
from llmc.model.feeds import make_feeds, prefill_feeds, resolve_shapes, with_defaults
from llmc.passes.logits import why_not
from llmc.runtime.ort import run_model
from tests.passes.pass_helpers import apply, build, const, node, vi

H, V, KV = 16, 40, 2  # hidden, vocabulary, kv heads x head size 1


def _toy_decoder(hidden_output: bool = False, scaled: bool = False):
    """input_ids -> embedding -> Tanh -> (a cache-like present) and an LM head MatMul -> logits
    (``scaled``: times 0.5 after the head, as a soft-capped head is)."""
    rng = np.random.default_rng(0)
    outputs = [vi("logits", ["batch", "sequence", V]), vi("present.0.key", ["batch", KV, "total", 1])]
    nodes = [
        node("Gather", ["table", "input_ids"], ["embedded"]),
        node("Tanh", ["embedded"], ["hidden"]),
        *([node("MatMul", ["hidden", "head"], ["scores"]), node("Mul", ["scores", "half"], ["logits"])] if scaled
          else [node("MatMul", ["hidden", "head"], ["logits"])]),
        node("Concat", ["past_key_values.0.key", "past_key_values.0.key"], ["present.0.key"], axis=2),
    ]
    if hidden_output:
        outputs.append(vi("last_hidden_state", ["batch", "sequence", H]))
        nodes.append(node("Identity", ["hidden"], ["last_hidden_state"]))
    inputs = [vi("input_ids", ["batch", "sequence"], 7), vi("attention_mask", ["batch", "total"], 7),
              vi("past_key_values.0.key", ["batch", KV, "past", 1])]
    inits = [const("table", rng.standard_normal((11, H)).astype(np.float32)),
             const("head", rng.standard_normal((H, V)).astype(np.float32)), const("half", np.float32(0.5))]
    model = build(nodes, inputs, outputs, inits)
    apply("shape", model)  # the LM head's input gets its [batch, sequence, hidden] shape
    return model


def _feeds(sequence: int, keep: int | None) -> dict[str, np.ndarray]:
    feeds = {"input_ids": np.arange(2 * sequence).reshape(2, sequence) % 11,
             "attention_mask": np.ones((2, sequence), np.int64),
             "past_key_values.0.key": np.zeros((2, KV, 0, 1), np.float32)}
    return feeds if keep is None else {**feeds, decoder.LOGITS_TO_KEEP: np.array(keep, np.int64)}


def test_the_head_runs_on_the_last_k_positions_and_0_keeps_all():
    model = _toy_decoder()
    before = run_model(model, _feeds(5, None))["logits"]
    _, stats = apply("logits", model)
    assert stats == {"logits_to_keep": 1}
    assert [v.name for v in model.graph.inputs][-1] == decoder.LOGITS_TO_KEEP
    np.testing.assert_array_equal(run_model(model, _feeds(5, 0))["logits"], before)
    for keep, rows in ((1, 1), (3, 3), (5, 5), (9, 5)):
        np.testing.assert_array_equal(run_model(model, _feeds(5, keep))["logits"], before[:, -rows:])
    assert model.graph.outputs[0].shape[1] == "kept_sequence"
    _, again = apply("logits", model)  # already there: nothing more
    assert again == {}


def test_left_alone_where_another_output_reads_the_heads_input_or_no_cache():
    model = _toy_decoder(hidden_output=True)
    assert "last_hidden_state" in why_not(model.graph)[0]
    _, stats = apply("logits", model)
    assert stats == {} and decoder.LOGITS_TO_KEEP not in [v.name for v in model.graph.inputs]
    encoder = build([node("MatMul", ["x", "w"], ["logits"])], [vi("x", ["b", "s", H])], [vi("logits", ["b", "s", V])],
                    [const("w", np.ones((H, V), np.float32))])
    assert why_not(encoder.graph)[0] == "not a decoder with a KV cache"


def test_int8_keeps_the_sliced_head_in_float():
    from llmc.int8.linear import find_linear
    from llmc.targets.ort import ORT

    model = _toy_decoder(scaled=True)  # the head's output is not the graph output itself
    (head,) = find_linear(model, ORT.qdq)
    assert head.float_reason is None  # int8 would quantize it, one activation scale over all its rows
    apply("logits", model)
    (head,) = find_linear(model, ORT.qdq)
    assert head.float_reason == "output head (kept in float by default)"


def test_a_source_and_its_build_take_each_others_feeds():
    from llmc.model.io import ort_model_source
    from llmc.runtime.ort import REFERENCE_CONFIG, OrtRunner, create_session

    source, built = _toy_decoder(), _toy_decoder()
    apply("logits", built)
    runners = []
    for model in (source, built):
        with ort_model_source(model) as path:
            runners.append(OrtRunner(create_session(path, REFERENCE_CONFIG, model)))
    full = runners[0].run(_feeds(4, None))["logits"]
    np.testing.assert_array_equal(runners[1].run(_feeds(4, None))["logits"], full)  # not fed: every position
    np.testing.assert_array_equal(runners[0].run(_feeds(4, 0))["logits"], full)  # 0 to a model without it
    with pytest.raises(LlmcError, match="unknown input"):
        runners[0].run(_feeds(4, 1))  # a source cannot keep fewer positions


def test_given_inputs_of_a_source_run_its_build_and_the_reverse(tmp_path):
    from llmc.model.feeds import feeds_for

    source, built = _toy_decoder(), _toy_decoder()
    apply("logits", built)
    np.savez(tmp_path / "source.npz", **_feeds(3, None))
    np.savez(tmp_path / "built.npz", **_feeds(3, 0))
    assert feeds_for(built, {}, tmp_path / "source.npz")[decoder.LOGITS_TO_KEEP] == 0
    assert decoder.LOGITS_TO_KEEP not in feeds_for(source, {}, tmp_path / "built.npz")
    assert decoder.LOGITS_TO_KEEP not in feeds_for(source, {}, _feeds(3, 0))
    with pytest.raises(LlmcError, match="logits_to_keep"):
        feeds_for(source, {}, _feeds(3, 1))  # a source cannot keep fewer positions


def test_seeded_and_prefill_feeds_ask_for_every_position():
    model = _toy_decoder()
    apply("logits", model)
    shapes, _ = resolve_shapes(model)
    assert make_feeds(model, shapes)[decoder.LOGITS_TO_KEEP] == 0
    assert prefill_feeds(model, np.ones((1, 3), np.int64))[decoder.LOGITS_TO_KEEP] == 0
    assert with_defaults(model, _feeds(2, None))[decoder.LOGITS_TO_KEEP] == 0
    assert with_defaults(model, _feeds(2, 1))[decoder.LOGITS_TO_KEEP] == 1
    assert decoder.LOGITS_TO_KEEP not in with_defaults(_toy_decoder(), _feeds(2, None))


class _Runner:
    def __init__(self, last: np.ndarray) -> None:
        self.last = last

    def run(self, feeds):  # noqa: ANN001, ANN202
        assert feeds[decoder.LOGITS_TO_KEEP] == 1
        return {"logits": self.last}


def test_verification_measures_the_last_position_and_fails_in_one_line():
    full = (np.arange(2 * 3 * V) / 100).astype(np.float32).reshape(2, 3, V)
    feeds = _feeds(3, 0)
    kept = keeps_last_logits(_Runner(full[:, -1:] + 1e-6), feeds, {"logits": full}, 1e-4)
    assert kept["positions"] == 3 and 0 < kept["max_difference"] < 1e-5
    with pytest.raises(LlmcError, match="--disable-pass logits"):
        keeps_last_logits(_Runner(full[:, :1]), feeds, {"logits": full}, 1e-4)
    assert keeps_last_logits(_Runner(full), _feeds(3, None), {"logits": full}, 1e-4) is None


@pytest.fixture(scope="module")
def artifact(tiny_llama_legacy, tmp_path_factory):
    return llmc.build(tiny_llama_legacy, output=tmp_path_factory.mktemp("logits") / "a", cache=False)


def test_a_built_decoder_takes_it_and_records_the_measurement(artifact):
    manifest = artifact.manifest
    assert manifest.rewrites.get("logits_to_keep") == 1
    measured = manifest.verification["logits_to_keep"]
    assert measured["input"] == decoder.LOGITS_TO_KEEP and measured["max_difference"] <= manifest.verification["tolerance"]
    runner = llmc.load(artifact.path)
    assert decoder.LOGITS_TO_KEEP in runner.input_names
    ids = np.array([[5, 17, 9, 40, 22]], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(5)[None]}
    for name in runner.input_names:
        if decoder.is_past(name):
            shape = next(i.shape for i in runner.session.get_inputs() if i.name == name)
            feeds[name] = np.zeros((1, shape[1], 0, shape[3]), np.float32)
    full = runner.run(feeds)["logits"]  # not fed: every position, as the source model gives
    assert full.shape[1] == 5
    last = runner.run({**feeds, decoder.LOGITS_TO_KEEP: np.array(1, np.int64)})["logits"]
    np.testing.assert_allclose(last, full[:, -1:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(runner.logits(ids[0]), full[0], rtol=1e-5, atol=1e-5)


def test_llmc_check_compares_a_decoder_build_with_its_source(artifact, tiny_llama_legacy):
    from typer.testing import CliRunner

    from llmc.cli.main import app

    result = CliRunner().invoke(app, ["check", str(tiny_llama_legacy), str(artifact.path)])
    assert result.exit_code == 0, result.output

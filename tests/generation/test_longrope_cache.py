"""LongRoPE (Phi-3): transformers drops the cache and prefills the whole sequence once it grows
past original_max_position_embeddings (the rotary factors switch from short to long); the export
declares it (llmc.model.decoder.RECOMPUTE_CACHE_AFTER) and generation does the same."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from llmc.errors import LlmcError
from llmc.model import decoder

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

NEW = 16


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import llmc
    from llmc.export import export_pretrained
    from llmc.export.families import family_model

    directory = tmp_path_factory.mktemp("longrope")
    model = family_model("phi3-rope-longrope")  # original_max_position_embeddings 256
    model.save_pretrained(directory / "hf")
    export_pretrained(directory / "hf", directory / "export")
    llmc.build(directory / "export" / "model.onnx", precision="fp32", output=directory / "fp32", cache=False)
    return model, llmc.load(directory / "fp32"), directory


def _hf(model, prompt):  # noqa: ANN001, ANN202
    with torch.no_grad():
        ids = model.generate(torch.tensor([prompt]), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0)
    return ids[0, len(prompt):].tolist()


def test_the_export_and_the_artifact_declare_where_the_cache_is_recomputed(built):
    _, _, directory = built
    for path in (directory / "export" / "model.onnx", directory / "fp32" / "model.onnx"):
        metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        assert metadata[decoder.RECOMPUTE_CACHE_AFTER] == "256"


@pytest.mark.parametrize("length", [248, 256, 300])
def test_greedy_tokens_cross_the_switch_as_transformers_does(built, length):
    model, runner, _ = built
    prompt = np.random.default_rng(length).integers(3, 500, length).tolist()
    assert list(runner.generate(prompt, max_new_tokens=NEW, min_new_tokens=NEW).token_ids) == _hf(model, prompt)


def test_prompts_of_different_lengths_each_switch_at_their_own_length(built):
    model, runner, _ = built
    prompts = [np.random.default_rng(i).integers(3, 500, n).tolist() for i, n in ((1, 250), (2, 244))]
    results = runner.generate(prompts, max_new_tokens=NEW, min_new_tokens=NEW)
    assert [list(r.token_ids) for r in results] == [_hf(model, p) for p in prompts]


def test_speculative_decoding_is_refused_or_off(built):
    _, runner, _ = built
    prompt = list(range(3, 40))
    with pytest.raises(LlmcError, match="LongRoPE"):
        runner.generate(prompt, max_new_tokens=4, speculative="ngram")
    plain = runner.generate(prompt, max_new_tokens=4)
    assert runner.generate(prompt, max_new_tokens=4, speculative="auto").token_ids == plain.token_ids


def test_other_decoders_declare_nothing(tiny_llama_dynamo):
    metadata = {p.key for p in onnx.load(str(tiny_llama_dynamo), load_external_data=False).metadata_props}
    assert decoder.RECOMPUTE_CACHE_AFTER not in metadata


def test_a_prefix_cache_is_not_reused_across_the_switch(built):
    from llmc.generation import PrefixCache

    model, runner, _ = built
    cache = PrefixCache(max_bytes=64 << 20)
    short = np.random.default_rng(5).integers(3, 500, 200).tolist()
    runner.generate(short, max_new_tokens=2, prefix_cache=cache)
    long = short + np.random.default_rng(6).integers(3, 500, 100).tolist()  # past the switch: long factors
    got = runner.generate(long, max_new_tokens=NEW, min_new_tokens=NEW, prefix_cache=cache)
    assert list(got.token_ids) == _hf(model, long)


def test_mismatched_switch_lengths_are_refused_before_exporting(tmp_path):
    from llmc.export import export_decoder
    from llmc.export.families import family_model

    model = family_model("phi3-rope-longrope")
    model.config.rope_parameters["original_max_position_embeddings"] = 128  # config's own: 256
    with pytest.raises(LlmcError, match="original_max_position_embeddings 256 differs"):
        export_decoder(model, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()

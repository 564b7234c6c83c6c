"""The CLI through typer's runner."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from llmc.cli.main import app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_help_lists_commands():
    out = invoke("--help")
    for command in ("build", "inspect", "passes", "check", "bench"):
        assert command in out


def test_passes_lists_registry():
    out = invoke("passes")
    for name in ("prune", "fold", "noop", "cse", "shape"):
        assert name in out
    assert "default pipeline for ort" in out


def test_build_prints_table_and_assumptions(tiny_bert_legacy, tmp_path):
    out = invoke("build", tiny_bert_legacy, "-o", tmp_path / "out")
    assert "assumed symbolic dims: batch=1, sequence=128" in out
    assert "verified against the source" in out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["shapes"]["assumed"] == {"batch": 1, "sequence": 128}


def test_build_options(tiny_bert_legacy, tmp_path):
    dump = tmp_path / "ir"
    out = invoke(
        "build", tiny_bert_legacy, "-o", tmp_path / "out", "--passes", "prune,(fold,cse)*2",
        "--disable-pass", "cse", "--verify-each", "--diff-each", "--dump-ir-after", "fold", dump,
        "--shape", "input_ids=1x8", "--threads", "1",
    )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["pipeline"] == "prune,(fold)*2"
    assert {r["name"] for r in manifest["passes"]} == {"prune", "fold"}
    assert manifest["session"]["options"]["intra_op_num_threads"] == 1
    assert manifest["shapes"]["inputs"]["attention_mask"] == [1, 8]
    dumps = sorted(p.name for p in dump.iterdir())
    assert dumps[0] == "000-input.txt" and any("fold" in d for d in dumps)
    assert "assumed" not in out


def test_inspect_shows_symbolic_dims(tiny_bert_dynamo):
    out = invoke("inspect", tiny_bert_dynamo)
    assert "input_ids" in out and "batch" in out and "sequence" in out
    assert "MatMul" in out and "opsets" in out
    info = json.loads(invoke("inspect", tiny_bert_dynamo, "--json"))
    assert info["inputs"][0]["shape"] == ["batch", "sequence"]
    assert info["external_data"] == []


def test_check_agrees_and_disagrees(tiny_bert_legacy, tiny_bert_dynamo, tmp_path):
    invoke("build", tiny_bert_legacy, "-o", tmp_path / "out")
    out = invoke("check", tiny_bert_legacy, tmp_path / "out", "--shape", "input_ids=1x16")
    assert "ok" in out
    # Two different random-weight models (same architecture) must not agree.
    from llmc.export import bert_model, export_encoder
    from tests.helpers import TINY_BERT

    other = export_encoder(bert_model(**{**TINY_BERT, "initializer_range": 0.5}), tmp_path / "o.onnx",
                           dynamo=False)
    result = runner.invoke(app, ["check", str(tiny_bert_legacy), str(other)])
    assert result.exit_code == 1 and "FAIL" in result.output


def test_bench_interleaved_json(tiny_bert_legacy, tmp_path):
    invoke("build", tiny_bert_legacy, "-o", tmp_path / "out")
    out = invoke("bench", tiny_bert_legacy, tmp_path / "out", "--runs", "5", "--warmup", "1",
                 "--shape", "input_ids=1x16", "--json")
    results = json.loads(out)
    assert [r["runs"] for r in results] == [5, 5]
    assert results[0]["ratio_p50"] == 1.0
    for r in results:
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["peak_rss_mb"] > 10
    table = invoke("bench", tiny_bert_legacy, "--runs", "3", "--no-rss")
    assert "p50" in table and "ratio" in table and "tiny_bert" in table

"""What `llmc build` and `llmc check` say about fp16 and int8 artifacts: which graph the tolerance
judged, the precision's default tolerance, and why an int8 artifact misses fp32's."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from llmc.cli import render
from llmc.cli.main import app
from llmc.runtime.manifest import Manifest
from tests.helpers import manifest_json

runner = CliRunner()
SHAPES = ["--shape", "input_ids=1x16", "--shape", "attention_mask=1x16"]


def _manifest(precision: str, **extra) -> Manifest:
    verification = {"max_abs_error": 0.001, "max_rel_error": 0.0002, "cosine_min": 1.0, "tolerance": 1e-4}
    return Manifest.from_dict(manifest_json(precision=precision, verification=verification, **extra))


def test_build_line_says_what_was_verified():
    assert render._verified(_manifest("fp32")).startswith("verified against the source: max abs error 0.001")
    assert "float16 emulated on CPU" in render._verified(_manifest("fp16"))
    int8 = render._verified(_manifest("int8", quantization={}))
    assert int8.startswith("the passes' fp32 graph verified against the source")
    assert int8.endswith("int8 judged by its accuracy budget")


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory, tiny_bert_dynamo):
    tmp = tmp_path_factory.mktemp("int8")
    rng = np.random.default_rng(0)
    for i in range(12):
        mask = np.ones((1, 16), np.int64)
        mask[0, rng.integers(8, 16):] = 0
        np.savez(tmp / f"{i:02d}.npz", input_ids=rng.integers(0, 100, (1, 16)), attention_mask=mask)
    args = ["build", str(tiny_bert_dynamo), "--precision", "int8", "--calibration-data", str(tmp),
            "--calibration-samples", "8", "--holdout-samples", "4", "-o", str(tmp / "out"), "--no-cache", *SHAPES]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "the passes' fp32 graph verified against the source" in out
    assert "nodes" in out and "; verified against the source" not in out
    return tmp / "out"


def test_check_of_int8_says_why_it_misses_and_what_to_pass(int8_artifact, tiny_bert_dynamo):
    result = runner.invoke(app, ["check", str(tiny_bert_dynamo), str(int8_artifact), *SHAPES])
    if result.exit_code == 0:
        pytest.skip("this int8 artifact happens to match within 1e-4")
    out = " ".join(result.output.split())
    assert "ARTIFACT is an int8 build" in out and "held-out samples" in out
    suggested = out.split("Compare it with --tolerance ")[1].split()[0]
    again = runner.invoke(app, ["check", str(tiny_bert_dynamo), str(int8_artifact), *SHAPES, "--tolerance", suggested])
    assert again.exit_code == 0, again.output


def test_check_of_fp16_uses_its_tolerance(tmp_path, tiny_bert_dynamo):
    out = tmp_path / "trt"
    built = runner.invoke(app, ["build", str(tiny_bert_dynamo), "--target", "trt", "--precision", "fp16",
                                "--no-engine", "-o", str(out), "--no-cache", *SHAPES])
    assert built.exit_code == 0, built.output
    assert "float16 emulated on CPU" in " ".join(built.output.split())
    result = runner.invoke(app, ["check", str(tiny_bert_dynamo), str(out), *SHAPES])
    assert result.exit_code == 0, result.output
    assert "tolerance 0.01: the default for fp16 artifacts" in " ".join(result.output.split())
    strict = runner.invoke(app, ["check", str(tiny_bert_dynamo), str(out), *SHAPES, "--tolerance", "1e-7"])
    assert strict.exit_code == 1
    assert "ARTIFACT is an fp16 build (verified at tolerance 0.01)" in " ".join(strict.output.split())

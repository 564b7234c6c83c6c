"""Every command's --help renders and states every default, and --profile (old name --shapes)."""

from __future__ import annotations

import json

import pytest
import typer.main
from typer.core import TyperOption
from typer.testing import CliRunner

from llmc.cli.main import app

runner = CliRunner()
COMMANDS = ("build", "inspect", "passes", "check", "bench", "predict")
# Options with no default worth stating: absent means "none" (or, for --calibration-data, the
# option is required by --precision int8 and the error says so).
NO_DEFAULT = {
    "--disable-pass", "--dump-ir-after", "--enable-fusion", "--disable-fusion", "--calibration-data",
    "--tokenizer", "--exclude-nodes", "--exclude-op-types", "--keep-fp32", "--profile", "--plot",
    "--text", "--file", "--pair", "--question",
}


def _options(name: str) -> dict[str, TyperOption]:
    # typer vendors its own click: its options are TyperOption, not click.Option.
    command = typer.main.get_command(app).commands[name]
    return {p.opts[0]: p for p in command.params if isinstance(p, TyperOption)}


@pytest.mark.parametrize("name", COMMANDS)
def test_help_renders(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_shows_its_default(name):
    options = _options(name)
    assert options or name == "passes"
    missing = []
    for param in options.values():
        if param.hidden or param.name == "help":
            continue
        flag_off = param.is_flag and not param.secondary_opts and param.default is False
        if flag_off or isinstance(param.show_default, str) or param.default is not None:
            continue
        if not set(param.opts) & NO_DEFAULT:
            missing.append(param.opts[0])
    assert missing == []


def test_build_help_shows_stated_defaults_and_groups():
    out = runner.invoke(app, ["build", "--help"]).output
    for text in ("[default: ort]", "[default: (TensorRT's)]", "[default: entropy]", "TensorRT (--target trt)",
                 "int8 (--precision int8)", "fp16 (--precision fp16)", "Pipeline and debugging", "--profile"):
        assert text in out, text


def test_shapes_is_a_hidden_alias_of_profile():
    params = _options("build")
    assert not params["--profile"].hidden and params["--shapes"].hidden


def _trt_profiles(tmp_path, model, name: str, *flags: str) -> dict:
    spec = ["input_ids:1x4:1x16:2x32", "attention_mask:1x4:1x16:2x32"]
    args = ["build", str(model), "--target", "trt", "--no-engine", "-o", str(tmp_path / name),
            "--shape", "input_ids=1x16"]
    for flag, s in zip(flags, spec, strict=True):
        args += [flag, s]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / name / "manifest.json").read_text())["engine"]["profiles"]


def test_profile_and_its_old_name_shapes_record_the_same_profiles(tmp_path, tiny_bert_dynamo):
    profile = _trt_profiles(tmp_path, tiny_bert_dynamo, "profile", "--profile", "--profile")
    assert profile["attention_mask"]["max"] == [2, 32] and profile["input_ids"]["opt"] == [1, 16]
    assert _trt_profiles(tmp_path, tiny_bert_dynamo, "shapes", "--shapes", "--shapes") == profile
    assert _trt_profiles(tmp_path, tiny_bert_dynamo, "mixed", "--profile", "--shapes") == profile


# --------------------------------------------------------------------------- what a newcomer reads


def _usage_line(output: str) -> str:
    return next(line for line in output.splitlines() if "Usage:" in line)


@pytest.mark.parametrize(
    "args, usage",
    [
        ([], "llmc [OPTIONS] COMMAND [ARGS]..."),
        (["build"], "llmc build [OPTIONS] MODEL"),
        (["check"], "llmc check [OPTIONS] ORIGINAL ARTIFACT"),
        (["bench"], "llmc bench [OPTIONS] MODELS..."),
        (["cache", "clear"], "llmc cache clear [OPTIONS]"),
    ],
)
def test_help_reads_plainly(args, usage):
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert usage in _usage_line(result.output)
    assert "{" not in _usage_line(result.output)
    assert "<bool>" not in result.output  # flags take no value


@pytest.mark.parametrize(
    "name, default", [("build", "[default: ort]"), ("check", "[default: 0]"), ("inspect", "[default: 25]"),
                      ("bench", "[default: 100]")],
)
def test_help_keeps_its_defaults(name, default):
    out = runner.invoke(app, [name, "--help"]).output
    assert default in out  # rich must not take "[default: ...]" for markup
    assert "\\[default" not in out


def test_version():
    from llmc.version import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"llmc {__version__}"
    assert "--version" in runner.invoke(app, ["--help"]).output

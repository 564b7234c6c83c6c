"""``llmc cache`` and ``llmc build --no-cache``."""

from __future__ import annotations

from typer.testing import CliRunner

from llmc.cli.main import app

runner = CliRunner()


def test_build_twice_hits_the_cache_and_cache_commands_show_and_clear_it(tmp_path, relu_model, monkeypatch):
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LLMC_NO_CACHE", raising=False)
    first = runner.invoke(app, ["build", str(relu_model), "-o", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    assert "from the build cache" not in first.output
    second = runner.invoke(app, ["build", str(relu_model), "-o", str(tmp_path / "b")])
    assert second.exit_code == 0 and "from the build cache" in second.output
    bypass = runner.invoke(app, ["build", str(relu_model), "-o", str(tmp_path / "c"), "--no-cache"])
    assert bypass.exit_code == 0 and "from the build cache" not in bypass.output

    info = runner.invoke(app, ["cache", "info"])
    assert info.exit_code == 0 and "builds: 1 entries" in info.output and "calibration: 0 entries" in info.output
    listed = runner.invoke(app, ["cache", "list"])
    assert listed.exit_code == 0 and "fp32" in listed.output
    cleared = runner.invoke(app, ["cache", "clear"])
    assert cleared.exit_code == 0 and "removed 1 entries" in cleared.output
    assert "builds: 0 entries" in runner.invoke(app, ["cache", "info"]).output


def test_a_bad_cache_limit_is_one_line(tmp_path, relu_model, monkeypatch):
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LLMC_NO_CACHE", raising=False)
    monkeypatch.setenv("LLMC_CACHE_MAX_MB", "lots")
    result = runner.invoke(app, ["build", str(relu_model), "-o", str(tmp_path / "a")])
    assert result.exit_code == 1 and "LLMC_CACHE_MAX_MB" in result.output and "Traceback" not in result.output

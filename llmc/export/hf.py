"""``llmc export SOURCE -o DIR``: a Hugging Face model directory to an ONNX model with its tokenizer.

SOURCE is a local model directory (``config.json`` + weights, loaded offline with
``from_pretrained``). Its task (:mod:`llmc.spec.task`) is read from ``config.json`` and, for a
sentence-transformers directory, ``modules.json`` (:func:`detect_task`), or given by ``--task``;
causal LMs (text-generation) are exported with their KV cache by
:func:`llmc.export.models.export_decoder`, encoders' token states (feature-extraction) by
:func:`~llmc.export.models.export_encoder`, every other encoder task with its head, pooling or
dense layers by :mod:`llmc.export.tasks`. ``model.onnx`` carries the task's
:class:`~llmc.spec.task.TaskSpec` in its ``llmc.task`` metadata entry (a decoder's with its context:
:func:`model_context`), which builds carry into the artifact and its manifest.
DIR receives ``model.onnx`` (+ ``model.onnx.data`` when the weights pass the protobuf limit, as
``llmc build`` saves), the tokenizer files SOURCE has and, for decoders, ``generation_config.json``
(SOURCE's, else derived from the model config's token ids). DIR is written privately and moved
into place whole (:class:`llmc.model.output_dir.OutputWriter`), as builds are.

A ``.gguf`` SOURCE is loaded through transformers' GGUF support when the ``gguf`` package is there.

The export runs in four phases, reported with their elapsed seconds through the optional ``log``
callback (:mod:`llmc.export.phases`): loading (config and weights; a GGUF file's weights are
dequantized to float32), exporting to ONNX (torch.onnx), optimising (onnxscript's optimizer, the
dynamo exporter only) and saving (``model.onnx``, the tokenizer files, the generation config).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError
from llmc.export.phases import Log, Phases
from llmc.export.sentence import model_folder
from llmc.model.files import GENERATION_FILE, MODEL_FILE, check_model_directory, copy_companions
from llmc.model.output_dir import EXPORT_LAYOUT, OutputWriter, check_output
from llmc.spec.task import (
    FEATURE_EXTRACTION,
    SENTENCE_EMBEDDING,
    TEXT_GENERATION,
    Task,
    TaskSpec,
    spec_metadata,
    task_named,
)

# Causal LMs export_decoder exports exactly (transformers' DynamicCache + position_ids; mixtures of
# experts densely, llmc.export.moe): tests/export/test_export_families.py checks a small model of
# each against transformers. Any other causal LM is refused before anything is loaded.
DECODER_TYPES = frozenset({
    "gpt2", "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
    "gemma3_text", "phi", "phi3", "phimoe", "gpt_neox", "gptj", "opt", "olmo", "olmo2", "olmoe", "stablelm",
    "starcoder2", "granite", "granitemoe", "smollm3", "nemotron", "cohere", "cohere2", "falcon", "gpt_oss",
})
# Encoders taking (input_ids, attention_mask) and returning last_hidden_state.
ENCODER_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "distilbert", "electra", "albert", "mpnet", "camembert",
    "deberta", "deberta-v2", "modernbert", "llmc_pruned_bert",
})
# What the legacy exporter fails on (torch 2.13): cohere's rotary embedding (interleaved by
# stack + flatten: "All tensors must have the same rank"); LongRoPE's in-place frequency switch
# (aten::copy) is found from the config.
_LEGACY_FAILS = {"cohere": "interleaved rotary embedding", "cohere2": "interleaved rotary embedding"}
_DECODER_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_NOT_A_MODEL_DIR = "give a Hugging Face model directory (config.json + weights) or a .gguf file"


@dataclasses.dataclass
class ExportResult:
    """What ``llmc export`` wrote: the directory, the task (and its spec, which ``model.onnx``
    carries), and the files and graph I/O names."""

    path: Path
    task: Task
    model_type: str
    files: list[str]
    inputs: list[str]
    outputs: list[str]
    spec: TaskSpec | None = None


def detect_task(config: dict[str, Any], where: str = "config.json", directory: Path | None = None) -> Task:
    """The task of a model from its ``config.json`` contents (and, given its ``directory``, a
    sentence-transformers ``modules.json``: :func:`llmc.export.tasks.detect_encoder_task`), else one line."""
    from llmc.export.sentence import is_sentence_transformer
    from llmc.export.tasks import detect_encoder_task

    model_type = str(config.get("model_type") or "unknown")
    if config.get("is_encoder_decoder"):
        raise _unsupported(where, model_type, "an encoder-decoder model")
    if _is_causal_lm(config) and directory is not None and is_sentence_transformer(directory, config):
        return SENTENCE_EMBEDDING  # an embedding model (Qwen3-Embedding...): AutoModel's token states, pooled
    if _is_causal_lm(config):
        check_decoder(config, where)
        return TEXT_GENERATION
    if model_type in ENCODER_TYPES:
        return detect_encoder_task(config, directory)
    raise _unsupported(where, model_type, "an architecture llmc export does not know")


def _is_causal_lm(config: dict[str, Any]) -> bool:
    architectures = [str(a) for a in config.get("architectures") or []]
    return str(config.get("model_type")) in DECODER_TYPES or bool(config.get("is_decoder")) or any(
        a.endswith(_DECODER_SUFFIXES) for a in architectures
    )


def _check_task(task: Task, config: dict[str, Any], where: str, directory: Path | None, dynamo: bool) -> Any:
    """One line for a task the model cannot serve, before anything is loaded; the
    sentence-transformers modules of a sentence-embedding export."""
    from llmc.export.tasks import check_task

    if not task.encoder:
        check_decoder(config, where, dynamo)  # --task text-generation too: never a graph that may be wrong
        return None
    if task not in (FEATURE_EXTRACTION, SENTENCE_EMBEDDING) and _is_causal_lm(config):  # AutoModel's token states only
        raise LlmcError(
            f"{where}: --task {task}: model_type '{config.get('model_type')}' is a causal LM; llmc export exports "
            f"it as {TEXT_GENERATION} (or its token states with --task {FEATURE_EXTRACTION}, pooled by a "
            f"sentence-transformers directory's modules with --task {SENTENCE_EMBEDDING})"
        )
    return check_task(task, config, where, directory)


def check_decoder(config: dict[str, Any], where: str = "config.json", dynamo: bool = True) -> None:
    """One line, before anything is loaded, for a causal LM llmc export cannot export exactly: a
    model_type not in DECODER_TYPES, a listed one with a feature one graph cannot reproduce, or
    (``dynamo=False``) one the legacy TorchScript exporter fails on."""
    model_type = str(config.get("model_type") or "unknown")
    if model_type not in DECODER_TYPES:
        raise LlmcError(
            f"{where}: model_type '{model_type}' is a causal LM llmc export does not export (its graph "
            f"is not checked against transformers); it exports {', '.join(sorted(DECODER_TYPES))}"
        )
    if model_type == "falcon" and config.get("alibi"):
        raise LlmcError(
            f"{where}: falcon with alibi (Falcon-RW) computes its ALiBi bias in bfloat16, which ONNX "
            "Runtime's CPU kernels cannot run; llmc export takes falcon models with rotary embeddings"
        )
    if any("dynamic" in str(kind) for kind in _rope_types(config)):
        raise LlmcError(
            f"{where}: {model_type} with dynamic NTK RoPE (rope_type 'dynamic') recomputes its frequencies "
            "from the longest length seen, state one graph cannot keep; llmc export cannot export it exactly"
        )
    legacy_fails = _LEGACY_FAILS.get(model_type) or ("LongRoPE" if "longrope" in _rope_types(config) else None)
    if not dynamo and legacy_fails:
        raise LlmcError(
            f"{where}: the legacy TorchScript exporter cannot export {model_type}'s {legacy_fails}; "
            "export it without --legacy (the dynamo exporter does)"
        )


def _rope_types(config: dict[str, Any]) -> list[Any]:
    """The RoPE types ``config`` names: ``rope_parameters`` (transformers 5, one or one per layer
    type) or ``rope_scaling`` (earlier), under ``rope_type`` or ``type``."""
    found = []
    for entry in (config.get("rope_parameters"), config.get("rope_scaling")):
        if isinstance(entry, dict):
            tables = [entry, *(v for v in entry.values() if isinstance(v, dict))]
            found += [table[name] for table in tables for name in ("rope_type", "type") if table.get(name)]
    return found


def _unsupported(where: str, model_type: str, what: str) -> LlmcError:
    return LlmcError(
        f"{where}: model_type '{model_type}' is {what}; llmc export supports encoders "
        f"({', '.join(sorted(ENCODER_TYPES))}) and causal LMs ({', '.join(sorted(DECODER_TYPES))}); "
        f"--task {FEATURE_EXTRACTION} exports it as an encoder anyway"
    )


def export_pretrained(
    source: str | Path,
    output: str | Path,
    *,
    task: str = "auto",
    dynamo: bool = True,
    opset: int | None = None,
    log: Log | None = None,
) -> ExportResult:
    """Export the Hugging Face model at ``source`` into the directory ``output`` (see the module);
    ``log`` receives each phase's start line and, once it has finished, its elapsed seconds."""
    phases = Phases(log)
    source, output = Path(source), Path(output)
    named = None if task == "auto" else task_named(task)
    if opset is not None and opset < 7:
        raise LlmcError(f"--opset {opset}: ONNX opsets start at 7 (the dynamo exporter needs 18 or later)")
    gguf_file = _check_source(source)
    directory = source.parent if gguf_file else source
    if not gguf_file:  # every file of the directory inside it (links resolved: llmc.model.files.check_inside)
        check_model_directory(directory)
    what = "config, weights dequantized to float32" if gguf_file else "config, float32 weights"
    phases.start(f"loading {source.resolve().name}", what)
    model_dir = directory if gguf_file else model_folder(directory)  # sentence-transformers: maybe 0_Transformer/
    config = _gguf_config(source) if gguf_file else _read_config(model_dir / "config.json")
    where = str(source if gguf_file else model_dir / "config.json")
    st_directory = None if gguf_file else directory  # sentence-transformers modules beside config.json
    chosen = named or detect_task(config, where, st_directory)
    modules = _check_task(chosen, config, where, st_directory, dynamo)
    check_output(output, EXPORT_LAYOUT)
    with OutputWriter(output, EXPORT_LAYOUT) as writer:
        assert writer.path is not None
        model = _load(modules.transformer if modules else model_dir, chosen, gguf_file)
        spec = _spec(chosen, model, modules, st_directory, config, where, gguf=bool(gguf_file))
        inputs, outputs = _export(model, spec, modules, writer.path, dynamo, opset, phases)  # ends in "saving"
        files = _model_files(writer.path)
        if gguf_file:
            files += _gguf_tokenizer(directory, gguf_file, writer.path)
        else:
            files += copy_companions(directory, writer.path)
            if model_dir != directory:  # the Transformer module's folder: its tokenizer, over any above it
                files += [n for n in copy_companions(model_dir, writer.path) if n not in files]
        if not chosen.encoder and GENERATION_FILE not in files:
            _write_generation_config(model.config, writer.path / GENERATION_FILE)
            files.append(GENERATION_FILE)
        writer.commit()
    phases.end()
    model_type = str(config.get("model_type") or "unknown")
    return ExportResult(output, chosen, model_type, files, inputs, outputs, spec)


def _spec(
    task: Task, model: Any, modules: Any, directory: Path | None, config: dict[str, Any], where: str,
    gguf: bool = False,
) -> TaskSpec:
    """The export's :class:`TaskSpec`, with the model's context: a decoder's :func:`model_context`,
    an encoder's :func:`position_table`."""
    from llmc.export.sentence import is_cross_encoder
    from llmc.export.tasks import task_spec

    pair = directory is not None and is_cross_encoder(directory, config)
    spec = task_spec(task, model.config, modules, pair, config, where, directory)
    context = position_table(model) if task.encoder else model_context(model.config, config, gguf)
    return spec if context is None else dataclasses.replace(spec, context=context[0], context_source=context[1])


def model_context(model_config: Any, config: dict[str, Any], gguf: bool = False) -> tuple[int, str] | None:
    """The positions a causal LM was trained for and where they were read: ``max_position_embeddings``
    as transformers names it for the architecture (``n_positions`` for gpt2 and gptj) when
    ``config`` (config.json) sets it (a class default is no record of training), a GGUF's
    ``context_length`` (which transformers reads into ``max_position_embeddings``); else None."""
    name = "max_position_embeddings"
    key = (getattr(model_config, "attribute_map", None) or {}).get(name, name)
    value = getattr(model_config, name, None)
    if not gguf and key not in config:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return None
    return value, ("the GGUF's context_length" if gguf else f"config.json's {key}")


def position_table(model: Any) -> tuple[int, str] | None:
    """The tokens an encoder with a learned position table can read: the table's rows, less the
    rows before the first position where the family counts positions after its padding id
    (RoBERTa, XLM-R, MPNet: 514 rows, 512 tokens); None without such a table (relative or rotary
    positions: no fixed limit)."""
    base = getattr(model, str(getattr(model, "base_model_prefix", "")), model)
    table = getattr(getattr(base, "embeddings", None), "position_embeddings", None)
    rows = getattr(table, "num_embeddings", None)
    if not isinstance(rows, int):
        return None
    padding = getattr(table, "padding_idx", None)
    offset = padding + 1 if isinstance(padding, int) else 0
    return rows - offset, f"the model's position embeddings ({rows} rows{f', from row {offset}' if offset else ''})"


def _check_source(source: Path) -> str | None:
    """One line for a SOURCE that is not a model directory; the file name of a .gguf SOURCE."""
    if not source.exists():
        raise LlmcError(f"{source}: no such file or directory; {_NOT_A_MODEL_DIR}")
    if source.is_file() and source.suffix.lower() == ".gguf":
        try:
            import gguf  # noqa: F401
        except ImportError:
            raise LlmcError(
                f"GGUF export needs the gguf package: pip install gguf (to read {source}), or export the "
                "Hugging Face model directory it came from"
            ) from None
        return source.name
    if not source.is_dir():
        raise LlmcError(f"{source} is a file, not a model directory; {_NOT_A_MODEL_DIR}")
    if not (model_folder(source) / "config.json").is_file():
        raise LlmcError(f"{source} is not a Hugging Face model directory (no config.json in it); {_NOT_A_MODEL_DIR}")
    return None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LlmcError(f"{path}: not a readable JSON model config ({_first_line(exc)})") from None
    if not isinstance(config, dict):
        raise LlmcError(f"{path}: holds a JSON {type(config).__name__}, not a model config object")
    return config


def _load(directory: Path, task: Task, gguf_file: str | None) -> Any:
    """The model from ``directory``, offline, in float32 (the exporters trace float32 KV caches);
    one line when a head task's checkpoint lacks the head's weights (:func:`~llmc.export.tasks.check_loaded`)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from llmc.export.models import _torch
    from llmc.export.tasks import auto_class, check_loaded
    from llmc.export.weights import check_loading_info, check_weight_files

    torch = _torch()
    from transformers import AutoModelForCausalLM

    auto = auto_class(task) if task.encoder else AutoModelForCausalLM
    if not gguf_file and _read_config(directory / "config.json").get("model_type") == "llmc_pruned_bert":
        from llmc.export.pruned_bert import PrunedBertModel

        auto = PrunedBertModel  # llmc's own class: no code from the directory runs
    kwargs: dict[str, Any] = {
        "local_files_only": True, "dtype": torch.float32, "output_loading_info": True, "ignore_mismatched_sizes": True,
    }
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    else:
        check_weight_files(directory)
        kwargs["use_safetensors"] = True  # never a pickle
    try:
        model, info = auto.from_pretrained(str(directory), **kwargs)
    except Exception as exc:  # noqa: BLE001  (a bad checkpoint fails anywhere in transformers and torch)
        raise LlmcError(
            f"{directory}: transformers cannot load it as {'an encoder' if task.encoder else 'a causal LM'} "
            f"({type(exc).__name__}: {_first_line(exc)}); check its config.json and weights, or --task"
        ) from None
    check_loaded(task, info, directory)
    check_loading_info(info, directory, task in (FEATURE_EXTRACTION, SENTENCE_EMBEDDING), decoder=not task.encoder)
    return model.eval()


def _export(
    model: Any, spec: TaskSpec, modules: Any, out_dir: Path, dynamo: bool, opset: int | None, phases: Phases
) -> tuple[list[str], list[str]]:
    """Export into a scratch file with ``spec`` in its metadata, then save ``model.onnx`` the way
    builds save models (external data in ``model.onnx.data`` past the protobuf limit); return the
    graph's I/O names. The exporters report their phases and start "saving", which the caller ends."""
    from llmc.export.models import (
        ENCODER_INPUTS,
        add_metadata,
        decoder_cache_shape,
        decoder_input_names,
        decoder_output_names,
        export_decoder,
        export_encoder,
    )
    from llmc.export.tasks import export_task
    from llmc.model import io as model_io

    scratch, task = out_dir / ".export", spec.task
    inputs: tuple[str, ...] = ENCODER_INPUTS
    try:
        if not task.encoder:
            export_decoder(model, scratch / MODEL_FILE, dynamo=dynamo, opset=opset, phases=phases)
        elif task == FEATURE_EXTRACTION:
            export_encoder(model, scratch / MODEL_FILE, dynamo=dynamo, opset=opset, phases=phases)
        else:
            inputs = export_task(model, spec, modules, scratch / MODEL_FILE, dynamo=dynamo, opset=opset, phases=phases)
        add_metadata(scratch / MODEL_FILE, spec_metadata(spec))
        model_io.save_model(model_io.load_model(scratch / MODEL_FILE), out_dir / MODEL_FILE)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not task.encoder:
        layers = decoder_cache_shape(model.config)[0]
        return decoder_input_names(layers), decoder_output_names(layers)
    return list(inputs), list(task.outputs)


def _model_files(out_dir: Path) -> list[str]:
    return sorted(p.name for p in out_dir.iterdir() if p.name.startswith(MODEL_FILE))


def _write_generation_config(config: Any, path: Path) -> None:
    """A generation config from the model config's special token ids (what a runtime needs to
    start and stop generating), readable by ``GenerationConfig.from_pretrained``."""
    ids = {
        name: getattr(config, name, None)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    }
    text = json.dumps({**{k: v for k, v in ids.items() if v is not None}, "_from_model_config": True}, indent=2)
    path.write_text(text + "\n")


def _gguf_config(source: Path) -> dict[str, Any]:
    """The model config transformers derives from a .gguf file (untested without gguf installed)."""
    from llmc.export.models import _torch

    _torch()
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(source.parent), gguf_file=source.name).to_dict()
    except Exception as exc:  # a truncated or foreign file fails anywhere in the reader
        raise LlmcError(f"{source}: transformers cannot read this GGUF file ({_first_line(exc)})") from None


def _gguf_tokenizer(directory: Path, gguf_file: str, out_dir: Path) -> list[str]:
    from transformers import AutoTokenizer

    before = {p.name for p in out_dir.iterdir()}
    AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file).save_pretrained(str(out_dir))
    return sorted(p.name for p in out_dir.iterdir() if p.name not in before)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]

"""What the decode roofline (:mod:`llmc.generation.roofline`) runs: an llmc decoder artifact, or
any decoder ``.onnx`` file in the ``llmc export`` I/O contract (e.g. onnxruntime-genai's), checked
before any work, each refusal one :class:`LlmcError` line naming ``--decode``.

A plain file has no manifest to say how its cache is laid out, so it is read from the file: the
cache is one shared buffer updated in place (:class:`~llmc.model.decoder.DecoderLayout`'s
``shared_cache``, as llmc's artifacts and GenAI's own loop run it) when every past tensor is read
by a GroupQueryAttention; and a cache whose heads or head size are symbolic (GenAI's
``kv_cache_dim``) takes them from an onnxruntime-genai ``genai_config.json`` beside the file
(``model.decoder.num_key_value_heads`` and ``head_size``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError
from llmc.generation.api import open_decoder
from llmc.generation.loop import Stepper
from llmc.model import decoder

ENGINE_SUFFIXES = (".plan", ".engine", ".trt")
GENAI_CONFIG = "genai_config.json"


@dataclasses.dataclass
class DecodeTarget:
    """The ONNX file, its session options, the path errors and the generation loop name (an
    artifact directory or the file) and the artifact's manifest; for a plain file, the cache's
    fixed (kv heads, head size) where the file leaves them symbolic, and whether every past
    tensor is read by GroupQueryAttention."""

    model_path: Path
    config: Any  # llmc.runtime.ort.SessionConfig
    artifact: Path
    manifest: Any = None  # llmc.runtime.manifest.Manifest of an artifact
    cache_dims: tuple[int, int] | None = None
    gqa_cache: bool = False


def decode_target(path: str | Path, threads: int = 0, level: str = "all") -> DecodeTarget:
    """Check that ``path`` is a decoder ONNX Runtime can profile and resolve its session options
    (``threads`` 0 keeps an artifact's recorded threads; ``level`` is a plain file's graph
    optimization level); nothing runs."""
    from llmc.runtime.artifact import read_artifact
    from llmc.runtime.ort import SessionConfig

    path = Path(path)
    if path.suffix in ENGINE_SUFFIXES:
        raise LlmcError(
            f"{path}: --decode profiles ONNX Runtime's kernels, not a TensorRT engine; give an artifact built "
            "with --target ort (or its model.onnx)"
        )
    if path.is_dir():
        artifact = read_artifact(path)
        manifest = artifact.manifest
        recorded = manifest.session.options.get("intra_op_num_threads", 0)
        config = artifact.session_config(intra_op_num_threads=threads or recorded)
        if (manifest.engine or {}).get("built") or config.device == "tensorrt":
            raise LlmcError(
                f"{path} runs a TensorRT engine: --decode profiles ONNX Runtime's kernels; build the model with "
                "--target ort and bench that"
            )
        _require_decoder(path, list(manifest.shapes.inputs) or _file_inputs(artifact.model_path)[0])
        return DecodeTarget(artifact.model_path, config, path, manifest)
    if not path.is_file():
        raise LlmcError(f"{path}: no such model file or artifact directory")
    inputs, gqa_cache = _file_inputs(path)
    _require_decoder(path, inputs)
    config = SessionConfig(graph_optimization_level=level, intra_op_num_threads=threads)
    return DecodeTarget(path, config, path, cache_dims=_genai_dims(path), gqa_cache=gqa_cache)


def open_target(session: Any, target: DecodeTarget) -> tuple[Stepper, decoder.DecoderLayout]:
    """The generation loop's :class:`Stepper` on ``session``: an artifact's as
    :func:`~llmc.generation.api.open_decoder` opens it, a plain file's as read from the file."""
    if target.manifest is not None:
        return open_decoder(session, target.artifact, target.manifest)
    inputs, outputs = decoder.session_io(session)
    if target.cache_dims is not None:
        inputs, outputs = [_fixed(t, target.cache_dims) for t in inputs], [_fixed(t, target.cache_dims) for t in outputs]
    layout = decoder.require(inputs, outputs, target.artifact)
    if target.gqa_cache:
        layout = dataclasses.replace(layout, shared_cache=True)
    return Stepper(session, layout, target.artifact), layout


def _fixed(tensor: decoder.Tensor, dims: tuple[int, int]) -> decoder.Tensor:
    """A cache tensor with its symbolic heads / head size axes set to ``dims``."""
    shape = tensor.shape
    if not (decoder.is_cache_input(tensor.name) or decoder.is_cache_output(tensor.name)) or shape is None or len(shape) != 4:
        return tensor
    heads = shape[decoder.HEADS_AXIS] if isinstance(shape[decoder.HEADS_AXIS], int) else dims[0]
    size = shape[decoder.HEAD_SIZE_AXIS] if isinstance(shape[decoder.HEAD_SIZE_AXIS], int) else dims[1]
    return tensor._replace(shape=(shape[0], heads, shape[2], size))


def _file_inputs(path: Path) -> tuple[list[str], bool]:
    """The inputs a caller feeds of the ONNX file at ``path``, and whether GroupQueryAttention
    reads every past tensor of it."""
    from llmc.model.io import load_model

    graph = load_model(path).graph
    inputs = [v for v in graph.inputs if not v.is_initializer()]
    pasts = [v for v in inputs if decoder.is_past(v.name or "")]
    gqa = bool(pasts) and all(
        any(use.node.op_type == decoder.GQA_OP for use in v.uses()) for v in pasts
    )
    return [v.name or "" for v in inputs], gqa


def _genai_dims(path: Path) -> tuple[int, int] | None:
    """(kv heads, head size) from an onnxruntime-genai ``genai_config.json`` beside ``path``."""
    config = path.parent / GENAI_CONFIG
    try:
        section = json.loads(config.read_text())["model"]["decoder"]
        dims = (section["num_key_value_heads"], section["head_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return dims if all(isinstance(d, int) and d > 0 for d in dims) else None


def _require_decoder(path: Path, inputs: list[str]) -> None:
    if not decoder.is_decoder(inputs):
        shown = ", ".join(inputs[:4]) + (", ..." if len(inputs) > 4 else "")
        raise LlmcError(
            f"{path} is not a decoder with a KV cache (inputs {shown}): --decode times the decode step of a "
            "causal LM (llmc export, then llmc build); bench an encoder without --decode"
        )

"""TensorRT loader: ONNX -> serialized engine (a "plan"), and the plan an artifact ships.

:func:`build_engine` follows the TensorRT 10/11 Python API: ``Builder`` -> strongly typed
network -> ``OnnxParser.parse_from_file`` (:mod:`.parser`) -> ``IBuilderConfig``
(:func:`~llmc.targets.trt.config.configure_builder`) -> ``build_serialized_network``.
:func:`build_plan` is what ``EngineSettings.build`` runs for an artifact: it looks the engine up
in the engine cache by (model sha256, TensorRT version, compute capability, profiles, flags),
builds it on a miss (with the persistent timing cache), writes ``model.plan`` and returns the
manifest's ``engine`` section with the plan's HMAC under a key kept outside the artifact
(:mod:`.trust`).

``tensorrt`` (and ``torch``, for device queries) are imported inside functions, so this module
imports on machines without them. Parser and build failures become one :class:`LlmcError` line.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmc.errors import LlmcError, first_line
from llmc.runtime.trt import detect, trust
from llmc.targets.trt.cache import EngineCache, atomic_write, default_timing_cache_path, engine_cache_key
from llmc.targets.trt.config import EngineSettings, builder_flags, configure_builder, network_flags
from llmc.targets.trt.parser import parse_onnx

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["build_engine", "build_plan", "graph_precision"]
_LOG = logging.getLogger("llmc.trt")


def _make_logger(trt: Any, log: Callable[[str], None] | None) -> Any:
    """A TensorRT logger that keeps error messages (for the failure line) and forwards warnings."""
    severity = trt.ILogger.Severity
    errors = (severity.INTERNAL_ERROR, severity.ERROR)

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, level: Any, msg: str) -> None:
            if level in errors:
                self.errors.append(str(msg))
            if level in errors or level == severity.WARNING:
                (log or _LOG.warning)(f"TensorRT: {msg}")

    return _Logger()


def build_engine(
    onnx_path: Path,
    settings: EngineSettings,
    *,
    model_nodes: Sequence[tuple[str, str]] | None = None,
    log: Callable[[str], None] | None = None,
) -> bytes:
    """Build a serialized engine from a TensorRT-ready ONNX file; updates the timing cache file.

    ``settings.profiles`` must cover every dynamic input; ``settings.timing_cache`` is the
    timing cache file to read and update (None: none).
    """
    settings.validate()
    trt = detect.import_tensorrt()
    major = detect.trt_major(trt)
    builder_flags(trt, major, settings)  # reject impossible settings before any TensorRT work
    logger = _make_logger(trt, log)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, major, settings.strongly_typed))
    parser = parse_onnx(trt, network, Path(onnx_path), model_nodes, logger)
    builder_config = configure_builder(trt, builder, network, settings)
    plan = builder.build_serialized_network(network, builder_config)
    del parser
    if plan is None:
        reason = first_line(logger.errors[-1]) if logger.errors else "no error message"
        raise LlmcError(
            f"TensorRT could not build the engine: {reason}; rerun with a larger --workspace or see the log"
        )
    if settings.timing_cache is not None:
        cache = builder_config.get_timing_cache()
        if cache is not None:
            atomic_write(settings.timing_cache, bytes(memoryview(cache.serialize())))
    return bytes(memoryview(plan))


def build_plan(
    settings: EngineSettings, out_dir: Path, model: ir.Model, model_sha256: str, log: Callable[[str], None]
) -> dict[str, Any]:
    """``out_dir/model.plan`` for ``out_dir/model.onnx`` (``model``, whose file hashes to
    ``model_sha256``), from the engine cache or a fresh build; returns the manifest's ``engine``."""
    settings.validate()
    profiles = settings.full_profiles(model)
    info = detect.device_info()
    version = detect.tensorrt_version()
    timing = settings.timing_cache or default_timing_cache_path()
    resolved = dataclasses.replace(
        settings, profiles=profiles, precision=graph_precision(model), timing_cache=timing
    )
    flags = resolved.to_dict()
    key = engine_cache_key(model_sha256, version, str(info["compute_capability"]), profiles, flags)
    signing_key = trust.load_or_create_key()
    cache = EngineCache(settings.engine_cache, signing_key=signing_key) if settings.use_engine_cache else None
    plan = cache.get(key) if cache is not None else None
    if plan is None:
        log(f"building the TensorRT {version} engine for {info['gpu']}")
        nodes = [(n.name or "", n.op_type) for n in model.graph]
        plan = build_engine(out_dir / "model.onnx", resolved, model_nodes=nodes, log=log)
        if cache is not None:
            cache.put(key, plan)
        cached = False
    else:
        log("TensorRT engine found in the engine cache")
        cached = True
    atomic_write(out_dir / trust.PLAN_FILE, plan)
    section = trust.engine_manifest(
        out_dir / trust.PLAN_FILE, signing_key, trt_version=version, cuda_version=info.get("cuda"),
        gpu=str(info["gpu"]), compute_capability=str(info["compute_capability"]),
        profiles=profiles, flags=flags, cache_key=key,
    )
    section["from_cache"] = cached
    section["timing_cache"] = str(timing)
    return section


def graph_precision(model: ir.Model) -> str:
    """What the graph itself says: int8 if it has Q/DQ, fp16 if any node produces float16."""
    import onnx_ir as ir

    ops = {n.op_type for n in model.graph}
    if "QuantizeLinear" in ops or "DequantizeLinear" in ops:
        return "int8"
    if any(o.dtype == ir.DataType.FLOAT16 for n in model.graph for o in n.outputs):
        return "fp16"
    return "fp32"

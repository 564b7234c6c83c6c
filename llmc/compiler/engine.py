"""The ``trt`` build's last step: the TensorRT engine (``model.plan``) beside ``model.onnx``.

``EngineSettings`` holds what the user asked for (profiles from ``--shapes``, workspace,
optimization level, compatibility, caches). ``preflight`` runs before any compiling, so a
missing TensorRT or a missing profile fails in the first second with one line. ``build`` looks
the engine up in the engine cache by (model sha256, TensorRT version, compute capability,
profiles, flags), builds it on a miss (with the persistent timing cache), writes ``model.plan``
and returns the manifest's ``engine`` section with the plan's HMAC under a key kept outside the
artifact (``llmc.backends.trt.trust``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx_ir as ir

from llmc.backends.trt.profiles import ProfileShape, check_profiles, profiles_to_dict
from llmc.backends.trt.trust import PLAN_FILE
from llmc.errors import LlmcError


@dataclasses.dataclass
class EngineSettings:
    """TensorRT build settings; every field has the default ``trtexec`` users would expect."""

    profiles: dict[str, ProfileShape] = dataclasses.field(default_factory=dict)
    workspace_bytes: int | None = None  # None: TensorRT's default (the device's memory)
    optimization_level: int = 3
    version_compatible: bool = False
    hardware_compatibility: str = "none"
    timing_cache: Path | None = None  # None: the default under the cache directory
    engine_cache: Path | None = None  # None: the default under the cache directory
    use_engine_cache: bool = True

    def full_profiles(self, model: ir.Model) -> dict[str, ProfileShape]:
        """Profiles for every graph input (static ones filled in); one error listing what is missing."""
        inputs = [
            (v.name, tuple(d if isinstance(d, int) else str(d) for d in (v.shape or ())))
            for v in model.graph.inputs
            if not v.is_initializer()
        ]
        return check_profiles(inputs, self.profiles)

    def preflight(self, model: ir.Model) -> None:
        """Every dynamic input has a profile, before any work (``build`` checked TensorRT itself)."""
        self.full_profiles(model)

    def requested(self, model: ir.Model) -> dict[str, Any]:
        """For ``--no-engine``: the profiles and flags a GPU host should build with, if given."""
        if not self.profiles:
            return {}
        return {"profiles": profiles_to_dict(self.full_profiles(model)), "flags": self._config({}, "fp32").to_dict()}

    def build(self, out_dir: Path, model: ir.Model, model_sha256: str, log: Callable[[str], None]) -> dict[str, Any]:
        from llmc.backends.trt import loader, trust

        profiles = self.full_profiles(model)
        info = loader.device_info()
        version = loader.tensorrt_version()
        precision = _graph_precision(model)
        timing = self.timing_cache or loader.default_timing_cache_path()
        config = self._config(profiles, precision, timing)
        flags = config.to_dict()
        key = loader.engine_cache_key(model_sha256, version, str(info["compute_capability"]), profiles, flags)
        signing_key = trust.load_or_create_key()
        cache = loader.EngineCache(self.engine_cache, signing_key=signing_key) if self.use_engine_cache else None
        plan = cache.get(key) if cache is not None else None
        if plan is None:
            log(f"building the TensorRT {version} engine for {info['gpu']}")
            nodes = [(n.name or "", n.op_type) for n in model.graph]
            plan = loader.build_engine(out_dir / "model.onnx", config, model_nodes=nodes, log=log)
            if cache is not None:
                cache.put(key, plan)
            cached = False
        else:
            log("TensorRT engine found in the engine cache")
            cached = True
        loader.atomic_write(out_dir / PLAN_FILE, plan)
        section = trust.engine_manifest(
            out_dir / PLAN_FILE, signing_key, trt_version=version, cuda_version=info.get("cuda"),
            gpu=str(info["gpu"]), compute_capability=str(info["compute_capability"]),
            profiles=profiles, flags=flags, cache_key=key,
        )
        section["from_cache"] = cached
        section["timing_cache"] = str(timing)
        return section

    def _config(self, profiles: dict[str, ProfileShape], precision: str, timing: Path | None = None):
        from llmc.backends.trt.loader import EngineConfig

        return EngineConfig(
            profiles=profiles, workspace_bytes=self.workspace_bytes, optimization_level=self.optimization_level,
            version_compatible=self.version_compatible, hardware_compatibility=self.hardware_compatibility,
            precision=precision, timing_cache=timing,
        )


def _graph_precision(model: ir.Model) -> str:
    """What the graph itself says: int8 if it has Q/DQ, fp16 if any node produces float16."""
    ops = {n.op_type for n in model.graph}
    if "QuantizeLinear" in ops or "DequantizeLinear" in ops:
        return "int8"
    if any(o.dtype == ir.DataType.FLOAT16 for n in model.graph for o in n.outputs):
        return "fp16"
    return "fp32"


def check_plan_file(path: Path) -> None:
    """A stray ``model.plan`` in an artifact built with --no-engine is refused, never run."""
    if (path / PLAN_FILE).exists():
        raise LlmcError(
            f"{path / PLAN_FILE}: the manifest records no engine built by llmc; refusing to load an "
            "unsigned plan (a serialized engine is executable code); delete it or rebuild on a GPU host"
        )

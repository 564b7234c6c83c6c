"""TensorRT build settings (:class:`EngineSettings`) and their application to a builder.

One settings class holds what the user asked for (profiles from ``--profile``, workspace,
optimization level, compatibility, caches) and what the build records (the graph's precision).
:func:`configure_builder` turns it into an ``IBuilderConfig``: workspace, optimization level,
hardware compatibility, one optimization profile, timing cache. Precision is never a builder
flag here: llmc's passes already wrote it into the graph (Cast nodes, Q/DQ pairs), which is the
only form TensorRT 11 accepts, so 10 and 11 build alike.

Functions that take a ``trt`` argument accept any module with the same names, which is how the
tests exercise them without a GPU.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmc.errors import LlmcError
from llmc.runtime.trt.detect import trt_major
from llmc.targets.trt.profiles import ProfileShape, check_profiles, profiles_to_dict

if TYPE_CHECKING:
    import onnx_ir as ir

HARDWARE_LEVELS = {
    "none": "NONE",
    "ampere_plus": "AMPERE_PLUS",
    "same_compute_capability": "SAME_COMPUTE_CAPABILITY",
}
# The settings that change the engine built: the manifest's ``flags`` and part of the cache key.
FLAG_FIELDS = (
    "workspace_bytes",
    "optimization_level",
    "version_compatible",
    "hardware_compatibility",
    "precision",
    "strongly_typed",
    "sparse_weights",
)
_LOG = logging.getLogger("llmc.trt")


@dataclasses.dataclass
class EngineSettings:
    """How to build one engine; every field has the default ``trtexec`` users would expect.

    ``profiles`` maps dynamic inputs to their shapes (:meth:`full_profiles` fills in static ones).
    ``workspace_bytes`` None: TensorRT's default (all device memory). ``timing_cache`` /
    ``engine_cache`` None: :func:`~llmc.targets.trt.loader.build_plan` uses the defaults under the
    cache directory (a bare :func:`~llmc.targets.trt.loader.build_engine` then uses no timing
    cache file). ``engine_cache`` and ``use_engine_cache`` matter to ``build_plan`` only. ``precision`` records the
    precision already in the graph (the build sets it); it sets no builder flag. ``sparse_weights``
    sets ``BuilderFlag.SPARSE_WEIGHTS`` (the build turns it on when the graph has 2:4 sparse
    MatMul weights: TensorRT then picks sparse tensor-core tactics where they are faster).
    :meth:`validate` checks the ranges: ``optimization_level`` 0..5, ``hardware_compatibility``
    one of :data:`HARDWARE_LEVELS`, ``workspace_bytes`` None or > 0.
    """

    profiles: dict[str, ProfileShape] = dataclasses.field(default_factory=dict)
    workspace_bytes: int | None = None
    optimization_level: int = 3
    version_compatible: bool = False
    hardware_compatibility: str = "none"
    timing_cache: Path | None = None
    engine_cache: Path | None = None
    use_engine_cache: bool = True
    precision: str = "fp32"
    strongly_typed: bool = True
    sparse_weights: bool = False

    def __post_init__(self) -> None:
        if self.timing_cache is not None:
            self.timing_cache = Path(self.timing_cache)
        if self.engine_cache is not None:
            self.engine_cache = Path(self.engine_cache)

    def validate(self) -> EngineSettings:
        """``self`` if every setting is in range; one :class:`LlmcError` line otherwise."""
        if isinstance(self.optimization_level, bool) or self.optimization_level not in range(6):
            raise LlmcError(
                f"TensorRT optimization level must be 0..5 (got {self.optimization_level}); 3 is the default"
            )
        if self.hardware_compatibility not in HARDWARE_LEVELS:
            raise LlmcError(
                f"unknown hardware compatibility '{self.hardware_compatibility}'; "
                f"valid: {', '.join(HARDWARE_LEVELS)}"
            )
        if self.workspace_bytes is not None and self.workspace_bytes <= 0:
            raise LlmcError(f"--workspace must be a positive number of bytes (got {self.workspace_bytes})")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``flags``: every setting that changes the engine built.

        Profiles are recorded separately; the caches only speed the build, so they are left out
        (they must not change the engine cache key).
        """
        return {name: getattr(self, name) for name in FLAG_FIELDS}

    @classmethod
    def from_dict(
        cls, flags: dict[str, Any], profiles: dict[str, ProfileShape] | None = None
    ) -> EngineSettings:
        return cls(profiles=dict(profiles or {}), **{k: v for k, v in flags.items() if k in FLAG_FIELDS})

    def full_profiles(self, model: ir.Model) -> dict[str, ProfileShape]:
        """Profiles for every graph input (static ones filled in); one error listing what is missing."""
        inputs = [
            (v.name, tuple(d if isinstance(d, int) else str(d) for d in (v.shape or ())))
            for v in model.graph.inputs
            if not v.is_initializer()
        ]
        return check_profiles(inputs, self.profiles)

    def preflight(self, model: ir.Model) -> None:
        """Settings in range and a profile for every dynamic input, before any compiling."""
        self.validate()
        self.full_profiles(model)

    def requested(self, model: ir.Model) -> dict[str, Any]:
        """For ``--no-engine``: the profiles and flags a GPU host should build with, if given."""
        if not self.profiles:
            return {}
        return {"profiles": profiles_to_dict(self.full_profiles(model)), "flags": self.validate().to_dict()}


# --- applying the settings to a TensorRT builder ------------------------------------------


def _check_typing(trt: Any, major: int, strongly_typed: bool) -> None:
    if not strongly_typed and major >= 11:
        raise LlmcError(
            f"TensorRT {trt.__version__} builds only strongly typed networks; drop strongly_typed=False "
            "(precision comes from the graph's own types)"
        )


def network_flags(trt: Any, major: int, strongly_typed: bool = True) -> int:
    """``create_network`` flags: STRONGLY_TYPED (10 and 11; ignored but accepted by 11), and
    EXPLICIT_BATCH only before 10, where it still meant something."""
    _check_typing(trt, major, strongly_typed)
    kinds = trt.NetworkDefinitionCreationFlag
    flags = 0
    if strongly_typed:
        strong = getattr(kinds, "STRONGLY_TYPED", None)
        if strong is not None:
            flags |= 1 << int(strong)
        elif major < 11:  # 11+ is strongly typed whether or not the flag survives
            raise LlmcError(
                f"TensorRT {trt.__version__} has no strongly typed networks; install TensorRT 10 or 11 "
                "(pip install 'llmc[trt]')"
            )
    if major < 10 and hasattr(kinds, "EXPLICIT_BATCH"):
        flags |= 1 << int(kinds.EXPLICIT_BATCH)
    return flags


def builder_flags(trt: Any, major: int, settings: EngineSettings) -> list[Any]:
    """The ``BuilderFlag`` members to set for ``settings``.

    Deliberately no FP16/INT8/BF16/FP8 flags, on 10.x either: those "weak typing" flags let
    TensorRT 10 pick lower precision on its own, TensorRT 11 removed them, and the only
    equivalent it keeps is the graph's own types (Casts, Q/DQ), which llmc's passes already
    write. A strongly typed network rejects them anyway. VERSION_COMPATIBLE is set when asked;
    EXCLUDE_LEAN_RUNTIME never is, so a version-compatible plan carries its lean runtime and
    loads on later TensorRT versions (that runtime is host code: see
    :mod:`llmc.runtime.trt.trust`).
    """
    _check_typing(trt, major, settings.strongly_typed)
    flags = []
    if settings.version_compatible:
        flags.append(trt.BuilderFlag.VERSION_COMPATIBLE)
    if settings.sparse_weights:
        flags.append(trt.BuilderFlag.SPARSE_WEIGHTS)
    return flags


def _hardware_level(trt: Any, name: str) -> Any:
    level = getattr(getattr(trt, "HardwareCompatibilityLevel", None), HARDWARE_LEVELS[name], None)
    if level is None:
        raise LlmcError(
            f"TensorRT {trt.__version__} does not support hardware compatibility '{name}'; "
            "use none or ampere_plus"
        )
    return level


def configure_builder(trt: Any, builder: Any, network: Any, settings: EngineSettings) -> Any:
    """An ``IBuilderConfig`` for ``settings`` (the network must already be parsed).

    ``settings.timing_cache`` is the file itself here (None: no cache file, an empty cache).
    """
    settings.validate()
    major = trt_major(trt)
    builder_config = builder.create_builder_config()
    if settings.workspace_bytes is not None:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_bytes))
    builder_config.builder_optimization_level = settings.optimization_level
    if settings.hardware_compatibility != "none":
        builder_config.hardware_compatibility_level = _hardware_level(trt, settings.hardware_compatibility)
    for flag in builder_flags(trt, major, settings):
        builder_config.set_flag(flag)
    _add_profile(builder, builder_config, network, settings.profiles)
    _set_timing_cache(builder_config, settings.timing_cache)
    return builder_config


def _add_profile(builder: Any, builder_config: Any, network: Any, profiles: dict[str, ProfileShape]) -> None:
    """One optimization profile covering every dynamic network input."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    model_inputs = [(t.name, tuple(d if d >= 0 else None for d in t.shape)) for t in inputs]
    full = check_profiles(model_inputs, profiles)
    dynamic = [t for t in inputs if any(d < 0 for d in t.shape)]
    if not dynamic:
        return
    profile = builder.create_optimization_profile()
    for tensor in dynamic:
        if getattr(tensor, "is_shape_tensor", False):
            raise LlmcError(
                f"input '{tensor.name}' is a shape tensor (its values set shapes), which llmc's TensorRT "
                "build does not support; make it a constant or use --target ort"
            )
        shape = full[tensor.name]
        profile.set_shape(tensor.name, shape.min, shape.opt, shape.max)
    if builder_config.add_optimization_profile(profile) < 0:
        raise LlmcError(
            "TensorRT rejected the optimization profile ("
            + ", ".join(f"{t.name}:{full[t.name].spec()}" for t in dynamic)
            + "); check --profile against the model's inputs"
        )


def _set_timing_cache(builder_config: Any, path: Path | None) -> None:
    """Load the timing cache at ``path`` if there is one; an empty cache otherwise.

    A cache from another TensorRT version or GPU is refused (``ignore_mismatch=False``) and
    replaced by an empty one, which :func:`~llmc.targets.trt.loader.build_engine` then saves
    over it.
    """
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = builder_config.create_timing_cache(data) if data else None
    if cache is None or not builder_config.set_timing_cache(cache, ignore_mismatch=False):
        if data:
            _LOG.warning("timing cache %s does not match this TensorRT/GPU; starting an empty one", path)
        builder_config.set_timing_cache(builder_config.create_timing_cache(b""), ignore_mismatch=False)

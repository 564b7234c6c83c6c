"""What a build is asked to do: :class:`BuildOptions`, checked before anything is compiled."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from llmc.compiler.engine import EngineSettings
from llmc.errors import LlmcError
from llmc.fp16.options import Fp16Options
from llmc.int8.options import QuantizeOptions
from llmc.passes.options import TARGETS, PassOptions

PRECISIONS = ("fp32", "fp16", "int8")
# Default output tolerance (max abs error over each output's scale) per precision; int8 is
# judged by its accuracy budget instead.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-4}
GPU_DEVICES = ("cuda", "tensorrt")


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """Every option of ``llmc.build``; all but the diagnostics and ``use_cache`` decide the output."""

    target: str = "ort"
    precision: str = "fp32"
    shapes: dict[str, tuple[int, ...]] | None = None
    inputs: str | Path | dict[str, np.ndarray] | None = None
    passes: str | None = None
    disable_passes: tuple[str, ...] = ()
    device: str = "cpu"
    threads: int = 0
    tolerance: float | None = None
    external_data: bool | None = None
    seed: int = 0
    pass_options: PassOptions = dataclasses.field(default_factory=PassOptions)
    fusions: dict[str, bool] | None = None
    calibration_data: str | Path | None = None
    tokenizer: str | Path | None = None
    quantization: QuantizeOptions | None = None
    no_engine: bool = False
    fp16: Fp16Options | None = None
    engine: EngineSettings = dataclasses.field(default_factory=EngineSettings)
    alignment: int = 64
    # Diagnostics: they observe the passes, so a build that asks for them is never served from cache.
    verify_each: bool = False
    diff_each: bool = False
    dump_ir_after: tuple[str, ...] = ()
    dump_dir: str | Path | None = None
    use_cache: bool = True

    def check(self) -> None:
        """Refuse what cannot be built, before any work (TensorRT presence included)."""
        from llmc.backends.trt.detect import import_tensorrt, tensorrt_available

        if self.target not in TARGETS:
            raise LlmcError(f"unknown target '{self.target}'; valid targets: {', '.join(TARGETS)}")
        if self.precision not in PRECISIONS:
            raise LlmcError(f"unknown precision '{self.precision}'; valid: {', '.join(PRECISIONS)}")
        if self.precision == "fp16" and self.target == "ort" and self.device not in GPU_DEVICES:
            raise LlmcError(
                "--precision fp16 is for GPUs: use --device cuda or --device tensorrt, or --target trt; "
                "on a CPU use --precision int8"
            )
        if self.target == "trt" and not self.no_engine and not tensorrt_available():
            import_tensorrt()  # raises the one line saying what to install
        if self.precision == "int8" and self.calibration_data is None:
            raise LlmcError(
                "--precision int8 needs --calibration-data PATH (a directory of .npz feeds, one .npz with "
                "stacked samples, or a text file with --tokenizer DIR)"
            )
        if self.alignment < 1:
            raise LlmcError(f"--alignment must be at least 1 byte, not {self.alignment}")
        if self.dump_ir_after and self.dump_dir is None:
            raise LlmcError("--dump-ir-after needs a directory: --dump-ir-after NAME DIR")

    @property
    def effective_tolerance(self) -> float:
        return TOLERANCE[self.precision] if self.tolerance is None else self.tolerance

    @property
    def effective_quantization(self) -> QuantizeOptions:
        return self.quantization or QuantizeOptions(threads=self.threads)

    @property
    def diagnostics(self) -> bool:
        return self.verify_each or self.diff_each or bool(self.dump_ir_after)

    @property
    def builds_engine(self) -> bool:
        return self.target == "trt" and not self.no_engine

    def key_material(self) -> dict[str, Any]:
        """The options that decide the artifact's bytes, for the build cache key (paths by content)."""
        from llmc.compiler.cache import arrays_digest, path_digest

        if isinstance(self.inputs, dict):
            inputs = arrays_digest(self.inputs)
        else:
            inputs = path_digest(self.inputs)
        return {
            "target": self.target,
            "precision": self.precision,
            "shapes": sorted((k, list(v)) for k, v in (self.shapes or {}).items()),
            "inputs": inputs,
            "passes": self.passes,
            "disable_passes": list(self.disable_passes),
            "device": self.device,
            "threads": self.threads,
            "tolerance": self.effective_tolerance,
            "external_data": self.external_data,
            "seed": self.seed,
            "pass_options": self.pass_options,
            "fusions": sorted((self.fusions or {}).items()),
            "calibration_data": path_digest(self.calibration_data),
            "tokenizer": path_digest(self.tokenizer),
            "quantization": self.effective_quantization if self.precision == "int8" else None,
            "fp16": self.fp16 or Fp16Options(),
            "no_engine": self.no_engine,
            "engine": self.engine if self.target == "trt" else None,
            "alignment": self.alignment,
        }


def output_dir(source: dict[str, Any] | None, output: str | Path | None, target: str) -> Path:
    """``output``, else ``MODEL.llmc-TARGET`` beside a model file."""
    if output is not None:
        return Path(output)
    if source is None or source["path"] is None:
        raise LlmcError("building from an in-memory model needs output=DIR")
    path = Path(source["path"])
    return path.parent / f"{path.stem}.llmc-{target}"

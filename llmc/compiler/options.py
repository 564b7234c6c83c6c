"""What a build is asked to do: :class:`BuildOptions`, checked before anything is compiled."""

from __future__ import annotations

import dataclasses
import math
import numbers
from pathlib import Path
from typing import Any

import numpy as np

from llmc.errors import LlmcError
from llmc.fp16.options import Fp16Options
from llmc.int4.options import Int4Options
from llmc.int8.options import QuantizeOptions
from llmc.passes.options import TARGETS, PassOptions
from llmc.targets.trt.config import EngineSettings

PRECISIONS = ("fp32", "fp16", "int8", "int4")
# Default output tolerance (max abs error over each output's scale) per precision; int8 is
# judged by its accuracy budget instead, int4 by its top-1 agreement with fp32 (the tolerance
# judges the passes' fp32 graph for both).
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-4, "int4": 1e-4}
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
    int4: Int4Options | None = None
    weight_only: bool = False  # int8: weights only (MatMulNBits blocks, no calibration)
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
        from llmc.runtime.trt.detect import import_tensorrt, tensorrt_available

        if self.target not in TARGETS:
            raise LlmcError(f"unknown target '{self.target}'; valid targets: {', '.join(TARGETS)}")
        if self.precision not in PRECISIONS:
            raise LlmcError(f"unknown precision '{self.precision}'; valid: {', '.join(PRECISIONS)}")
        if self.precision == "fp16" and self.target == "ort" and self.device not in GPU_DEVICES:
            raise LlmcError(
                "--precision fp16 is for GPUs: use --device cuda or --device tensorrt, or --target trt; "
                "on a CPU use --precision int8"
            )
        if self.precision == "int4" and self.target != "ort":
            raise LlmcError(
                "--precision int4 (MatMulNBits, an ONNX Runtime contrib op) is for --target ort; "
                "for TensorRT use --precision int8 or fp16"
            )
        if self.target == "trt" and not self.no_engine and not tensorrt_available():
            import_tensorrt()  # raises the one line saying what to install
        if self.weight_only and self.precision != "int8":
            raise LlmcError(
                f"--weight-only is for --precision int8 (--precision int4 is always weight-only), not {self.precision}"
            )
        if self.weight_only and self.target != "ort":
            raise LlmcError("--weight-only (MatMulNBits, an ONNX Runtime contrib op) is for --target ort")
        if self.precision == "int8" and self.calibration_data is None and not self.weight_only:
            raise LlmcError(
                "--precision int8 needs --calibration-data PATH (a directory of .npz feeds, one .npz with "
                "stacked samples, or a text file with --tokenizer DIR), or --weight-only"
            )
        if not _is_int(self.alignment) or self.alignment < 1:
            raise LlmcError(f"--alignment must be at least 1 byte, not {self.alignment!r}")
        if self.dump_ir_after and self.dump_dir is None:
            raise LlmcError("--dump-ir-after needs a directory: --dump-ir-after NAME DIR")
        self._check_values()

    def _check_values(self) -> None:
        """The types and ranges of the scalar options (what the CLI's parser does not refuse)."""
        tolerance = self.tolerance
        if tolerance is not None:
            if not isinstance(tolerance, numbers.Real) or isinstance(tolerance, bool):
                raise LlmcError(f"--tolerance must be a number (e.g. 1e-4), not {tolerance!r}")
            if not math.isfinite(tolerance) or tolerance < 0:
                raise LlmcError(
                    f"--tolerance must be a finite number >= 0 (max abs error over each output's scale; "
                    f"0: exact), not {tolerance}"
                )
        if not _is_int(self.threads) or self.threads < 0:
            raise LlmcError(f"--threads must be 0 (ONNX Runtime's default) or a positive count, not {self.threads!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise LlmcError(f"--seed must be an integer >= 0, not {self.seed!r}")
        if self.passes is not None:
            if not isinstance(self.passes, str):
                raise LlmcError(f"--passes must be pipeline text such as 'prune,(fold,cse)*3', not {self.passes!r}")
            if not self.passes.strip():
                raise LlmcError(
                    "--passes is empty: name at least one pass, e.g. --passes prune (see `llmc passes`), "
                    "or leave --passes out for the target's default pipeline"
                )
        bad = [name for name in self.disable_passes if not isinstance(name, str)]
        if bad:
            raise LlmcError(f"--disable-pass takes pass names, not {bad[0]!r}")
        if self.shapes is not None and not isinstance(self.shapes, dict):
            raise LlmcError(f"shapes must be a dict of input name -> dims, e.g. {{'x': (1, 128)}}, not {self.shapes!r}")
        for name, dims in (self.shapes or {}).items():
            _check_shape(name, dims)

    @property
    def effective_tolerance(self) -> float:
        return TOLERANCE[self.precision] if self.tolerance is None else self.tolerance

    @property
    def effective_quantization(self) -> QuantizeOptions:
        return self.quantization or QuantizeOptions(threads=self.threads)

    @property
    def effective_int4(self) -> Int4Options:
        options = self.int4 or Int4Options()
        return dataclasses.replace(options, body="int8") if self.precision == "int8" and self.weight_only else options

    @property
    def weight_only_build(self) -> bool:
        """int4, or int8 --weight-only: the MatMulNBits stage (``llmc.int4``)."""
        return self.precision == "int4" or (self.precision == "int8" and self.weight_only)

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
            "quantization": self.effective_quantization if self.precision == "int8" and not self.weight_only else None,
            "fp16": self.fp16 or Fp16Options(),
            "int4": self.effective_int4 if self.weight_only_build else None,
            "eval_text": path_digest(self.effective_int4.eval_text) if self.weight_only_build else None,
            "no_engine": self.no_engine,
            "engine": self.engine if self.target == "trt" else None,
            "alignment": self.alignment,
        }


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_shape(name: Any, dims: Any) -> None:
    """A shape is a sequence of integers >= 0 (0: an empty cache axis; ``prepare`` checks its use)."""
    example = f"--shape {name}=1x128 (shapes={{'{name}': (1, 128)}})"
    if not isinstance(name, str) or not name:
        raise LlmcError(f"shapes: input names must be strings, not {name!r}")
    if isinstance(dims, (str, bytes)) or not hasattr(dims, "__iter__"):
        raise LlmcError(f"--shape {name}: give the dims as a tuple of integers, not {dims!r}; e.g. {example}")
    for axis, dim in enumerate(dims):
        if not _is_int(dim) or dim < 0:
            raise LlmcError(
                f"--shape {name}: axis {axis} is {dim!r}, not a whole number of elements >= 0; e.g. {example}"
            )


def output_dir(source: dict[str, Any] | None, output: str | Path | None, target: str) -> Path:
    """``output``, else ``MODEL.llmc-TARGET`` beside a model file."""
    if output is not None:
        return Path(output)
    if source is None or source["path"] is None:
        raise LlmcError("building from an in-memory model needs output=DIR")
    path = Path(source["path"])
    return path.parent / f"{path.stem}.llmc-{target}"

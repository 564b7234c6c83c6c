"""What a build is asked to do: the option table (:func:`table`) and the :class:`BuildRequest` it
fills, checked before any work.

Every build option is declared once (:class:`llmc.spec.options.Option`): the general ones here,
the rest in the section of the target or precision that owns them (``llmc.compiler.registry``).
``llmc build`` makes its flags from the table, ``llmc.build`` takes its keywords from it (a
section's settings object by the section's name too: ``quantization=QuantizeOptions(...)``), and
the build cache key is the request's :meth:`BuildRequest.key_material`. The target and precision
are resolved once, into objects (``request.target``, ``request.precision``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from llmc.compiler import registry
from llmc.errors import LlmcError
from llmc.model.shape_specs import ASSUMED_DIMS, parse_shape_specs
from llmc.spec.options import BUILD, Flag, Option, Section
from llmc.spec.precision import Precision
from llmc.spec.target import Target

PIPELINE = "Pipeline and debugging"
PRECISION_HELP = (
    "fp32, fp16 (trt, or ort on --device cuda/tensorrt; float32 islands kept), int8 (needs --calibration-data; "
    "trt runs the rest in fp16) or int4 (ort: 4-bit MatMul weights, MatMulNBits; no data needed)."
)


def _fusion_overrides(enable: list[str] | None, disable: list[str] | None) -> dict[str, bool]:
    overrides = {name: True for name in enable or []}
    for name in disable or []:
        if overrides.get(name):
            raise LlmcError(f"fusion '{name}' is both enabled and disabled; pick one")
        overrides[name] = False
    return overrides


def _dump_request(value: tuple[str, Path] | None) -> dict[str, Any]:
    """--dump-ir-after NAME[,NAME...]|all DIR as the pass names and the directory."""
    if not value:
        return {"dump_ir_after": (), "dump_dir": None}
    return {"dump_ir_after": tuple(n for n in value[0].split(",") if n), "dump_dir": value[1]}


GENERAL: tuple[Option, ...] = (
    Option("target", "ort", "ort (ONNX Runtime) or trt (TensorRT).", str,
           flags=(Flag(("--target", "-t"), str, "ort", "ort (ONNX Runtime) or trt (TensorRT)."),)),
    Option("precision", "fp32", PRECISION_HELP, str),
    Option("shapes", None, "Concrete input shape NAME=DxD (repeatable), e.g. input_ids=1x128.",
           flags=(Flag(("--shape",), Optional[list[str]], None,
                       "Concrete input shape NAME=DxD (repeatable), e.g. input_ids=1x128.",
                       {"show_default": ASSUMED_DIMS}),),
           from_cli=parse_shape_specs),
    Option("inputs", None, "An .npz file of inputs to use instead of seeded ones.", Optional[Path], file=True,
           flag_extra={"show_default": "inputs generated from --seed"}),
    Option("device", "cpu", "cpu, cuda or tensorrt (ONNX Runtime execution provider).", str),
    Option("threads", 0, "ONNX Runtime intra-op threads (0: ONNX Runtime's default).", int),
    Option("tolerance", None, "Max abs error allowed, relative to each output's scale.", Optional[float],
           flag_extra={"show_default": "1e-4; fp16: 1e-2"}),
    Option("external_data", None, "Force weights into model.onnx.data, or keep them in model.onnx.",
           flags=(Flag(("--external-data/--no-external-data",), Optional[bool], None,
                       "Force weights into model.onnx.data, or keep them in model.onnx.",
                       {"show_default": "external only over 2 GB"}),)),
    Option("seed", 0, "Seed of the generated inputs.", int),
    Option("alignment", 64, "Arena alignment in bytes of the memory plan (manifest 'memory').", int),
    Option("cache", True, "Neither reuse nor store a build in the build cache.", key=False,
           flags=(Flag(("--no-cache",), bool, False, "Neither reuse nor store a build in the build cache "
                       "(~/.cache/llmc or $LLMC_CACHE_DIR; see `llmc cache`)."),),
           from_cli=lambda no_cache: not no_cache),
    Option("passes", None, 'Pipeline text, e.g. "prune,(fold,cse)*3".', Optional[str], PIPELINE,
           flag_extra={"show_default": "the target's pipeline, see `llmc passes`"}),
    Option("disable_passes", (), "Remove a pass from the pipeline (repeatable).", panel=PIPELINE,
           flags=(Flag(("--disable-pass",), Optional[list[str]], None,
                       "Remove a pass from the pipeline (repeatable)."),),
           from_cli=lambda names: tuple(names or ())),
    Option("fusions", None, "Fusion families turned on/off against the target's defaults.", panel=PIPELINE,
           flags=(
               Flag(("--enable-fusion",), Optional[list[str]], None,
                    "Turn on a fusion family that is off by default for the target (repeatable; see `llmc passes`)."),
               Flag(("--disable-fusion",), Optional[list[str]], None, "Turn off a fusion family (repeatable)."),
           ),
           from_cli=_fusion_overrides),
    Option("verify_each", False, "Run the ONNX checker and strict shape inference after every pass.", bool,
           PIPELINE, key=False),
    Option("diff_each", False, "Run the model in ONNX Runtime after every pass; name the first that changes "
           "outputs.", bool, PIPELINE, key=False),
    Option("dump_ir_after", (), "Write the IR as text after pass NAME (or all; comma-separated names) into DIR.",
           panel=PIPELINE, key=False, fills=("dump_ir_after", "dump_dir"),
           flags=(Flag(("--dump-ir-after",), Optional[tuple[str, Path]], None,
                       "Write the IR as text after pass NAME (or all; comma-separated names) into DIR.",
                       {"metavar": "NAME|all DIR"}),),
           from_cli=_dump_request),
    Option("dump_dir", None, "The directory of --dump-ir-after.", key=False, flags=()),
)


def table() -> tuple[Option, ...]:
    """Every build option: the general ones, then each section's (targets', then precisions')."""
    return (*GENERAL, *(option for section in registry.sections() for option in section.options))


@dataclasses.dataclass(frozen=True)
class BuildRequest:
    """The options of one build: ``target`` and ``precision`` resolved, the general options by
    name (``request.seed``), each section's settings (``request.section("engine")``)."""

    target: Target
    precision: Precision
    values: Mapping[str, Any]
    sections: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(f"BuildRequest has no option {name!r}")

    def section(self, name: str) -> Any:
        return self.sections[name]

    @property
    def chain(self) -> list[Precision]:
        """The precisions whose stages run, in order (:func:`llmc.compiler.registry.chain`)."""
        return registry.chain(self.precision, self.target)

    @property
    def tolerance(self) -> float:
        given = self.values["tolerance"]
        return self.precision.tolerance if given is None else given

    @property
    def diagnostics(self) -> bool:
        return self.verify_each or self.diff_each or bool(self.dump_ir_after)

    def check(self) -> None:
        """Refuse what cannot be built, before any work (the tools a target needs included)."""
        self.precision.check(self, self.target)
        self.target.check(self)
        if not _is_int(self.alignment) or self.alignment < 1:
            raise LlmcError(f"--alignment must be at least 1 byte, not {self.alignment!r}")
        if self.dump_ir_after and self.dump_dir is None:
            raise LlmcError("--dump-ir-after needs a directory: --dump-ir-after NAME DIR")
        _check_values(self.values)

    def key_material(self) -> dict[str, Any]:
        """The options that decide the artifact's bytes, for the build cache key (files by content)."""
        from llmc.compiler.cache import arrays_digest, path_digest

        material: dict[str, Any] = {"weight_only": self.precision.weight_only}
        for option in GENERAL + _section_general():
            if not option.key:
                continue
            value = self.values[option.name]
            if option.name == "inputs" and isinstance(value, dict):
                value = arrays_digest(value)
            elif option.file:
                value = path_digest(value)
            material[option.name] = _plain(value)
        material["tolerance"] = self.tolerance
        for owner, section in self._active_sections():
            settings = owner.settings(self)
            files = {o.field_name: path_digest(getattr(settings, o.field_name))
                     for o in section.options if o.section == section.name and o.file}
            material[section.name] = [settings, files]
        return material

    def _active_sections(self) -> list[tuple[Any, Section]]:
        owners = [*self.chain, self.target]
        return [(owner, owner.section) for owner in owners if owner.section is not None]


def make_request(**kwargs: Any) -> BuildRequest:
    """The request of ``llmc.build(**kwargs)``: option names from :func:`table`, or a section's
    settings object by the section's name; an unknown name is one line."""
    sections = registry.sections()
    general = {o.name: o for o in (*GENERAL, *_section_general())}
    fields = {o.name: o for s in sections for o in s.options if o.section == s.name}
    known = {*general, *fields, *(s.name for s in sections)}
    for name in kwargs:
        if name not in known:
            raise LlmcError(f"unknown build option '{name}'; valid options: {', '.join(sorted(known))}")
    values = {name: kwargs.get(name, option.default) for name, option in general.items()}
    values["shapes"] = {} if values["shapes"] is None else values["shapes"]
    values["fusions"] = dict(values["fusions"] or {})
    values["disable_passes"] = tuple(values["disable_passes"] or ())
    values["dump_ir_after"] = tuple(values["dump_ir_after"] or ())
    settings = {}
    for section in sections:
        own = [o for o in section.options if o.section == section.name]
        given = {o.field_name: kwargs[o.name] for o in own if o.name in kwargs}
        if kwargs.get(section.name) is not None:
            settings[section.name] = dataclasses.replace(kwargs[section.name], **given)
        else:
            settings[section.name] = section.build({**{o.field_name: o.default for o in own}, **given}, values)
    target = registry.get_target(values["target"])
    precision = registry.get_precision(values["precision"], values["weight_only"])
    return BuildRequest(target, precision, values, settings)


def _section_general() -> tuple[Option, ...]:
    """General options a target or precision introduces (``--weight-only``, ``--no-engine``...)."""
    return tuple(o for s in registry.sections() for o in s.options if o.section == BUILD)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return sorted((k, list(v) if isinstance(v, tuple) else v) for k, v in value.items())
    if isinstance(value, tuple):
        return list(value)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_values(values: Mapping[str, Any]) -> None:
    """The types and ranges of the scalar options (what the CLI's parser does not refuse)."""
    tolerance = values["tolerance"]
    if tolerance is not None:
        if not isinstance(tolerance, numbers.Real) or isinstance(tolerance, bool):
            raise LlmcError(f"--tolerance must be a number (e.g. 1e-4), not {tolerance!r}")
        if not math.isfinite(tolerance) or tolerance < 0:
            raise LlmcError(
                f"--tolerance must be a finite number >= 0 (max abs error over each output's scale; "
                f"0: exact), not {tolerance}"
            )
    threads, seed, passes = values["threads"], values["seed"], values["passes"]
    if not _is_int(threads) or threads < 0:
        raise LlmcError(f"--threads must be 0 (ONNX Runtime's default) or a positive count, not {threads!r}")
    if not _is_int(seed) or seed < 0:
        raise LlmcError(f"--seed must be an integer >= 0, not {seed!r}")
    if passes is not None:
        if not isinstance(passes, str):
            raise LlmcError(f"--passes must be pipeline text such as 'prune,(fold,cse)*3', not {passes!r}")
        if not passes.strip():
            raise LlmcError(
                "--passes is empty: name at least one pass, e.g. --passes prune (see `llmc passes`), "
                "or leave --passes out for the target's default pipeline"
            )
    bad = [name for name in values["disable_passes"] if not isinstance(name, str)]
    if bad:
        raise LlmcError(f"--disable-pass takes pass names, not {bad[0]!r}")
    shapes = values["shapes"]
    if shapes is not None and not isinstance(shapes, dict):
        raise LlmcError(f"shapes must be a dict of input name -> dims, e.g. {{'x': (1, 128)}}, not {shapes!r}")
    for name, dims in (shapes or {}).items():
        _check_shape(name, dims)


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


def output_dir(source: dict[str, Any] | None, output: str | Path | None, target: Target) -> Path:
    """``output``, else ``MODEL.llmc-TARGET`` beside a model file."""
    if output is not None:
        return Path(output)
    if source is None or source["path"] is None:
        raise LlmcError("building from an in-memory model needs output=DIR")
    path = Path(source["path"])
    return path.parent / f"{path.stem}.llmc-{target.name}"

"""The targets and precisions a build can use, one line each, and the precisions registered from
outside llmc (:func:`register_precision`, exported as ``llmc.register_precision``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmc.errors import LlmcError
from llmc.fp16.precision import FP16
from llmc.int8.precision import INT8
from llmc.spec.options import Section
from llmc.spec.precision import FP32, Precision
from llmc.spec.target import Target
from llmc.targets.ort import ORT
from llmc.targets.trt.target import TRT
from llmc.weight_only.precision import INT4, INT8_WEIGHT_ONLY

if TYPE_CHECKING:
    from llmc.runtime.manifest import Manifest

TARGETS: dict[str, Target] = {target.name: target for target in (ORT, TRT)}
PRECISIONS: list[Precision] = [FP32, FP16, INT8, INT4, INT8_WEIGHT_ONLY]


def register_precision(precision: Precision) -> Precision:
    """Add ``precision`` (an instance of :class:`llmc.spec.precision.Precision`): ``llmc.build``
    then accepts ``precision=precision.name`` and the options of its section."""
    if not isinstance(precision, Precision):
        raise TypeError(f"register_precision takes a llmc.spec.precision.Precision, not {type(precision).__name__}")
    if any((p.name, p.weight_only) == (precision.name, precision.weight_only) for p in PRECISIONS):
        raise LlmcError(f"precision '{precision.name}' is registered already")
    PRECISIONS.append(precision)
    return precision


def unregister_precision(precision: Precision) -> None:
    """Remove a precision :func:`register_precision` added."""
    PRECISIONS.remove(precision)


def get_target(name: Any) -> Target:
    if not isinstance(name, str) or name not in TARGETS:
        raise LlmcError(f"unknown target '{name}'; valid targets: {', '.join(TARGETS)}")
    return TARGETS[name]


def precision_names() -> list[str]:
    return list(dict.fromkeys(p.name for p in PRECISIONS))


def get_precision(name: Any, weight_only: bool = False) -> Precision:
    """The precision ``--precision NAME [--weight-only]`` selects."""
    if not isinstance(name, str) or name not in precision_names():
        raise LlmcError(f"unknown precision '{name}'; valid: {', '.join(precision_names())}")
    for precision in PRECISIONS:
        if precision.name == name and precision.weight_only == bool(weight_only):
            return precision
    if weight_only:
        variants = [p.name for p in PRECISIONS if p.weight_only]
        raise LlmcError(
            f"--weight-only is for --precision {' or '.join(variants)} (other weight-only precisions are "
            f"always weight-only), not {name}"
        )
    raise LlmcError(f"--precision {name} needs --weight-only")


def precision_of(manifest: Manifest) -> Precision:
    """The precision an artifact was built at (its manifest's ``precision`` and whether its
    precision section says weight-only); fp32 for a name this llmc does not know."""
    named = [p for p in PRECISIONS if p.name == manifest.precision]
    if len(named) > 1:  # int8: calibrated, or weight-only (both report in their manifest_section)
        weight_only = any(bool((manifest.report(p.manifest_section) or {}).get("weight_only")) for p in named)
        named = [p for p in named if p.weight_only == weight_only]
    return named[0] if named else FP32


def chain(precision: Precision, target: Target | None) -> list[Precision]:
    """The precisions whose stages run, in order: ``precision``, then the one it leaves the rest
    of the graph to on ``target`` (TensorRT's int8: fp16)."""
    follow = precision.then(target) if target is not None else None
    return [precision, *([get_precision(follow)] if follow else [])]


def chain_of(manifest: Manifest) -> list[Precision]:
    """The precisions whose stages built an artifact, in order (:func:`chain`)."""
    return chain(precision_of(manifest), TARGETS.get(manifest.target))


def sections() -> list[Section]:
    """Every precision's and target's options section, each once, precisions first."""
    found: dict[str, Section] = {}
    for owner in (*PRECISIONS, *TARGETS.values()):
        if owner.section is not None:
            found.setdefault(owner.section.name, owner.section)
    return list(found.values())

"""TensorRT optimization profiles: parse ``--profile`` specs and check them against the model.

A TensorRT engine only runs shapes inside the ranges it was built for: every input with a
dynamic dimension needs a (min, opt, max) profile at build time, and kernels are tuned for
``opt``. ONNX Runtime needs none of this, so the check happens here, before a slow build, and
every gap is reported at once with a flag the user can paste. Static inputs get
``min = opt = max = their shape`` so the manifest records the complete set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from llmc.errors import LlmcError

EXAMPLE_FLAG = "--profile input_ids:1x1:1x128:8x512"
# Example ranges for a dynamic dim in error messages: batch-like dims, then sequence-like dims.
_BATCH_RANGE = (1, 1, 8)
_SEQUENCE_RANGE = (1, 128, 512)

Dim = int | str | None


@dataclasses.dataclass(frozen=True)
class ProfileShape:
    """One input's (min, opt, max) shapes.

    Requires: the three have the same rank, ``min <= opt <= max`` in every dim, all dims >= 1.
    ``input_name`` only names the input in error messages (not compared, not serialized).
    """

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]
    input_name: str = dataclasses.field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        for field in ("min", "opt", "max"):
            object.__setattr__(self, field, tuple(int(d) for d in getattr(self, field)))
        who = f"input '{self.input_name}'" if self.input_name else "an input"
        if not len(self.min) == len(self.opt) == len(self.max):
            raise LlmcError(
                f"profile for {who} mixes ranks (min {_fmt(self.min)}, opt {_fmt(self.opt)}, "
                f"max {_fmt(self.max)}); give MIN, OPT and MAX the same number of dims"
            )
        if any(d < 1 for d in (*self.min, *self.opt, *self.max)):
            raise LlmcError(f"profile for {who} has a dim below 1 ({self.spec()}); every dim must be >= 1")
        for axis, (lo, mid, hi) in enumerate(zip(self.min, self.opt, self.max, strict=True)):
            if not lo <= mid <= hi:
                raise LlmcError(
                    f"profile for {who} needs MIN <= OPT <= MAX in dim {axis} "
                    f"(got {lo}, {mid}, {hi} in {self.spec()})"
                )

    @property
    def rank(self) -> int:
        return len(self.min)

    def spec(self) -> str:
        """The ``MIN:OPT:MAX`` text of this profile (``1x1:1x128:8x512``)."""
        return f"{_fmt(self.min)}:{_fmt(self.opt)}:{_fmt(self.max)}"

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, data: dict[str, Sequence[int]], input_name: str = "") -> ProfileShape:
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]), input_name=input_name)


def profiles_to_dict(profiles: dict[str, ProfileShape]) -> dict[str, dict[str, list[int]]]:
    """The manifest form: ``{input: {"min": [...], "opt": [...], "max": [...]}}``."""
    return {name: shape.to_dict() for name, shape in profiles.items()}


def profiles_from_dict(data: dict[str, dict[str, Sequence[int]]]) -> dict[str, ProfileShape]:
    return {name: ProfileShape.from_dict(shape, name) for name, shape in data.items()}


def parse_profile_specs(specs: Iterable[str] | None) -> dict[str, ProfileShape]:
    """Parse ``NAME:MIN:OPT:MAX`` specs (dims written ``1x128``) into profiles by input name.

    The spec is split from the right, so an input name may itself contain ':'.
    """
    profiles: dict[str, ProfileShape] = {}
    for spec in specs or ():
        parts = spec.strip().rsplit(":", 3)
        if len(parts) != 4 or not parts[0].strip() or not all(p.strip() for p in parts[1:]):
            raise LlmcError(
                f"malformed --profile spec '{spec}'; expected NAME:MIN:OPT:MAX with dims like 1x128, "
                f"e.g. {EXAMPLE_FLAG}"
            )
        name = parts[0].strip()
        if name in profiles:
            raise LlmcError(
                f"--profile names input '{name}' twice ('{spec}'); give one NAME:MIN:OPT:MAX per input, "
                f"e.g. {EXAMPLE_FLAG}"
            )
        dims = [_parse_dims(part, spec) for part in parts[1:]]
        profiles[name] = ProfileShape(*dims, input_name=name)
    return profiles


def check_profiles(
    inputs: Sequence[tuple[str, Sequence[Dim]]], profiles: dict[str, ProfileShape]
) -> dict[str, ProfileShape]:
    """The full profile set for the model's ``inputs`` (name, dims; a dim is an int or a symbol).

    Static inputs get ``min = opt = max = their shape``; every dynamic input must have a profile
    in ``profiles`` that matches its rank and agrees with its static dims. All dynamic inputs that
    lack one are listed in a single error.
    """
    names = [name for name, _ in inputs]
    unknown = [name for name in profiles if name not in names]
    if unknown:
        raise LlmcError(
            f"--profile names {_plural('input', unknown)} {', '.join(unknown)} that the model does not "
            f"have; its inputs are {', '.join(names) or '(none)'}"
        )
    result: dict[str, ProfileShape] = {}
    missing: list[tuple[str, Sequence[Dim]]] = []
    for name, dims in inputs:
        profile = profiles.get(name)
        if profile is None:
            if any(not _is_static(d) for d in dims):
                missing.append((name, dims))
            else:
                shape = tuple(int(d) for d in dims)  # type: ignore[arg-type]
                result[name] = ProfileShape(shape, shape, shape, input_name=name)
            continue
        _check_against_model(name, dims, profile)
        result[name] = profile
    if missing:
        listed = ", ".join(f"{name} {_fmt_model_dims(dims)}" for name, dims in missing)
        flags = " ".join(f"--profile {name}:{_example_spec(dims)}" for name, dims in missing)
        raise LlmcError(
            f"TensorRT needs an optimization profile for every dynamic input; missing: {listed}; "
            f"add {flags} (NAME:MIN:OPT:MAX, one per input)"
        )
    return result


def _check_against_model(name: str, dims: Sequence[Dim], profile: ProfileShape) -> None:
    if profile.rank != len(dims):
        raise LlmcError(
            f"--profile {name}:{profile.spec()} has rank {profile.rank}, but the model's input '{name}' "
            f"has rank {len(dims)} {_fmt_model_dims(dims)}; give {len(dims)} dims per shape"
        )
    for axis, dim in enumerate(dims):
        if not _is_static(dim):
            continue
        got = (profile.min[axis], profile.opt[axis], profile.max[axis])
        if got != (dim, dim, dim):
            raise LlmcError(
                f"--profile {name}:{profile.spec()} sets dim {axis} to {got[0]}..{got[2]}, but the "
                f"model fixes it at {dim} {_fmt_model_dims(dims)}; use {dim} there in MIN, OPT and MAX"
            )


def _parse_dims(text: str, spec: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.strip().split("x"))
    except ValueError:
        raise LlmcError(
            f"--profile spec '{spec}' has a non-integer dim in '{text}'; write dims as integers "
            f"joined by 'x', e.g. {EXAMPLE_FLAG}"
        ) from None


def _is_static(dim: Dim) -> bool:
    return isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0


def _example_spec(dims: Sequence[Dim]) -> str:
    """A plausible MIN:OPT:MAX for the error message: static dims kept, dynamic ones filled in."""
    ranges = []
    for axis, dim in enumerate(dims):
        if _is_static(dim):
            ranges.append((dim, dim, dim))
        elif (isinstance(dim, str) and "batch" in dim.lower()) or axis == 0:
            ranges.append(_BATCH_RANGE)
        else:
            ranges.append(_SEQUENCE_RANGE)
    if not ranges:
        return "1:1:1"
    return ":".join("x".join(str(r[i]) for r in ranges) for i in range(3))


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def _fmt_model_dims(dims: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _plural(word: str, items: Sequence[Any]) -> str:
    return word if len(items) == 1 else word + "s"

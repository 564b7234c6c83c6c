"""Hypothesis strategies: tiny valid models, mutations of them, and CLI arguments for ``llmc build``.

A :class:`Case` is a base model (``BASE_MODELS``, each builds in well under a second) after a
few structural mutations (``MUTATIONS``: a dropped or renamed input, a changed attribute, dtype
or dim, a duplicated output, a cycle, a removed initializer, a wrong opset or domain, external
data pointing at missing files or out of the model's directory...) and, optionally, a byte-level
corruption of the serialized proto. ``Case.write(root)`` lays it out as ``root/model/m.onnx``
(with its external data files) and returns that path.

Dims and sizes are drawn either tiny or far beyond any memory (2**40 and up), never in
between: a fuzzed build must fail fast or succeed fast, never allocate gigabytes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
from hypothesis import strategies as st

from tests.fuzz.models import BASE_MODELS, MODEL_DIR, MODEL_NAME, ROOT_TOKEN, F, relu_add
from tests.fuzz.mutations import MUTATIONS, Inapplicable

__all__ = ["BASE_MODELS", "MODEL_DIR", "MODEL_NAME", "ROOT_TOKEN", "Case", "relu_add", "mutated_cases", "valid_cases",
           "build_options", "OUTPUT_KINDS", "F"]


# -- cases ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    """A (possibly broken) model and the files beside it; ``repr`` says how it was made."""

    base: str
    steps: tuple[str, ...]
    proto: onnx.ModelProto = dataclasses.field(repr=False)
    data: bytes | None = dataclasses.field(default=None, repr=False)  # the moved initializer's bytes
    corrupt: tuple | None = None  # (kind, fraction, byte): a byte-level corruption of the file

    def serialized(self, root: Path) -> bytes:
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        for tensor in proto.graph.initializer:
            for entry in tensor.external_data:
                entry.value = entry.value.replace(ROOT_TOKEN, str(root))
        raw = proto.SerializeToString()
        if self.corrupt is None:
            return raw
        kind, fraction, byte = self.corrupt
        at = min(int(len(raw) * fraction), max(len(raw) - 1, 0))
        if kind == "truncate":
            return raw[:at]
        if kind == "flip" and raw:
            return raw[:at] + bytes([raw[at] ^ byte]) + raw[at + 1:]
        if kind == "insert":
            return raw[:at] + bytes([byte]) * 3 + raw[at:]
        return bytes([byte]) + raw  # prefix

    def write(self, root: Path) -> Path:
        """Write ``root/model/m.onnx``, its data files and a decoy outside the model's directory."""
        folder = root / MODEL_DIR
        (folder / "sub").mkdir(parents=True, exist_ok=True)
        payload = self.data if self.data is not None else b"\0" * 64
        for name in ("w.bin", "sub/w.bin"):
            (folder / name).write_bytes(payload)
        (root / "outside.bin").write_bytes(payload)
        path = folder / MODEL_NAME
        path.write_bytes(self.serialized(root))
        return path


@st.composite
def valid_cases(draw) -> Case:
    name = draw(st.sampled_from(sorted(BASE_MODELS)))
    return Case(name, (), BASE_MODELS[name]())


@st.composite
def mutated_cases(draw, max_mutations: int = 3, corrupt: bool = True) -> Case:
    """A base model after 1..max_mutations mutations and maybe a byte-level corruption."""
    name = draw(st.sampled_from(sorted(BASE_MODELS)))
    proto = BASE_MODELS[name]()
    steps, data = [], None
    for _ in range(draw(st.integers(1, max_mutations))):
        mutation = draw(st.sampled_from(MUTATIONS))
        try:
            step = mutation(draw, proto)
        except Inapplicable:
            continue
        except IndexError:  # it acted in part on what earlier mutations left: keep that
            step = f"{mutation.__name__} (in part)"
        if isinstance(step, tuple):
            step, data = step
        steps.append(step)
    damage = None
    if corrupt and draw(st.integers(0, 5)) == 0:
        damage = (draw(st.sampled_from(["truncate", "flip", "insert", "prefix"])),
                  draw(st.floats(0, 1)), draw(st.integers(1, 255)))
    return Case(name, tuple(steps), proto, data, damage)


# -- CLI arguments --------------------------------------------------------------------------------

PASS_NAMES = ["prune", "shape", "fold", "noop", "cse", "fuse", "memory"]
FUSION_NAMES = ["canonical", "layer_norm", "attention", "gelu", "rotary", "bias_gelu", "nosuch", ""]
DIM_TOKENS = ["0", "1", "2", "3", "-1", str(2**40), str(2**64), "abc", "", " 2", "1_0", "٣", "2x", "1e3", "0x10"]


@st.composite
def shape_specs(draw, input_names: list[str]) -> str:
    """--shape NAME=DxD, mostly well-formed, with wrong names, dims and separators."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.text(max_size=12).filter(lambda s: "\0" not in s))
    name = draw(st.sampled_from([*input_names, "nosuch", "", "X", " x"]))
    dims = draw(st.lists(st.sampled_from(DIM_TOKENS), max_size=4))
    separator = draw(st.sampled_from(["x", "x", ",", "*", "X"]))
    return f"{name}{draw(st.sampled_from(['=', '=', ':', '==']))}{separator.join(dims)}"


@st.composite
def pipelines(draw) -> str:
    tokens = draw(st.lists(st.sampled_from([*PASS_NAMES, *PASS_NAMES, ",", ",", "(", ")", "*", "*3", "*0", "*-1",
                                            "*99999999", "nosuch", " ", "*2"]), max_size=8))
    return "".join(tokens)


TOLERANCES = ["nan", "inf", "-inf", "-1", "-0.0", "0", "1e-4", "1e400", "1e-320", "3"]
THREADS = ["-100", "-1", "0", "1", "2", str(2**31), str(2**63), str(-(2**63))]
SEEDS = ["-1", "0", "1", str(2**32), str(2**64)]
ALIGNMENTS = ["0", "-1", "1", "3", "64", str(2**40), str(2**64)]
PRECISIONS = ["fp32", "fp32", "fp16", "int8", "FP32", "bf16", "", "fp32 "]
TARGETS = ["ort", "ort", "ort", "trt", "ORT", "tensorrt", "", "cpu"]
DEVICES = ["cpu", "cpu", "cuda", "tensorrt", "gpu", "", "CPU"]


@st.composite
def build_options(draw, input_names: list[str]) -> list[str]:
    """Options of `llmc build` whose values the CLI parser accepts (their meaning may be wrong)."""
    args: list[str] = []
    for spec in draw(st.lists(shape_specs(input_names), max_size=2)):
        args += ["--shape", spec]
    optional = {
        "--tolerance": st.sampled_from(TOLERANCES),
        "--threads": st.sampled_from(THREADS),
        "--seed": st.sampled_from(SEEDS),
        "--alignment": st.sampled_from(ALIGNMENTS),
        "--precision": st.sampled_from(PRECISIONS),
        "--target": st.sampled_from(TARGETS),
        "--device": st.sampled_from(DEVICES),
        "--passes": pipelines(),
        "--disable-pass": st.sampled_from([*PASS_NAMES, "nosuch", ""]),
        "--enable-fusion": st.sampled_from(FUSION_NAMES),
        "--disable-fusion": st.sampled_from(FUSION_NAMES),
    }
    for flag, values in optional.items():
        if draw(st.integers(0, 3)) == 0:
            args += [flag, draw(values)]
    for flag in ("--verify-each", "--diff-each", "--external-data", "--no-external-data", "--explain-fusion"):
        if draw(st.integers(0, 7)) == 0:
            args.append(flag)
    return args


OUTPUT_KINDS = ["new", "new", "nested-new", "empty-dir", "earlier-artifact", "earlier-artifact", "file",
                "symlink-to-dir", "dangling-symlink", "under-file", "foreign-dir", "dot", "model-dir",
                "model-file", "empty-string", "artifact-with-extra"]

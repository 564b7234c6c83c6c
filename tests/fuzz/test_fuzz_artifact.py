"""Fuzzing what reads an artifact (``inspect DIR``, ``check SRC DIR``, ``bench DIR``, ``llmc.load``)
with tampered artifacts: an edited manifest, a garbage manifest, or a malformed model whose hash
was recorded again (a manifest consistent with broken bytes). One line or a result, never a
traceback, nothing written. Example counts scale with ``LLMC_FUZZ_EXAMPLES``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

import llmc
from llmc.errors import LlmcError
from tests.fuzz.contract import earlier_artifact, fuzz_settings, invoke_readonly, snapshot, workspace
from tests.fuzz.strategies import BASE_MODELS, Case, mutated_cases

MANIFEST_PATHS = [
    ("target",), ("precision",), ("artifact",), ("artifact", "files"), ("artifact", "sha256"),
    ("artifact", "sha256", "model.onnx"), ("artifact", "sha256", "../outside.bin"),
    ("artifact", "sha256", "/etc/passwd"), ("artifact", "external_data"), ("session",), ("session", "options"),
    ("session", "options", "intra_op_num_threads"), ("session", "options", "graph_optimization_level"),
    ("session", "options", "device"), ("session", "options", "execution_mode"), ("engine",), ("engine", "built"),
    ("memory",), ("verification",), ("shapes",), ("source",), ("source", "path"), ("nodes",), ("passes",),
]
# Small JSON values; thread counts stay tiny or invalid (never a feasible large count).
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.sampled_from([-1, 0, 1, 2, 2**63, 1.5]) | st.sampled_from(
        ["", "x", "cpu", "cuda", "tensorrt", "all", "disable", "model.onnx", "../outside.bin", "0" * 64]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "model.onnx", "options"]),
                                                                inner, max_size=2),
    max_leaves=5,
)
GARBAGE_MANIFESTS = [b"", b"{", b"[]", b"null", b'"text"', b"NaN", b"[" * 100000 + b"]" * 100000,
                     b'{"target": "ort", "precision": "fp32", "artifact": {"sha256": {"model.onnx": 1}}}',
                     b"\xff\xfe\x00garbage"]


def _set(manifest: dict, path: tuple[str, ...], value) -> None:
    node = manifest
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


@dataclasses.dataclass
class Tampering:
    what: str
    apply: Callable[[Path], None] = dataclasses.field(repr=False)


@st.composite
def tamperings(draw) -> Tampering:
    """What is done to an artifact directory, and the function doing it."""
    kind = draw(st.sampled_from(["edit", "edit", "garbage", "rehashed-model", "unsigned-plan", "data-file"]))
    if kind == "edit":
        path, value = draw(st.sampled_from(MANIFEST_PATHS)), draw(JSON_VALUES)

        def edit(out: Path) -> None:
            manifest = json.loads((out / "manifest.json").read_text())
            _set(manifest, path, value)
            (out / "manifest.json").write_text(json.dumps(manifest))

        return Tampering(f"manifest {'.'.join(path)} := {value!r}", edit)
    if kind == "garbage":
        raw = draw(st.sampled_from(GARBAGE_MANIFESTS))
        return Tampering(f"manifest bytes {raw[:40]!r}", lambda out: (out / "manifest.json").write_bytes(raw))
    if kind == "rehashed-model":
        case = draw(mutated_cases(max_mutations=2))

        def swap(out: Path) -> None:
            data = case.serialized(out.parent)
            (out / "model.onnx").write_bytes(data)
            manifest = json.loads((out / "manifest.json").read_text())
            manifest["artifact"]["sha256"]["model.onnx"] = hashlib.sha256(data).hexdigest()
            (out / "manifest.json").write_text(json.dumps(manifest))

        return Tampering(f"model.onnx := {case!r}, hash recorded", swap)
    name = "model.plan" if kind == "unsigned-plan" else "model.onnx.data"
    return Tampering(f"an unlisted {name} beside the model", lambda out: (out / name).write_bytes(b"\0" * 32))


@fuzz_settings(30)
@given(tampering=tamperings())
def test_readers_of_a_tampered_artifact_keep_the_contract(tampering):
    with workspace() as root:
        src = str(Case("relu_add", (), BASE_MODELS["relu_add"]()).write(root))
        out = earlier_artifact(root / "out")
        tampering.apply(out)
        invoke_readonly(root, ["inspect", str(out)])
        invoke_readonly(root, ["check", src, str(out)])
        invoke_readonly(root, ["bench", str(out), "--runs", "1", "--warmup", "0", "--no-rss"])
        before = snapshot(root)
        try:
            llmc.load(out)
        except LlmcError as exc:
            message = str(exc).strip()
            assert message and "\n" not in message, f"LlmcError of several lines: {message!r}"
        assert snapshot(root) == before

"""The artifact directory: ``model.onnx`` (+ external data) and ``manifest.json``.

``llmc.load(dir)`` refuses a directory whose model file does not match the sha256 recorded in
its manifest, and re-applies the recorded ONNX Runtime session options.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from llmc.errors import LlmcError

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


@dataclasses.dataclass
class Artifact:
    """What ``llmc.build`` returns: the directory and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    def load(self, **kwargs: Any) -> Runner:
        return load(self.path, **kwargs)


class Runner:
    """Runs a built artifact: ``run(feeds) -> {output name: array}``."""

    def __init__(self, artifact: Artifact, runner: Any) -> None:
        self.artifact = artifact
        self._runner = runner

    @property
    def input_names(self) -> list[str]:
        return self._runner.input_names

    @property
    def output_names(self) -> list[str]:
        return self._runner.output_names

    @property
    def session(self) -> Any:
        return self._runner.session

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._runner.run(feeds)


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read_artifact(path: str | Path) -> Artifact:
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir() or not manifest_path.is_file():
        raise LlmcError(f"{path}: not an llmc artifact (no {MANIFEST_FILE}); build one with `llmc build`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise LlmcError(f"{manifest_path}: not valid JSON ({exc}); rebuild the artifact") from None
    if not (path / MODEL_FILE).is_file():
        raise LlmcError(f"{path}: {MODEL_FILE} is missing; rebuild the artifact")
    return Artifact(path, manifest)


def load(path: str | Path, *, device: str | None = None, threads: int | None = None) -> Runner:
    """Open an artifact for inference with the session options it was built with."""
    from llmc.backends.ort import OrtRunner, SessionConfig, create_session
    from llmc.compiler.model_io import sha256_file

    artifact = read_artifact(path)
    expected = artifact.manifest.get("artifact", {}).get("model_sha256")
    if expected and sha256_file(artifact.model_path) != expected:
        raise LlmcError(
            f"{artifact.model_path}: sha256 does not match the manifest; the model was modified "
            "after the build, rebuild it"
        )
    options = dict(artifact.manifest.get("session", {}).get("options", {}))
    if device is not None:
        options["device"] = device
    if threads is not None:
        options["intra_op_num_threads"] = threads
    config = SessionConfig.from_dict(options)
    return Runner(artifact, OrtRunner(create_session(artifact.model_path, config)))

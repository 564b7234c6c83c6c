"""The artifact directory: ``model.onnx`` (+ external data) and ``manifest.json``.

``llmc.load(dir)`` refuses a directory whose manifest or files break the integrity contract
(``llmc.runtime.manifest``: the manifest llmc writes, of this llmc's schema;
``llmc.runtime.integrity``: every file matches the sha256 recorded at build time), and re-applies
the recorded ONNX Runtime session options. A ``trt`` artifact with
an engine runs ``model.plan`` in TensorRT, after ``llmc.runtime.trt.trust.verify_plan`` has
checked its HMAC (key outside the artifact), TensorRT version and GPU: a serialized engine is
executable code, so a plan that fails any check is refused, never loaded. ``engine=False``
runs such an artifact's ONNX in ONNX Runtime instead.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from llmc.errors import LlmcError, first_line
from llmc.model.files import MANIFEST_FILE, MODEL_FILE, PLAN_FILE
from llmc.runtime.base import Runner as BackendRunner
from llmc.runtime.integrity import check_files
from llmc.runtime.manifest import Manifest, read_manifest


@dataclasses.dataclass
class Artifact:
    """What ``llmc.build`` returns: the directory and its manifest."""

    path: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    def load(self, **kwargs: Any) -> Runner:
        """``llmc.runtime.artifact.load`` of this artifact (``llmc.load`` adds generation)."""
        return load(self.path, **kwargs)

    def session_config(self, **overrides: Any) -> Any:
        """The ONNX Runtime session options the artifact was built with (``overrides`` on top);
        recorded options that make no SessionConfig are a manifest error, in one line."""
        from llmc.runtime.ort import SessionConfig

        options = {**self.manifest.session.options, **overrides}
        try:
            return SessionConfig.from_dict(options)
        except (LlmcError, TypeError, ValueError, AttributeError) as exc:
            raise LlmcError(
                f"{self.path / MANIFEST_FILE}: 'session.options' is invalid ({first_line(exc)}); this is not a "
                "manifest llmc wrote (or it was edited): rebuild the artifact with `llmc build`"
            ) from None


class Runner:
    """Runs a built artifact: ``run(feeds) -> {output name: array}``; ``padding`` says whether an
    encoder's padding is skipped (``llmc.runtime.padding``: ``trim``, ``bucket``) or computed (``off``)."""

    def __init__(self, artifact: Artifact, runner: BackendRunner, padding: Any = None) -> None:
        self.artifact = artifact
        self._runner = runner
        self._padded = padding  # llmc.runtime.padding.PaddedRunner or None

    @property
    def padding(self) -> str:
        return self._padded.mode if self._padded is not None else "off"

    @property
    def input_names(self) -> list[str]:
        return self._runner.input_names

    @property
    def output_names(self) -> list[str]:
        return self._runner.output_names

    @property
    def session(self) -> Any:
        """What runs the model: an ONNX Runtime ``InferenceSession`` or a TensorRT engine."""
        return self._runner.session

    @property
    def backend(self) -> str:
        return self._runner.backend

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One inference (a decoder not fed ``logits_to_keep`` gives every position's logits:
        ``OrtRunner.run``)."""
        if self._padded is not None:
            return self._padded.run(feeds)
        return self._runner.run(feeds)


def read_artifact(path: str | Path, *, check: bool = True) -> Artifact:
    """The artifact at ``path``: its manifest, checked (``read_manifest``); ``check`` (always,
    outside the build) enforces the rest of the integrity contract: every file matching its
    recorded sha256."""
    path = Path(path)
    manifest = read_manifest(path)
    if check:
        check_files(path, manifest.artifact.sha256)
    elif not (path / MODEL_FILE).is_file():
        raise LlmcError(f"{path}: {MODEL_FILE} is missing; rebuild the artifact")
    return Artifact(path, manifest)


def load(
    path: str | Path, *, device: str | None = None, threads: int | None = None, engine: bool | None = None,
    padding: str = "auto", runner: type[Runner] | None = None, spinning: bool | None = None,
    spin_after_run: bool | None = None,
) -> Runner:
    """Open an artifact for inference with the session options it was built with.

    ``engine``: None runs a built TensorRT engine when the artifact has one (verified first),
    True requires it, False runs the ONNX model in ONNX Runtime. ``padding`` (ONNX Runtime
    encoders): ``auto`` skips padding the way the build measured to keep every real position's
    outputs (``pack``, else ``bucket``, else ``trim``, else ``off``); ``trim``, ``bucket``, ``pack``
    or ``off`` as asked.
    ``runner``: the :class:`Runner` subclass to return (``llmc.load`` adds generation).
    ``spinning``: False makes ONNX Runtime's threads never spin (they sleep when out of work, inside
    a run too); ``spin_after_run``: False lets them spin while a run lasts and stops them when it
    returns (servers: other work gets the cores between runs). None: as built.
    """
    from llmc.runtime.ort import OrtRunner, create_session

    runner = runner or Runner
    artifact = read_artifact(path)
    section = artifact.manifest.engine
    if engine or (engine is None and section and section.get("built")):
        if padding not in ("auto", "off"):
            raise LlmcError(f"padding='{padding}' runs in ONNX Runtime; load {path} with engine=False for it")
        return runner(artifact, _trt_runner(artifact))
    if engine is None:
        check_plan_file(artifact.path)  # an unsigned plan beside an ONNX-only artifact
    overrides: dict[str, Any] = {}
    if device is not None:
        overrides["device"] = device
    if threads is not None:
        overrides["intra_op_num_threads"] = threads
    if spinning is not None:
        overrides["allow_spinning"] = spinning
    if spin_after_run is not None:
        overrides["spin_after_run"] = spin_after_run
    config = artifact.session_config(**overrides)
    backend = OrtRunner(create_session(artifact.model_path, config))
    return runner(artifact, backend, padded_runner(artifact, backend.run, padding, config))


def check_plan_file(path: Path) -> None:
    """A stray ``model.plan`` in an artifact built with --no-engine is refused, never run."""
    if (path / PLAN_FILE).exists():
        raise LlmcError(
            f"{path / PLAN_FILE}: the manifest records no engine built by llmc; refusing to load an "
            "unsigned plan (a serialized engine is executable code); delete it or rebuild on a GPU host"
        )


def padded_runner(artifact: Artifact, run: Any, padding: str, config: Any = None) -> Any:
    """The :class:`llmc.runtime.padding.PaddedRunner` ``padding`` asks for on ``artifact``, or None;
    ``pack`` opens its packed session with ``config`` (the artifact's own when None) on first use."""
    from llmc.runtime.padding.execute import PaddedRunner
    from llmc.runtime.padding.pack import PackingRunner, packed_session
    from llmc.runtime.padding.select import choose

    mode, layout = choose(artifact.manifest.padding, padding, str(artifact.path))
    if layout is None:
        return None
    if mode == "pack":
        def check() -> None:
            check_files(artifact.path, artifact.manifest.artifact.sha256)

        made = packed_session(artifact.model_path, config or artifact.session_config(), layout, check)
        return PackingRunner(run, layout, made)
    return PaddedRunner(run, layout, mode)


def _trt_runner(artifact: Artifact) -> BackendRunner:
    from llmc.runtime.trt import detect
    from llmc.runtime.trt.runner import TrtRunner
    from llmc.runtime.trt.trust import verify_plan

    section = artifact.manifest.engine
    if not section or not section.get("built"):
        raise LlmcError(
            f"{artifact.path} has no TensorRT engine (built with --no-engine or for --target ort); "
            "rebuild with --target trt on a GPU host, or load it with engine=False"
        )
    verify_plan(artifact.path, section)  # manifest, key and HMAC first: they need no TensorRT
    trt_version = detect.tensorrt_version()  # one clear line when TensorRT is missing
    capability = str(detect.device_info()["compute_capability"])
    plan = verify_plan(artifact.path, section, trt_version=trt_version, compute_capability=capability)
    return TrtRunner(plan, host_code_allowed=bool(section.get("flags", {}).get("version_compatible")))

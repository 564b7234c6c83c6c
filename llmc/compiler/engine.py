"""The ``trt`` build's last step: the TensorRT engine (``model.plan``) beside ``model.onnx``.

The settings and the build live in the backend, on :class:`~llmc.backends.trt.config.EngineSettings`
(re-exported here for the CLI and ``llmc.build``): ``preflight`` runs before any compiling, so
bad settings or a missing profile fail in the first second with one line; ``requested`` is what
``--no-engine`` records; ``build`` looks the engine up in the engine cache, builds it on a miss,
writes ``model.plan`` and returns the manifest's signed ``engine`` section
(:func:`llmc.backends.trt.loader.build_plan`). What stays here is the artifact's side: refusing
a plan the manifest does not vouch for.
"""

from __future__ import annotations

from pathlib import Path

from llmc.backends.trt.config import EngineSettings
from llmc.backends.trt.trust import PLAN_FILE
from llmc.errors import LlmcError

__all__ = ["EngineSettings", "check_plan_file"]


def check_plan_file(path: Path) -> None:
    """A stray ``model.plan`` in an artifact built with --no-engine is refused, never run."""
    if (path / PLAN_FILE).exists():
        raise LlmcError(
            f"{path / PLAN_FILE}: the manifest records no engine built by llmc; refusing to load an "
            "unsigned plan (a serialized engine is executable code); delete it or rebuild on a GPU host"
        )

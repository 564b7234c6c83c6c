"""The last build stages: save and verify the artifact against the source model, then write it
(engine, manifest) and keep it in the build cache."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from llmc.backends.ort import REFERENCE_CONFIG, OrtRunner, SessionConfig, create_session
from llmc.compiler import manifest as manifest_mod
from llmc.compiler.artifact import Artifact, write_manifest
from llmc.compiler.stages import Compiled, Log, Precise, Prepared, Verified, fail_on_mismatch
from llmc.errors import LlmcError
from llmc.fp16.check import artifact_feeds
from llmc.fp16.stage import run_emulated
from llmc.model import io as model_io
from llmc.model.compare import compare_outputs
from llmc.model.io import MODEL_FILE


def verify(
    prep: Prepared, compiled: Compiled, precise: Precise, session_config: SessionConfig, log: Log
) -> Verified:
    """Save the model, run the saved file and compare it with the source model's outputs.

    fp32: the tolerance judges the artifact. fp16: the CPU emulation of float16 is what the
    tolerance judges (ONNX Runtime's CPU run keeps float32 between nodes; its result is recorded
    too). int8: the passes' exactness was judged before quantizing, the accuracy budget judged
    the int8 graph, and the artifact must give finite outputs.
    """
    out_dir = prep.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    files = model_io.save_model(precise.model, out_dir / MODEL_FILE, external_data=prep.options.external_data)
    log("verifying the artifact against the source model")
    saved = model_io.load_model(out_dir / MODEL_FILE)
    session = create_session(out_dir / MODEL_FILE, REFERENCE_CONFIG, saved)
    candidate = OrtRunner(session).run(artifact_feeds(saved, prep.feeds))
    if prep.options.precision == "fp16":
        comparison = compare_outputs(compiled.reference, run_emulated(saved, prep.feeds), prep.tolerance)
        fail_on_mismatch(comparison)
        precise.fp16["check"]["ort_cpu"] = compare_outputs(compiled.reference, candidate, prep.tolerance).summary()
        precise.fp16["check"]["emulated"] = comparison.summary()
    elif precise.fp32_comparison is None:
        comparison = compare_outputs(compiled.reference, candidate, prep.tolerance)
        fail_on_mismatch(comparison)
    else:
        comparison = precise.fp32_comparison
        bad = [k for k, v in candidate.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
        if bad:
            raise LlmcError(f"the int8 model gives NaN/Inf in output '{bad[0]}'; rebuild with --precision fp32")
    # The artifact must also load the way it will be deployed (device, threads, ORT level).
    start = time.perf_counter()
    create_session(out_dir / MODEL_FILE, session_config, saved)
    seconds = time.perf_counter() - start
    return Verified(files, comparison, model_io.sha256_file(out_dir / MODEL_FILE), session_config, seconds)


def write(
    prep: Prepared, compiled: Compiled, precise: Precise, memory: dict[str, Any], verified: Verified, log: Log
) -> Artifact:
    """Assemble the manifest, build the TensorRT engine if asked, write ``manifest.json``."""
    manifest = manifest_mod.assemble(prep, compiled, precise, memory, verified)
    options = prep.options
    if options.target == "trt":
        if options.no_engine:
            manifest["engine"] = {
                "built": False, "reason": "--no-engine: TensorRT-ready ONNX only", **options.engine.requested(precise.model)
            }
        else:
            log("building the TensorRT engine")
            manifest["engine"] = options.engine.build(prep.out_dir, precise.model, verified.model_sha256, log)
    write_manifest(prep.out_dir, manifest)
    return Artifact(prep.out_dir, manifest)

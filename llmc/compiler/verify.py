"""The last build stages: save and verify the artifact against the source model, then write it
(the target's finishing step, the manifest)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from llmc.compiler import manifest as manifest_mod
from llmc.compiler import rounding
from llmc.compiler.stages import Compiled, Log, Precise, Prepared, Verified, fail_on_mismatch
from llmc.errors import LlmcError
from llmc.fp16.check import artifact_feeds
from llmc.model import decoder
from llmc.model import io as model_io
from llmc.model.compare import compare_outputs
from llmc.model.feeds import with_defaults
from llmc.model.files import CALIBRATION_FILE, GENERATION_FILE, MODEL_FILE, PLAN_FILE, copy_companions
from llmc.runtime.artifact import Artifact
from llmc.runtime.integrity import check_files, hash_files
from llmc.runtime.manifest import Manifest, Tokenizer, write_manifest
from llmc.runtime.ort import REFERENCE_CONFIG, OrtRunner, SessionConfig, create_session
from llmc.runtime.ort.errors import compiled_runs
from llmc.runtime.padding.pack import packed_session
from llmc.runtime.padding.probe import probe as probe_padding
from llmc.spec.precision import FP32, Judgement
from llmc.spec.target import Finish

PADDING_TOLERANCE = 1e-4  # skipping padding must keep real positions within fp32's build tolerance


def verify(
    prep: Prepared, compiled: Compiled, precise: Precise, session_config: SessionConfig, log: Log
) -> Verified:
    """Save the model, run the saved file and compare it with the source model's outputs.

    How the artifact is judged is its precision's (``Precision.judge``): fp32 by the tolerance;
    fp16 by the CPU emulation of float16 (ONNX Runtime's CPU run keeps float32 between nodes; its
    result is recorded too); int8/int4 by the passes' exactness judged before quantizing and the
    stage's own check (accuracy budget, perplexity / agreement gate), with finite outputs.
    """
    request = prep.request
    out_dir = prep.work_dir
    files = model_io.save_model(precise.model, out_dir / MODEL_FILE, external_data=request.external_data)
    hashes = hash_files(out_dir, [f.name for f in files])  # the bytes the checks below run
    log("verifying the artifact against the source model")
    saved = model_io.load_model(out_dir / MODEL_FILE)
    with compiled_runs():  # an ONNX Runtime failure here is a pass's
        session = create_session(out_dir / MODEL_FILE, REFERENCE_CONFIG, saved)
        feeds = artifact_feeds(saved, with_defaults(saved, prep.feeds))
        candidate = OrtRunner(session).run(feeds)
        kept = keeps_last_logits(OrtRunner(session), feeds, candidate, prep.tolerance)
    del session  # one session at a time: the deployed one below, the precision's judgement
    model_io.release_freed_memory()
    precision = request.precision
    report = precise.reports.get(precision.manifest_section) if precision.manifest_section else None

    def judge(tolerance: float):  # noqa: ANN202
        return precision.judge(Judgement(
            saved, candidate, compiled.reference, feeds, tolerance, precise.fp32_comparison, report,
        ))

    # fp32's rounding floor (llmc.compiler.rounding); other precisions judge their own way
    comparison = rounding.judged(prep, compiled.reference, judge) if precision is FP32 else judge(prep.tolerance)
    fail_on_mismatch(comparison)
    # The artifact must also load the way it will be deployed (device, threads, ORT level).
    start = time.perf_counter()
    deployed = create_session(out_dir / MODEL_FILE, session_config, saved)
    seconds = time.perf_counter() - start
    padding = None
    if request.target.measures_padding:
        log("measuring whether padding can be skipped")
        padding = precision.padding_verdict(
            probe_padding(
                saved, OrtRunner(deployed).run, min(prep.tolerance, PADDING_TOLERANCE), request.seed,
                packing=lambda layout: packed_session(out_dir / MODEL_FILE, session_config, layout)(),
            ),
            report,
        )
    return Verified(files, comparison, hashes[MODEL_FILE], session_config, seconds, hashes, padding, kept)


def keeps_last_logits(
    runner: OrtRunner, feeds: dict[str, Any], full: dict[str, Any], tolerance: float
) -> dict[str, Any] | None:
    """Where the artifact takes ``logits_to_keep`` (llmc.passes.logits): its logits fed 1 against
    the last position of its own full run (``full``, fed 0), within ``tolerance``; what was
    measured (None: no such input). A mismatch is a bug of the pass: one error line."""
    if decoder.LOGITS_TO_KEEP not in feeds or decoder.LOGITS not in full:
        return None
    last = runner.run({**feeds, decoder.LOGITS_TO_KEEP: np.array(1, np.int64)})[decoder.LOGITS]
    worst = compare_outputs({decoder.LOGITS: full[decoder.LOGITS][:, -1:]}, {decoder.LOGITS: last}, tolerance).worst()
    if worst is not None:
        raise LlmcError(
            f"pass 'logits': the LM head on the last position alone differs from the full run's ({worst.reason}); "
            "rebuild with --disable-pass logits and report this as an llmc bug"
        )
    difference = float(np.abs(full[decoder.LOGITS][:, -1:].astype(np.float64) - last).max())
    return {"input": decoder.LOGITS_TO_KEEP, "positions": int(full[decoder.LOGITS].shape[1]),
            "max_difference": difference}


def write(
    prep: Prepared, compiled: Compiled, precise: Precise, memory: dict[str, Any], verified: Verified, log: Log
) -> Artifact:
    """Assemble the manifest, run the target's finishing step (TensorRT: the engine), write
    ``manifest.json`` with the sha256 of every file, then check that the files are still the ones
    verified and hashed."""
    manifest = manifest_mod.assemble(prep, compiled, precise, memory, verified)
    work_dir = prep.work_dir
    sparse = bool((manifest.sparsity or {}).get("artifact", {}).get("sparse_2_4"))
    engine = prep.request.target.finish(
        prep.request, Finish(work_dir, precise.model, verified.model_sha256, sparse, log)
    )
    manifest.engine = engine
    hashes = dict(verified.hashes)
    extra = [name for name in (PLAN_FILE, CALIBRATION_FILE) if (work_dir / name).exists()]
    companions = _carry_companions(prep, manifest)
    extra += companions
    hashes.update(hash_files(work_dir, extra))
    manifest.artifact.sha256 = hashes
    statistics = (manifest.report("quantization") or {}).get("statistics")
    if statistics and statistics.get("file"):
        statistics["file"] = str(prep.out_dir / CALIBRATION_FILE)  # where it will be once moved into place
    write_manifest(work_dir, manifest)
    try:
        check_files(work_dir, manifest.artifact.sha256)
    except LlmcError as exc:
        raise LlmcError(f"{exc} (changed while the build was writing it; is another process writing there?)") from None
    return Artifact(prep.out_dir, manifest)


def _carry_companions(prep: Prepared, manifest: Manifest) -> list[str]:
    """Copy the tokenizer and generation config beside the source model file (the layout
    ``llmc export`` writes) into the artifact and record them; return their names."""
    path = (prep.source or {}).get("path")
    names = copy_companions(Path(path).parent, prep.work_dir) if path else []
    if names:
        manifest.tokenizer = Tokenizer(
            files=[name for name in names if name != GENERATION_FILE],
            generation_config=GENERATION_FILE if GENERATION_FILE in names else None,
        )
    return names

"""``llmc check``: compare the outputs of a source model and an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from llmc.cli.app import InputsOpt, SeedOpt, ShapeOpt, app, user_errors
from llmc.cli.render import print_agreement, print_precision_hint, print_precision_tolerance

if TYPE_CHECKING:
    from llmc.runtime.manifest import Manifest


@app.command()
@user_errors
def check(
    original: Annotated[Path, typer.Argument(help="The source ONNX model.")],
    artifact: Annotated[Path, typer.Argument(help="An artifact directory or ONNX model to compare.")],
    shape: ShapeOpt = None,
    inputs: InputsOpt = None,
    tolerance: Annotated[
        Optional[float],
        typer.Option(
            help="Max abs error allowed, relative to each output's scale.",
            show_default="1e-4; an fp16 artifact's: 1e-2",
        ),
    ] = None,
    seed: SeedOpt = 0,
) -> None:
    """Compare outputs of ORIGINAL and ARTIFACT (ONNX Runtime, ORT_DISABLE_ALL); exit 1 on mismatch."""
    from llmc.fp16.check import artifact_feeds
    from llmc.model.compare import check_finite_reference, check_same_interface, compare_outputs
    from llmc.model.feeds import feeds_for, parse_shape_specs
    from llmc.model.io import load_model
    from llmc.runtime.ort import REFERENCE_CONFIG, OrtRunner, create_session
    from llmc.runtime.ort.errors import run_context
    from llmc.spec.task import task_shapes

    source = load_model(original)
    candidate_path = _artifact_model(artifact)
    manifest, tolerance = _precision_tolerance(artifact, tolerance)
    candidate = load_model(candidate_path)
    check_same_interface(source, candidate, (str(original), str(candidate_path)))
    feeds = feeds_for(source, task_shapes(source, parse_shape_specs(shape))[0], inputs, seed)
    with run_context("ORIGINAL fails on the inputs: give ones it accepts with --shape or --inputs"):
        ref = OrtRunner(create_session(original, REFERENCE_CONFIG, source)).run(feeds)
    check_finite_reference(ref, str(original), seeded=inputs is None)
    with run_context("ORIGINAL ran on the same inputs, so ARTIFACT is broken: rebuild it with --verify-each --diff-each"):
        out = OrtRunner(create_session(candidate_path, REFERENCE_CONFIG, candidate)).run(artifact_feeds(candidate, feeds))
    result = compare_outputs(ref, out, tolerance)
    print_agreement(result)
    if not result.passed:
        print_precision_hint(manifest, result)
        raise typer.Exit(1)


def _artifact_model(path: Path) -> Path:
    """The model file of ARTIFACT: a checked artifact directory's, or the file itself."""
    if not path.is_dir():
        return path
    from llmc.runtime.artifact import read_artifact

    return read_artifact(path).model_path


def _precision_tolerance(path: Path, tolerance: float | None) -> tuple[Manifest | None, float]:
    """ARTIFACT's manifest (None for a plain model) and the tolerance: given, or its precision's."""
    from llmc.compiler.registry import precision_of
    from llmc.spec.precision import FP32

    manifest = None
    if path.is_dir():
        from llmc.runtime.artifact import read_artifact

        manifest = read_artifact(path, check=False).manifest  # checked by _artifact_model already
    if tolerance is not None:
        return manifest, tolerance
    precision = precision_of(manifest) if manifest is not None else FP32
    if precision.tolerance != FP32.tolerance:
        print_precision_tolerance(precision.name, precision.tolerance)
    rounding = (manifest.verification or {}).get("rounding") if manifest is not None else None
    if rounding and rounding["tolerance"] > precision.tolerance:  # the build judged it at its rounding floor
        from llmc.compiler.rounding import CAP

        floor = min(float(rounding["tolerance"]), CAP * precision.tolerance)
        print_precision_tolerance(f"{precision.name} (this model's fp32 rounding floor)", floor)
        return manifest, floor
    return manifest, precision.tolerance

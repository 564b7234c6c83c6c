"""``llmc check``: compare the outputs of a source model and an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmc.cli.app import InputsOpt, SeedOpt, ShapeOpt, app, user_errors
from llmc.cli.render import print_agreement


@app.command()
@user_errors
def check(
    original: Annotated[Path, typer.Argument(help="The source ONNX model.")],
    artifact: Annotated[Path, typer.Argument(help="An artifact directory or ONNX model to compare.")],
    shape: ShapeOpt = None,
    inputs: InputsOpt = None,
    tolerance: Annotated[
        float, typer.Option(help="Max abs error allowed, relative to each output's scale.")
    ] = 1e-4,
    seed: SeedOpt = 0,
) -> None:
    """Compare outputs of ORIGINAL and ARTIFACT (ONNX Runtime, ORT_DISABLE_ALL); exit 1 on mismatch."""
    from llmc.backends.ort import REFERENCE_CONFIG, OrtRunner, create_session
    from llmc.compiler.artifact import MODEL_FILE
    from llmc.model.compare import compare_outputs
    from llmc.model.feeds import feeds_for, parse_shape_specs, resolve_shapes
    from llmc.model.io import load_model

    source = load_model(original)
    candidate_path = artifact / MODEL_FILE if artifact.is_dir() else artifact
    candidate = load_model(candidate_path)
    feeds = feeds_for(source, resolve_shapes(source, parse_shape_specs(shape))[0], inputs, seed)
    ref = OrtRunner(create_session(original, REFERENCE_CONFIG, source)).run(feeds)
    out = OrtRunner(create_session(candidate_path, REFERENCE_CONFIG, candidate)).run(feeds)
    result = compare_outputs(ref, out, tolerance)
    print_agreement(result)
    if not result.passed:
        raise typer.Exit(1)

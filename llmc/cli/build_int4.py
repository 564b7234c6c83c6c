"""The int4 options of ``llmc build`` (``--precision int4``: weight-only MatMulNBits), in their
own help panel, and the :class:`~llmc.int4.options.Int4Options` they make."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from llmc.int4.options import Int4Options

INT4 = "int4 (--precision int4, weight-only)"

BlockSizeOpt = Annotated[
    int,
    typer.Option(
        "--block-size", help="Weights per 4-bit block along K: 16, 32, 64, 128 or 256 (smaller: more accurate).",
        rich_help_panel=INT4,
    ),
]
SymmetricOpt = Annotated[
    bool,
    typer.Option(
        "--symmetric/--asymmetric",
        help="Symmetric blocks (no zero points) or asymmetric (a zero point per block; more accurate).",
        rich_help_panel=INT4,
    ),
]
AccuracyLevelOpt = Annotated[
    int,
    typer.Option(
        "--accuracy-level",
        help="MatMulNBits compute: 0 float32 activations; 1 fp32, 2 fp16, 3 bf16, 4 int8 (fastest, least accurate).",
        rich_help_panel=INT4,
    ),
]
Int4MethodOpt = Annotated[
    str,
    typer.Option(
        "--int4-method", help="rtn (round to nearest) or hqq (half-quadratic, error-minimising; asymmetric).",
        rich_help_panel=INT4,
    ),
]
MinTop1Opt = Annotated[
    float,
    typer.Option(
        "--min-top1-agreement",
        help="Fraction of logits positions whose argmax must match fp32 (seeded inputs); else the build fails.",
        rich_help_panel=INT4,
    ),
]
Int4HeadOpt = Annotated[
    bool,
    typer.Option("--int4-head", help="Quantize the LM head too (kept float by default).", rich_help_panel=INT4),
]


def int4_options(
    method: str, block_size: int, symmetric: bool, accuracy_level: int, min_top1: float, head: bool
) -> Int4Options:
    from llmc.int4.options import Int4Options

    return Int4Options(
        method=method, block_size=block_size, symmetric=symmetric, accuracy_level=accuracy_level,
        min_top1_agreement=min_top1, quantize_head=head,
    )

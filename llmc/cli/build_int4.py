"""The int4 options of ``llmc build`` (``--precision int4``: weight-only MatMulNBits), in their
own help panel, and the :class:`~llmc.int4.options.Int4Options` they make."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from llmc.int4.options import Int4Options

INT4 = "weight-only: int4, int8 --weight-only"

WeightOnlyOpt = Annotated[
    bool,
    typer.Option(
        "--weight-only",
        help="With --precision int8: weights only, as 8-bit MatMulNBits blocks (no calibration data; the int4 "
        "gate and head/embedding options apply).",
        rich_help_panel=INT4,
    ),
]

BlockSizeOpt = Annotated[
    str,
    typer.Option(
        "--block-size",
        help="Weights per 4-bit block along K: 16, 32, 64, 128 or 256 (smaller: more accurate), or auto "
        "(per node: the fastest measured of 32/64/128 within 10% of the most accurate's output error).",
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
    str,
    typer.Option(
        "--accuracy-level",
        help="MatMulNBits compute: 0 float32 activations; 1 fp32, 2 fp16, 3 bf16, 4 int8 (fastest, least accurate); "
        "auto: per node, 4 where measured faster and within 10% of level 0's output error.",
        rich_help_panel=INT4,
    ),
]
Int4MethodOpt = Annotated[
    str,
    typer.Option(
        "--int4-method",
        help="minmax (block minimum and range, a float minimum: llama.cpp's Q4_1, exact on Q4_1 GGUF weights), "
        "rtn (ONNX Runtime's round to nearest, integer zero points) or hqq (half-quadratic, error-minimising).",
        rich_help_panel=INT4,
    ),
]
MinTop1Opt = Annotated[
    float,
    typer.Option(
        "--min-top1-agreement",
        help="Gate: fraction of positions whose argmax must match fp32 (decoders; others: worst output cosine).",
        rich_help_panel=INT4,
    ),
]
MaxPplOpt = Annotated[
    float,
    typer.Option(
        "--max-perplexity-increase",
        help="Gate: perplexity may rise this fraction over fp32 (0.05: 5%); a failing graph falls back to "
        "float32 activations, a float head, then 8-bit blocks for its worst MatMuls.",
        rich_help_panel=INT4,
    ),
]
EvalTextOpt = Annotated[
    Optional[str],
    typer.Option(
        "--eval-text", metavar="FILE", show_default="sequences the fp32 model samples itself",
        help="Held-out text the gate measures perplexity on (tokenizer beside MODEL or --tokenizer).",
        rich_help_panel=INT4,
    ),
]
LmHeadOpt = Annotated[
    str,
    typer.Option(
        "--lm-head",
        help="LM head weights: float, int8 (Q8_0 rounding; two exact 4-bit digits at accuracy level 0, else one "
        "8-bit node at level 4) or int4.",
        rich_help_panel=INT4,
    ),
]
EmbeddingOpt = Annotated[
    str,
    typer.Option(
        "--embedding", help="Token embedding: int8 (GatherBlockQuantized, shares a tied head's blocks) or float.",
        rich_help_panel=INT4,
    ),
]


def int4_options(
    method: str, block_size: str | int, symmetric: bool, accuracy_level: str | int,
    gate: tuple[float, float, str | None], head: str, embedding: str,
) -> Int4Options:
    """``gate``: (min top-1 agreement, max perplexity increase, eval text path)."""
    from llmc.int4.options import Int4Options

    block_size, accuracy_level = _number_or_auto(block_size), _number_or_auto(accuracy_level)
    min_top1, max_increase, eval_text = gate
    return Int4Options(
        method=method, block_size=block_size, symmetric=symmetric, accuracy_level=accuracy_level,
        min_top1_agreement=min_top1, max_perplexity_increase=max_increase, eval_text=eval_text, head=head,
        embedding=embedding,
    )


def _number_or_auto(value: str | int) -> str | int:
    """``"64"`` -> 64; ``auto`` and anything else unchanged (Int4Options names a bad value)."""
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else text

"""The record ``llmc compress`` writes into a model's ONNX ``metadata_props``
(:data:`COMPRESSION_METADATA`): its quality budget, held-out figures and measured speed-up
(:mod:`llmc.compression.budget` writes it). Every build carries it into its manifest and ``llmc
inspect`` shows it, so the reader lives down here, below the compiler and the CLI."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

COMPRESSION_METADATA = "llmc.compression"


def read(metadata_props: Mapping[str, str]) -> dict[str, Any] | None:
    """The compression record a model's ``metadata_props`` carry; None when there is none or it is
    not a JSON object (a record is informational: it never stops a build)."""
    text = metadata_props.get(COMPRESSION_METADATA)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def summary_line(record: Mapping[str, Any]) -> str:
    """One line for ``llmc inspect``."""
    budget = record.get("budget") or {}
    speedup = record.get("speedup")
    state = "within" if budget.get("within") else "OVER"
    return (
        f"compressed by llmc compress: held-out loss {budget.get('loss_distilled')} ({budget.get('metric')}; "
        f"{budget.get('loss_pruned')} before distillation), {state} --max-loss {budget.get('max_loss')}; "
        + (f"{speedup}x faster ({record.get('speedup_measured_on')})" if speedup else "speed-up not measured")
    )

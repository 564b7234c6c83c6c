"""Which padding mode a loaded artifact runs with: what was asked, against what its build measured."""

from __future__ import annotations

from typing import Any

from llmc.errors import LlmcError
from llmc.runtime.padding.execute import MODES
from llmc.runtime.padding.layout import PaddingLayout


def choose(section: dict[str, Any] | None, mode: str, origin: str) -> tuple[str, PaddingLayout | None]:
    """``(mode, layout)`` to run with, from the manifest's ``padding`` ``section`` (what the build
    measured; None when it did not). ``auto``: pack if the build measured it safe, else bucket if
    safe, else trim if safe, else off; ``trim``/``bucket``/``pack`` as asked where the layout allows it (one error line where
    it cannot apply); ``off``: every position computed."""
    if mode not in MODES:
        raise LlmcError(f"padding must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "off":
        return "off", None
    if not isinstance(section, dict) or not section.get("applies"):
        if mode == "auto":
            return "off", None
        why = section.get("reason") if isinstance(section, dict) else "its build did not measure padding (rebuild it)"
        raise LlmcError(f"{origin}: padding '{mode}' does not apply: {why}; load it with padding='off'")
    layout = PaddingLayout.from_dict(section)
    if mode == "auto":
        chosen = next((m for m in ("pack", "bucket", "trim") if _safe(section, m)), "off")
        return chosen, layout if chosen != "off" else None
    if mode in ("bucket", "pack") and not layout.rows_separable:
        raise LlmcError(f"{origin}: padding '{mode}' needs a batch axis on every output; use padding='trim'")
    if mode == "pack" and not (section.get("pack") or {}).get("applies"):
        why = (section.get("pack") or {}).get("reason", "its build did not measure packing (rebuild it)")
        raise LlmcError(f"{origin}: padding 'pack' does not apply: {why}; load it with padding='bucket'")
    return mode, layout


def _safe(section: dict[str, Any], mode: str) -> bool:
    verdict = section.get(mode)
    return isinstance(verdict, dict) and bool(verdict.get("safe"))

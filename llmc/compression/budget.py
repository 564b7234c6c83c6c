"""The quality budget of ``llmc compress``: how much agreement with the original a compressed
model may lose on held-out text, measured after distillation, and the record of it that travels
with the model.

The loss is one number per model kind, measured on the held-out split the student never trains on:
- encoders: ``1 - mean cosine`` of mean-pooled sentence embeddings against the original's
  (default budget 0.02: mean cosine 0.98);
- decoders: the relative perplexity increase over the original's (default 0.05: +5%); top-1
  next-token agreement is measured and recorded beside it.

A compressed model over its budget is not written unless the user allows it (``--allow-loss``);
one within it records the budget, the held-out figures before and after distillation and the
measured speed-up in its ONNX ``metadata_props`` (:data:`COMPRESSION_METADATA`), which every
``llmc build`` carries into its manifest and ``llmc inspect`` shows.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from llmc.errors import LlmcError
from llmc.spec.compression import COMPRESSION_METADATA

DEFAULT_MAX_LOSS = {"encoder": 0.02, "decoder": 0.05}
METRIC = {"encoder": "1 - mean cosine of mean-pooled embeddings (held-out)",
          "decoder": "perplexity increase over the original's (held-out)"}


def check_max_loss(value: float | None) -> None:
    """One line for a budget that is not a number in (0, 1), before any work."""
    if value is not None and not (math.isfinite(value) and 0.0 < value < 1.0):
        raise LlmcError(f"--max-loss is the held-out loss allowed, a number between 0 and 1 (e.g. 0.02), not {value}")


def lower(loss: float, other: float) -> bool:
    """``loss`` is finite and lower than ``other`` (a finite loss is lower than a NaN or an inf: a
    student whose distillation diverged never wins over one that did not)."""
    return math.isfinite(loss) and (not math.isfinite(other) or loss < other)


@dataclasses.dataclass(frozen=True)
class Budget:
    """A held-out loss bound for one model kind."""

    max_loss: float
    decoder: bool

    @classmethod
    def of(cls, max_loss: float | None, decoder: bool) -> Budget:
        kind = "decoder" if decoder else "encoder"
        return cls(DEFAULT_MAX_LOSS[kind] if max_loss is None else max_loss, decoder)

    @property
    def metric(self) -> str:
        return METRIC["decoder" if self.decoder else "encoder"]

    def loss(self, agreement: Mapping[str, float]) -> float:
        """The loss of an :func:`llmc.compression.distill.agreement` result."""
        if self.decoder:
            return float(agreement["perplexity"]) / max(float(agreement["teacher_perplexity"]), 1e-12) - 1.0
        return 1.0 - float(agreement["cosine_mean"])

    def within(self, agreement: Mapping[str, float]) -> bool:
        loss = self.loss(agreement)
        return math.isfinite(loss) and loss <= self.max_loss

    def describe(self, agreement: Mapping[str, float]) -> str:
        """e.g. ``loss 0.031 (1 - mean cosine ...) against --max-loss 0.02``."""
        return f"held-out loss {self.loss(agreement):.4f} ({self.metric}) against --max-loss {self.max_loss:g}"

    def record(self, before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, Any]:
        """The report's ``budget`` section."""
        return {
            "max_loss": self.max_loss, "metric": self.metric,
            "loss_pruned": round(self.loss(before), 5), "loss_distilled": round(self.loss(after), 5),
            "within": self.within(after),
        }


def metadata(report: Mapping[str, Any]) -> dict[str, str]:
    """The ``metadata_props`` entry of a compress report: what a built artifact keeps of it."""
    latency = report.get("latency_ms") or {}
    kept = {
        "budget": report["budget"],
        "held_out": report["held_out_agreement"],
        "speedup": latency.get("speedup"),
        "speedup_measured_on": latency.get("what"),
        "cut": {"layers_kept": report["layers_kept"], "ffn_neurons": report["ffn_neurons"],
                "attention_heads": report["attention_heads"], "sparsity": report["sparsity"]},
        "parameters": report["parameters"],
        "distillation": {k: report["distillation"].get(k) for k in ("steps", "seconds")},
    }
    return {COMPRESSION_METADATA: json.dumps(kept, sort_keys=True)}

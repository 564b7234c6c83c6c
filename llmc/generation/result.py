"""What one generated sequence is: its new tokens, text and timings."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional


@dataclasses.dataclass
class GenerationResult:
    """One prompt's continuation. ``token_ids`` are the new tokens (an EOS that stopped it
    included); ``text`` their decoded text (None without a tokenizer), cut before a stop string;
    ``ttft_ms`` the prefill and first token; ``ms_per_token`` the mean decode step after it (0.0
    when there was none); ``stop_reason`` is ``eos``, ``stop`` or ``length``. ``drafted`` /
    ``accepted``: draft tokens that speculative decoding (``speculative="ngram"``) verified and
    those the model agreed with (0 without it)."""

    token_ids: list[int]
    text: Optional[str]
    ttft_ms: float
    ms_per_token: float
    prompt_tokens: int
    stop_reason: str
    drafted: int = 0
    accepted: int = 0

    @property
    def tokens(self) -> int:
        """How many new tokens were generated."""
        return len(self.token_ids)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tokens": self.tokens}

"""Decoders write their own training text: the original continues the user's sentences, and the
continuations join the distillation text. The user's text is short next to what a budget trains
on; the original's continuations show the student more of what the original says and how it says
it (its own next-token distribution on its own text), at the cost of a few seconds of generation.

Sampled (temperature :data:`TEMPERATURE`, top-p :data:`TOP_P`, seeded) rather than greedy, so the
text does not collapse into the original's most likely phrases; never from the held-out lines.
"""

from __future__ import annotations

from typing import Any

PROMPTS, NEW_TOKENS, BATCH = 256, 48, 16
TEMPERATURE, TOP_P = 0.8, 0.95


def continuations(teacher: Any, tokenizer: Any, lines: list[str], *, count: int = PROMPTS,
                  new_tokens: int = NEW_TOKENS, seed: int = 0) -> list[str]:
    """Up to ``count`` texts: a training line (every ``len(lines) // count``-th) and what the
    original writes after it."""
    import torch

    if not lines or count < 1:
        return []
    chosen = lines[:: max(1, len(lines) // count)][:count]
    torch.manual_seed(seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right
    texts = []
    try:
        with torch.no_grad():
            for start in range(0, len(chosen), BATCH):
                batch = tokenizer(chosen[start : start + BATCH], return_tensors="pt", padding=True, truncation=True,
                                  max_length=64)
                out = teacher.generate(**batch, max_new_tokens=new_tokens, do_sample=True, temperature=TEMPERATURE,
                                       top_p=TOP_P, pad_token_id=tokenizer.pad_token_id)
                texts += [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return [t for t in texts if t]

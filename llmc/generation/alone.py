"""One :class:`~llmc.generation.sequence.Sequence` generated alone, on any decoder layout.

The path for decoders continuous batching cannot run (``llmc.generation.scheduler.supports``:
a cache not shared, LongRoPE's recomputed cache): the prompt is prefilled at once
(``llmc.generation.loop.prefill``, with the prefix cache), then one token a step, each chosen by
the sequence (its penalties, grammar, logprobs and stop strings), as ``Runner.generate`` runs a
one-prompt request.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from llmc.generation.loop import Request, Stepper, positions_of, prefill
from llmc.generation.prefix import PrefixCache
from llmc.generation.sequence import Sequence


def run_alone(stepper: Stepper, sequence: Sequence, pad: int, prefix: Optional[PrefixCache] = None) -> None:
    """Generate ``sequence`` to its end and :meth:`~Sequence.finish` it (with the error, if a
    run fails: the caller reads ``sequence.error``)."""
    try:
        _generate(stepper, sequence, pad, prefix)
    except Exception as exc:  # noqa: BLE001 - handed to the request as its answer
        sequence.finish("error", exc)
        return
    sequence.finish()


def _generate(stepper: Stepper, sequence: Sequence, pad: int, prefix: Optional[PrefixCache]) -> None:
    params = sequence.params
    request = Request(prompts=[sequence.prompt], max_new_tokens=params.max_new_tokens, sampling=params.sampling,
                      eos=sequence.eos, pad=pad, prefix=prefix)
    logits, past, mask, positions = prefill(stepper, request)
    token = sequence.choose(_last(logits))
    recompute = stepper.layout.recompute_cache_after
    ids: list[int] = list(sequence.prompt) + [token]
    while not sequence.finished and not sequence.cancelled:
        mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
        positions = positions[:, -1:] + 1
        if recompute is not None and mask.shape[1] == recompute + 1:
            # the cache was rotated for a shorter sequence: prefill everything again
            # (llmc.model.decoder.RECOMPUTE_CACHE_AFTER)
            capacity = mask.shape[1] + params.max_new_tokens - len(sequence.tokens)
            whole = np.asarray([ids], dtype=np.int64)
            logits, past = stepper.run(whole, mask, positions_of(mask), None, capacity=capacity, last_only=True)
        else:
            logits, past = stepper.run(np.asarray([[token]], dtype=np.int64), mask, positions, past, last_only=True)
        token = sequence.choose(_last(logits))
        ids.append(token)


def _last(logits: Any) -> np.ndarray:
    return logits.numpy()[0, -1, :]

"""What a compressed model costs: parameters, matrix-product FLOPs per token, and latency of its
ONNX export on ONNX Runtime (encoders: batch 1 x 128 tokens; decoders: one decode step after 128
cached tokens), original and compressed timed interleaved in the same process."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from llmc.compression.arch import heads
from llmc.model.decoder import ATTENTION_MASK, INPUT_IDS, LOGITS_TO_KEEP, POSITION_IDS, is_past
from llmc.runtime.timing import median_ms

LENGTH = 128


def parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def flops_per_token(config: Any, decoder: bool, length: int = LENGTH) -> int:
    """Multiply-adds x 2 per token: projections, attention over ``length`` tokens, LM head."""
    query, kv, size = heads(config)
    hidden, ffn = config.hidden_size, config.intermediate_size
    ffn_in = 2 if decoder else 1
    per_layer = hidden * (query + 2 * kv) * size + query * size * hidden + (ffn_in + 1) * hidden * ffn
    per_layer += 2 * length * query * size
    head = hidden * config.vocab_size if decoder else 0
    return 2 * (config.num_hidden_layers * per_layer + head)


def feeds(session: Any, decoder: bool, length: int = LENGTH, vocab: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for one timed run of an ``llmc export`` model."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for value in session.get_inputs():
        name = value.name
        if is_past(name):
            _, kv, _, size = value.shape
            out[name] = rng.standard_normal((1, kv, length, size)).astype(np.float32)
        elif name == INPUT_IDS:
            out[name] = rng.integers(min(100, vocab // 2), min(1000, vocab), size=(1, 1 if decoder else length), dtype=np.int64)
        elif name == ATTENTION_MASK:
            out[name] = np.ones((1, length + 1 if decoder else length), dtype=np.int64)
        elif name == POSITION_IDS:
            out[name] = np.full((1, 1), length, dtype=np.int64) if decoder else np.arange(length)[None]
        elif name == LOGITS_TO_KEEP:
            out[name] = np.array(1, dtype=np.int64)
        else:
            out[name] = np.zeros((1, length), dtype=np.int64)
    return out


def timed_length(config: Any) -> int:
    """:data:`LENGTH`, or less for a model with fewer positions."""
    return min(LENGTH, int(getattr(config, "max_position_embeddings", LENGTH) or LENGTH) - 1)


def latency(models: dict[str, Path], decoder: bool, length: int = LENGTH, vocab: int = 1000, threads: int = 0
            ) -> dict[str, float]:
    """Median milliseconds per run of each ONNX model on ONNX Runtime, to the microsecond (rounds of
    20 runs, interleaved: :func:`llmc.runtime.timing.median_ms`)."""
    from llmc.runtime.ort import OrtRunner, SessionConfig, create_session

    config = SessionConfig(intra_op_num_threads=threads)
    runners = {k: OrtRunner(create_session(p, config)) for k, p in models.items()}
    inputs = {k: feeds(r.session, decoder, length, vocab) for k, r in runners.items()}
    ms = median_ms({k: functools.partial(r.session.run, None, inputs[k]) for k, r in runners.items()})
    return {k: round(v, 3) for k, v in ms.items()}


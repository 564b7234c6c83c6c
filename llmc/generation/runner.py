"""The :class:`Runner` that ``llmc.load`` returns: the runtime's runner of an artifact, plus
``generate`` and ``logits`` for decoder artifacts (generation sits above the runtime it runs on)
and the encoder tasks' ``embed``, ``classify``, ``rerank``, ``extract``, ``answer`` (``llmc.tasks``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llmc.generation.api import generate, logits
from llmc.runtime import artifact as runtime
from llmc.tasks.methods import TaskMethods


class Runner(TaskMethods, runtime.Runner):
    """Runs a built artifact: ``run(feeds) -> {output name: array}``; a decoder's also
    ``generate`` and ``logits`` (on ONNX Runtime, with its KV cache); an encoder's the methods of
    its task (:class:`llmc.tasks.methods.TaskMethods`: ``embed``, ``classify``, ``rerank``,
    ``extract``, ``answer``)."""

    def generate(self, prompt_or_ids: Any, max_new_tokens: int = 64, **options: Any) -> Any:
        """Continue a text or token-id prompt (or a batch of them) with a decoder artifact's KV
        cache: a :class:`llmc.generation.GenerationResult` each. Options: ``temperature``,
        ``top_k``, ``top_p``, ``seed``, ``stop``, ``stream``, ``chat``, ``max_length``, ``min_new_tokens``,
        ``prefix_cache``, ``speculative`` (``"ngram"``: prompt-lookup drafts verified in one step;
        ``"auto"``: where it can run)."""
        return generate(
            self.session, self.artifact.path, prompt_or_ids, max_new_tokens=max_new_tokens,
            manifest=self.artifact.manifest, **options,
        )

    def logits(self, input_ids: Any) -> np.ndarray:
        """Full-sequence logits of token ids ([sequence] or [batch, sequence]) in one prefill."""
        return logits(self.session, self.artifact.path, input_ids, self.artifact.manifest)


def load(path: str | Path, **options: Any) -> Runner:
    """``llmc.load``: :func:`llmc.runtime.artifact.load` (same options) returning this Runner."""
    return runtime.load(path, runner=Runner, **options)

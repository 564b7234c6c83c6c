"""Text generation on a built decoder artifact: KV-cache prefill + decode on ONNX Runtime.

- ``loop``: the prefill/decode loop, the KV cache passed between steps through IOBinding, on the
  decoder I/O contract (:mod:`llmc.model.decoder`: names, cache geometry, one error line otherwise);
- ``sampling``: greedy, temperature, top-k and top-p with a seeded generator;
- ``text``: the artifact's tokenizer, chat template and generation config;
- ``evaluate``: full-sequence logits and sliding-window perplexity;
- ``prefix``: :class:`PrefixCache`, prompts' KV blocks shared across requests;
- ``api``: :func:`generate` and :func:`logits`, what ``Runner.generate`` / ``Runner.logits`` call.
"""

from __future__ import annotations

from llmc.generation.api import generate, logits
from llmc.generation.evaluate import perplexity
from llmc.generation.prefix import PrefixCache
from llmc.generation.result import GenerationResult

__all__ = ["GenerationResult", "PrefixCache", "generate", "logits", "perplexity"]

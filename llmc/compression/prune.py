"""Structured pruning of BERT-style encoders: FFN neurons and whole layers, removed physically.

Importance is measured on the user's text (activation-based, no labels needed): an FFN neuron's
mean absolute activation (after its GELU) times the norm of the weights it writes to the residual
stream, i.e. how much it moves each token on average; a layer's, how far skipping it moves the
model's output (1 - mean cosine of the last hidden states at real tokens). The same number of
neurons is kept in every layer, so the pruned model is a plain ``BertConfig`` (a smaller
``intermediate_size`` and ``num_hidden_layers``) that ``transformers`` loads, every exporter
exports and every runtime speeds up. Heads are not pruned: a ``BertConfig`` ties the head size
to ``hidden_size / num_attention_heads``, so fewer heads cannot be written as one.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from llmc.errors import LlmcError

SUPPORTED = ("bert",)


def check_model(model: Any, where: str) -> None:
    model_type = getattr(model.config, "model_type", "unknown")
    if model_type not in SUPPORTED:
        raise LlmcError(
            f"{where}: llmc compress prunes BERT-style encoders ({', '.join(SUPPORTED)}), not '{model_type}'"
        )


def ffn_importance(model: Any, batches: list[dict[str, Any]]) -> list[np.ndarray]:
    """Per layer, each FFN neuron's mean |activation| x ||output weight column|| over real tokens."""
    import torch

    sums = [torch.zeros(layer.intermediate.dense.out_features) for layer in model.encoder.layer]
    count = [0]
    masks: list[Any] = []

    def hook(index: int) -> Any:
        def record(_module: Any, _inputs: Any, output: Any) -> None:
            real = masks[-1].reshape(-1).bool()
            sums[index] += output.detach().reshape(-1, output.shape[-1])[real].abs().sum(0)
        return record

    handles = [layer.intermediate.register_forward_hook(hook(i)) for i, layer in enumerate(model.encoder.layer)]
    try:
        with torch.no_grad():
            for batch in batches:
                masks.append(batch["attention_mask"])
                count[0] += int(batch["attention_mask"].sum())
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return [
        (total / max(count[0], 1) * layer.output.dense.weight.detach().norm(dim=0)).numpy()
        for total, layer in zip(sums, model.encoder.layer, strict=True)
    ]


def layer_importance(model: Any, batches: list[dict[str, Any]]) -> list[float]:
    """Per layer, 1 - mean cosine between the model's output and its output without that layer."""
    import torch

    reference = _outputs(model, batches)
    scores = []
    layers = model.encoder.layer
    for index in range(len(layers)):
        kept = torch.nn.ModuleList([layer for i, layer in enumerate(layers) if i != index])
        model.encoder.layer = kept
        try:
            scores.append(1.0 - _mean_cosine(reference, _outputs(model, batches), batches))
        finally:
            model.encoder.layer = layers
    return scores


def _outputs(model: Any, batches: list[dict[str, Any]]) -> list[Any]:
    import torch

    with torch.no_grad():
        return [model(**batch).last_hidden_state for batch in batches]


def _mean_cosine(a: list[Any], b: list[Any], batches: list[dict[str, Any]]) -> float:
    import torch

    values = []
    for x, y, batch in zip(a, b, batches, strict=True):
        real = batch["attention_mask"].bool()
        values.append(torch.nn.functional.cosine_similarity(x[real], y[real], dim=-1))
    return float(torch.cat(values).mean())


def prune(model: Any, keep_ffn: int, keep_layers: list[int], ffn_scores: list[np.ndarray]) -> Any:
    """A new, smaller model: layers ``keep_layers`` (in order), each with its ``keep_ffn`` most
    important FFN neurons; every other weight copied."""
    import torch

    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(keep_layers)
    config.intermediate_size = keep_ffn
    student = type(model)(config)
    state = model.state_dict()
    new_state = {k: v for k, v in state.items() if not k.startswith("encoder.layer.")}
    for new_index, old_index in enumerate(keep_layers):
        keep = torch.as_tensor(np.sort(np.argsort(-ffn_scores[old_index], kind="stable")[:keep_ffn]))
        prefix, new_prefix = f"encoder.layer.{old_index}.", f"encoder.layer.{new_index}."
        for key, value in state.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :]
            if name in ("intermediate.dense.weight", "intermediate.dense.bias"):
                value = value.index_select(0, keep)
            elif name == "output.dense.weight":
                value = value.index_select(1, keep)
            new_state[new_prefix + name] = value.clone()
    missing, unexpected = student.load_state_dict(new_state, strict=False)
    if unexpected or [m for m in missing if "position_ids" not in m]:
        raise AssertionError(f"pruned state does not fit: missing {missing}, unexpected {unexpected}")
    return student.eval()

"""How much each FFN neuron, attention head and layer matters, measured on the user's text.

Activation-based (no labels, no gradients): a neuron's score is its mean |activation| over real
tokens times the norm of the output-projection column it writes through, i.e. how far it moves
a token's residual stream on average; a head's is the mean norm of exactly what it adds to the
residual stream (its context vector through its slice of the output projection); a layer's is
how far skipping it moves the model's output (1 - mean cosine of the last hidden states).
``taylor`` (first-order Taylor, |sum of activation x gradient| of the next-token loss) is the
alternative for decoders, whose text gives a loss. Measured on SmolLM2 (25% of FFN neurons and
a third of the heads pruned, before distillation and refit; ``benchmarks/compress.py``):
activation scores left a held-out perplexity of 1,243 against Taylor's 2,982 (original 104), so
activation is the default.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmc.compression.arch import Arch, get, heads, projection_inputs, real_rows


def activation(model: Any, arch: Arch, batches: list[dict[str, Any]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer, ``(FFN neuron scores, query head scores)``."""
    import torch

    layers = arch.layer_list(model)
    count_q, _, size = heads(model.config)
    ffn = [torch.zeros(get(layer, arch.ffn_out).in_features, dtype=torch.float64) for layer in layers]
    head = [torch.zeros(count_q, dtype=torch.float64) for _ in layers]
    tokens = [0]

    masks: list[Any] = []

    def record(index: int, kind: str, module: Any, x: Any) -> None:
        x = real_rows(x, masks[-1])
        if kind == "ffn":
            ffn[index] += x.abs().sum(0).double()
            return
        weight = module.weight  # [hidden, heads * size]
        for h in range(count_q):
            part = x[:, h * size : (h + 1) * size] @ weight[:, h * size : (h + 1) * size].T
            head[index][h] += part.norm(dim=-1).sum().double()

    with projection_inputs(model, arch, record), torch.no_grad():
        for batch in batches:
            masks.append(batch["attention_mask"])
            tokens[0] += int(batch["attention_mask"].sum())
            model(**batch)
    norms = [get(layer, arch.ffn_out).weight.detach().norm(dim=0).double() for layer in layers]
    scale = 1.0 / max(tokens[0], 1)
    return [(f * scale * n).numpy() for f, n in zip(ffn, norms, strict=True)], [(h * scale).numpy() for h in head]


def taylor(model: Any, arch: Arch, batches: list[dict[str, Any]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """First-order Taylor scores of a decoder: per unit, |sum over real tokens of activation x
    d(next-token loss)/d(activation)| (the loss change if the unit were zeroed, to first order)."""
    import torch

    layers = arch.layer_list(model)
    count_q, _, size = heads(model.config)
    ffn = [torch.zeros(get(layer, arch.ffn_out).in_features, dtype=torch.float64) for layer in layers]
    head = [torch.zeros(count_q, dtype=torch.float64) for _ in layers]
    saved: list[tuple[int, str, Any]] = []

    def record(index: int, kind: str, _module: Any, x: Any) -> None:
        x.retain_grad()
        saved.append((index, kind, x))

    try:
        with projection_inputs(model, arch, record):
            for batch in batches:
                saved.clear()
                labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
                model.zero_grad()
                model(**batch, labels=labels, use_cache=False).loss.backward()
                for index, kind, x in saved:
                    flat = real_rows((x * x.grad).detach().double(), batch["attention_mask"]).sum(0)
                    if kind == "ffn":
                        ffn[index] += flat
                    else:
                        head[index] += flat.reshape(count_q, size).sum(-1)
    finally:
        model.zero_grad()
    return [f.abs().numpy() for f in ffn], [h.abs().numpy() for h in head]


def layers(model: Any, arch: Arch, batches: list[dict[str, Any]]) -> list[float]:
    """Per layer, 1 - mean cosine between the output and the output without that layer."""
    import torch

    base = arch.base(model)
    reference = _outputs(base, batches, arch.decoder)
    owner_path, _, attribute = arch.layers.rpartition(".")
    owner = get(model, owner_path) if owner_path else model
    original = getattr(owner, attribute)
    scores = []
    for index in range(len(original)):
        setattr(owner, attribute, torch.nn.ModuleList([m for i, m in enumerate(original) if i != index]))
        try:
            scores.append(1.0 - _mean_cosine(reference, _outputs(base, batches, arch.decoder), batches))
        finally:
            setattr(owner, attribute, original)
    return scores


def _outputs(base: Any, batches: list[dict[str, Any]], decoder: bool) -> list[Any]:
    import torch

    extra = {"use_cache": False} if decoder else {}
    with torch.no_grad():
        return [base(**batch, **extra).last_hidden_state for batch in batches]


def _mean_cosine(a: list[Any], b: list[Any], batches: list[dict[str, Any]]) -> float:
    import torch

    values = []
    for x, y, batch in zip(a, b, batches, strict=True):
        real = batch["attention_mask"].bool()
        values.append(torch.nn.functional.cosine_similarity(x[real], y[real], dim=-1))
    return float(torch.cat(values).mean())

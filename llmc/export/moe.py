"""Mixture-of-experts layers exported densely: every expert on every token, weighted by the routing.

transformers 5 runs the experts of its MoE families (Mixtral, Qwen2/Qwen3-MoE, OLMoE, GraniteMoE,
PhiMoE, GPT-OSS, ...) through a selectable implementation (``config._experts_implementation``:
``grouped_mm`` by default, ``batched_mm``, ``eager``). None of them exports to ONNX usefully:
``grouped_mm`` traces to the custom op ``transformers::grouped_mm_fallback``, which has no ONNX
translation (the "Failed to convert the exported program" error); ``eager`` loops over the experts
a batch hits, a data-dependent loop; ``batched_mm`` gathers a copy of an expert's weights per
token and choice (a prefill of 1,000 tokens at top-2 copies the expert weights 2,000 times).

:func:`dense_experts` swaps, for the duration of an export, each experts module's ``forward`` for
:func:`_dense_forward`: the router's top-k weights scattered into a [tokens, experts] matrix
(zero for the experts not chosen), then for each expert ``e`` in turn its MLP on all tokens,
times column ``e``, summed. A token's sum is its chosen experts' outputs times their weights, as in
transformers, plus exact zeros (with top-2, bitwise the same sum; with top-k > 2 the order of the
additions differs, about 1e-7 relative). Each expert's matrices become their own 2-D initializers
(``MatMul`` with a constant weight, which ``--precision int4`` quantizes like a dense MLP's).

The cost: every token runs all ``num_experts`` experts, ``num_experts / top_k`` times the expert
FLOPs of the sparse model (Mixtral 8/2 = 4x, OLMoE 64/8 = 8x, Qwen3-MoE 128/8 = 16x), and a decode
step reads every expert's weights, not only the chosen ones'. Exact and static-shaped, right for
small models and for checking; large MoE checkpoints want a sparse MoE kernel instead.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

# Attributes transformers' ``use_experts_implementation`` decorator gives an experts module.
_DECORATED = ("has_gate", "has_bias", "is_transposed", "_is_expert_parallel", "num_experts")


def is_experts(module: Any) -> bool:
    """Whether ``module`` is an experts module of transformers' selectable-implementation kind."""
    return all(hasattr(module, name) for name in _DECORATED)


@contextlib.contextmanager
def dense_experts(model: Any) -> Iterator[int]:
    """Within the block, ``model``'s experts modules run :func:`_dense_forward` (see the module);
    yields how many were swapped. The model is restored on exit (its parameters are never copied:
    the per-expert weights are views of the 3-D ones)."""
    import torch

    swapped = [module for module in model.modules() if is_experts(module)]
    try:
        for module in swapped:
            module._llmc_dense = _split(torch, module)
            module.forward = types.MethodType(_dense_forward, module)
        yield len(swapped)
    finally:
        for module in swapped:
            module.__dict__.pop("forward", None)
            if "_llmc_dense" in module._modules:
                del module._llmc_dense


def _split(torch: Any, module: Any) -> Any:
    """A module of per-expert 2-D weight (and bias) views: ``up[e]``, ``down[e]``, ``up_bias[e]``..."""
    holder = torch.nn.Module()
    up = "gate_up_proj" if module.has_gate else "up_proj"
    for name, source in (("up", up), ("down", "down_proj")):
        names = [(name, source)] + ([(f"{name}_bias", f"{source}_bias")] if module.has_bias else [])
        for attribute, parameter in names:
            weights = getattr(module, parameter)
            views = [torch.nn.Parameter(weights[e], requires_grad=False) for e in range(module.num_experts)]
            setattr(holder, attribute, torch.nn.ParameterList(views))
    return holder


def _dense_forward(self: Any, hidden_states: Any, top_k_index: Any, top_k_weights: Any) -> Any:
    """All experts on all tokens ([tokens, hidden]), each weighted by its routing weight (0 if
    the router did not choose it for that token); the signature of transformers' experts forwards."""
    import torch

    dense = self._llmc_dense
    experts = torch.arange(self.num_experts, device=top_k_index.device)
    chosen = (top_k_index.unsqueeze(-1) == experts).to(top_k_weights.dtype)  # [tokens, k, experts]
    routing = (chosen * top_k_weights.unsqueeze(-1)).sum(dim=1)  # [tokens, experts]
    out = torch.zeros_like(hidden_states)
    for e in range(self.num_experts):
        up_bias, down_bias = (dense.up_bias[e], dense.down_bias[e]) if self.has_bias else (None, None)
        y = _linear(hidden_states, dense.up[e], up_bias, self.is_transposed)
        y = self._apply_gate(y) if self.has_gate else self.act_fn(y)
        y = _linear(y, dense.down[e], down_bias, self.is_transposed)
        if self.has_post_expert_norm:
            y = self.post_expert_norm(y)
        out = out + y * routing[:, e, None].to(y.dtype)
    return out.to(hidden_states.dtype)


def _linear(x: Any, weight: Any, bias: Any, transposed: bool) -> Any:
    """``x @ weight`` for [in, out] weights (``is_transposed``), else ``x @ weight.T``; plus bias."""
    y = x @ weight if transposed else x @ weight.transpose(0, 1)
    return y if bias is None else y + bias

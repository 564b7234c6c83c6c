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
(zero for the experts not chosen); every expert's up (and gate) projection in one MatMul against
their weights side by side, the gate applied per expert, the result scaled by its routing weight,
and one down MatMul that sums over the experts as it sums over their units. A token's output is
its chosen experts' outputs times their weights, as in transformers, plus exact zeros; the sums
are ordered differently (about 1e-7 relative). The two weights are plain 2-D initializers
(``MatMul`` with a constant weight, which ``--precision int4`` quantizes like a dense MLP's; its
blocks run along an expert's own rows while the intermediate size is a multiple of the block).
One MatMul of all experts, not one per expert: a decode step then costs what a dense MLP of the
same size costs (benchmarks.families; one per expert was 68 nodes a layer against llama's 19).

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
    """A module of every expert's weights side by side, as the right-hand sides of two MatMuls:
    ``up`` [hidden, experts * up width] and ``down`` [experts * intermediate, hidden] (views of
    the 3-D weights where their layout allows, contiguous copies otherwise), and the biases
    ``up_bias`` [experts * up width] and ``down_bias`` [experts, hidden]."""
    holder = torch.nn.Module()
    experts = module.num_experts
    up = getattr(module, "gate_up_proj" if module.has_gate else "up_proj")
    down = module.down_proj
    # is_transposed: [experts, in, out]; else [experts, out, in] (x @ weight.T per expert).
    up_in_out = up if module.is_transposed else up.transpose(1, 2)
    down_in_out = down if module.is_transposed else down.transpose(1, 2)
    up_all = up_in_out.permute(1, 0, 2).reshape(up_in_out.shape[1], -1)  # [hidden, experts * width]
    down_all = down_in_out.reshape(-1, down_in_out.shape[2])  # [experts * intermediate, hidden]
    holder.up = torch.nn.Parameter(up_all.detach().contiguous(), requires_grad=False)
    holder.down = torch.nn.Parameter(down_all.detach().contiguous(), requires_grad=False)
    if module.has_bias:
        up_bias = module.gate_up_proj_bias if module.has_gate else module.up_proj_bias
        holder.up_bias = torch.nn.Parameter(up_bias.detach().reshape(experts * up_bias.shape[1]), requires_grad=False)
        holder.down_bias = torch.nn.Parameter(module.down_proj_bias.detach(), requires_grad=False)
    return holder


def _dense_forward(self: Any, hidden_states: Any, top_k_index: Any, top_k_weights: Any) -> Any:
    """All experts on all tokens ([tokens, hidden]), each weighted by its routing weight (0 if
    the router did not choose it for that token); the signature of transformers' experts forwards.

    Two MatMuls for all experts: the up (and gate) projections side by side, the gate applied per
    expert on [tokens, experts, width], the result scaled by the routing weight, then one down
    MatMul summing over experts and intermediate units at once (the biases: ``up_bias`` added
    before the gate, ``routing @ down_bias`` after)."""
    import torch

    dense = self._llmc_dense
    experts = torch.arange(self.num_experts, device=top_k_index.device)
    chosen = (top_k_index.unsqueeze(-1) == experts).to(top_k_weights.dtype)  # [tokens, k, experts]
    routing = (chosen * top_k_weights.unsqueeze(-1)).sum(dim=1).to(hidden_states.dtype)  # [tokens, experts]
    if self.has_post_expert_norm:
        return _per_expert(self, hidden_states, routing)
    y = hidden_states @ dense.up
    if self.has_bias:
        y = y + dense.up_bias
    y = y.reshape(y.shape[0], self.num_experts, -1)  # [tokens, experts, up width]
    y = self._apply_gate(y) if self.has_gate else self.act_fn(y)
    y = (y * routing.unsqueeze(-1)).reshape(y.shape[0], -1)  # [tokens, experts * intermediate]
    out = y @ dense.down
    if self.has_bias:
        out = out + routing @ dense.down_bias
    return out.to(hidden_states.dtype)


def _per_expert(self: Any, hidden_states: Any, routing: Any) -> Any:
    """Experts with a norm after each (``has_post_expert_norm``): one expert at a time, as the
    norm is not linear in the routing weight; the columns of :func:`_split`'s side-by-side weights."""
    import torch

    dense = self._llmc_dense
    up_width = dense.up.shape[1] // self.num_experts
    inner = dense.down.shape[0] // self.num_experts
    out = torch.zeros_like(hidden_states)
    for e in range(self.num_experts):
        y = hidden_states @ dense.up[:, e * up_width : (e + 1) * up_width]
        if self.has_bias:
            y = y + dense.up_bias[e * up_width : (e + 1) * up_width]
        y = self._apply_gate(y) if self.has_gate else self.act_fn(y)
        y = y @ dense.down[e * inner : (e + 1) * inner]
        if self.has_bias:
            y = y + dense.down_bias[e]
        y = self.post_expert_norm(y)
        out = out + y * routing[:, e, None]
    return out

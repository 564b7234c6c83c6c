"""Refitting the output projections after pruning: the kept neurons (or heads) are asked to
reproduce what all of them wrote, by least squares on the activations of the user's text.

For a layer whose output projection maps activations ``a`` (FFN neurons after the activation
function, or the heads' concatenated context vectors) through ``W`` (and bias ``b``), pruning keeps
the columns ``K``. Instead of just dropping the others, ``W_K`` and ``b`` are re-solved so that
``a_K W_K^T + b`` is closest to ``a W^T + b`` over the text's real tokens: the normal equations
need only the Gram matrix of ``[a, 1]``, gathered in one pass over the text (a small ridge keeps
them well posed). This is the output-reconstruction step of structured-pruning methods such as
ZipLM and FLAP; a removed neuron whose output is nearly constant or nearly a combination of kept
ones then costs almost nothing. Distillation starts from there.
"""

from __future__ import annotations

from typing import Any

from llmc.compression.arch import Arch, projection_inputs, real_rows

RIDGE = 1e-4  # relative to the mean diagonal of the kept Gram block


def grams(model: Any, arch: Arch, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per layer, ``{"ffn": G, "attn": G}``: the Gram matrix of ``[activations, 1]`` (float64)
    over the real tokens of ``batches``, for the FFN and attention output projections."""
    import torch

    found: list[dict[str, Any]] = [{} for _ in arch.layer_list(model)]
    masks: list[Any] = []

    def record(index: int, kind: str, _module: Any, x: Any) -> None:
        x = real_rows(x.detach(), masks[-1]).double()
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        found[index][kind] = found[index].get(kind, 0) + x.T @ x

    with projection_inputs(model, arch, record), torch.no_grad():
        for batch in batches:
            masks.append(batch["attention_mask"])
            model(**batch, **({"use_cache": False} if arch.decoder else {}))
    return found


def refit(gram: Any, weight: Any, bias: Any, keep: Any) -> tuple[Any, Any]:
    """``(weight [out, len(keep)], bias or None)`` reproducing ``weight`` / ``bias`` on all columns
    from the columns ``keep``, in least squares under ``gram`` (of ``[a, 1]``, see :func:`grams`)."""
    import torch

    columns = weight.shape[1]
    full = weight.double() if bias is None else torch.cat([weight.double(), bias.double()[:, None]], 1)
    g = gram if bias is not None else gram[:columns, :columns]
    rows = keep if bias is None else torch.cat([keep, torch.tensor([columns])])
    g_kk, g_ka = g[rows][:, rows], g[rows]
    ridge = RIDGE * float(g_kk.diagonal().mean().clamp(min=1e-12))
    solved = torch.linalg.solve(g_kk + ridge * torch.eye(len(rows), dtype=g.dtype), g_ka @ full.T)  # [k(+1), out]
    new_weight = solved[: len(keep)].T.to(weight.dtype).contiguous()
    return new_weight, (None if bias is None else solved[-1].to(bias.dtype).contiguous())

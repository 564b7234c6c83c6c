"""Prove that an attention bias is the padding mask of one graph input, by evaluating it.

ONNX Runtime's ``QAttention`` (the int8 attention kernel, ~0.4 ms faster on MiniLM than a
quantized projection + Split + MultiHeadAttention) takes a raw 0/1 ``mask_index`` instead of an
additive attention bias. Exporters build that bias from ``attention_mask`` through long,
version-dependent op chains (transformers' vmap-style mask functions: Range, GatherND, And,
Where...), so matching their structure would break with every release. Semantics are checked
instead: the bias's input cone must read exactly one graph input (rank 2, the mask) and
constants, and on probe masks (several batch/sequence sizes, random padding, an all-ones and
an all-zeros row) it must equal ``where(mask[b, j], 0, v)`` broadcast over heads and query
positions, for one finite ``v <= -1e4``. Anything else (causal or sliding-window masks,
position-dependent biases, masks that un-mask padded rows) fails the proof and keeps the
unfused form.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

PROBE_SHAPES = ((2, 7), (3, 12))
MIN_FILTER = -1e4  # the masked value must be at least this negative


@dataclasses.dataclass(frozen=True)
class PaddingMask:
    mask: ir.Value  # graph input [batch, sequence], 1 = attend
    filter_value: float  # the bias at masked positions


def prove_padding_mask(model: ir.Model, bias: ir.Value) -> PaddingMask | None:
    """The graph input and filter value ``bias`` is a padding mask of, or None."""
    source = _single_graph_input(model, bias)
    if source is None or source.shape is None or len(source.shape) != 2:
        return None
    if source.dtype not in (ir.DataType.INT64, ir.DataType.INT32, ir.DataType.BOOL, ir.DataType.FLOAT):
        return None
    session = _bias_session(model, bias, source)
    if session is None:
        return None
    filter_value = None
    rng = np.random.default_rng(0)
    for batch, sequence in PROBE_SHAPES:
        mask = (rng.random((batch, sequence)) < 0.7).astype(np.int64)
        mask[0] = 1
        mask[1, : sequence // 2] = 1
        mask[1, -1] = 0
        mask[-1] = 0 if batch > 2 else mask[-1]
        try:
            (out,) = session.run(None, {source.name: mask.astype(source.dtype.numpy())})
        except Exception:  # noqa: BLE001 - a subgraph that cannot run on probes proves nothing
            return None
        if out.shape not in ((batch, 1, sequence, sequence), (batch, 1, 1, sequence)):
            return None
        keep = np.broadcast_to(mask[:, None, None, :].astype(bool), out.shape)
        if np.any(out[keep] != 0):
            return None
        masked = np.unique(out[~keep])
        if masked.size != 1 or not np.isfinite(masked[0]) or masked[0] > MIN_FILTER:
            return None
        if filter_value is not None and masked[0] != filter_value:
            return None
        filter_value = float(masked[0])
    return PaddingMask(source, filter_value) if filter_value is not None else None


def _single_graph_input(model: ir.Model, value: ir.Value) -> ir.Value | None:
    """The only graph input ``value`` depends on (through nodes without subgraphs), or None."""
    inputs = {id(v): v for v in model.graph.inputs}
    found: dict[int, ir.Value] = {}
    seen: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if id(v) in inputs:
            found[id(v)] = v
            continue
        node = v.producer()
        if node is None:
            if v.const_value is None:
                return None
            continue
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            return None
        stack.extend(i for i in node.inputs if i is not None)
    return next(iter(found.values())) if len(found) == 1 else None


def _bias_session(model: ir.Model, bias: ir.Value, source: ir.Value):
    """An ONNX Runtime session computing ``bias`` from ``source`` alone."""
    from llmc.errors import LlmcError
    from llmc.model.io import ort_model_source
    from llmc.runtime.ort import SessionConfig, create_session

    sub = model.clone()
    values = {v.name: v for node in sub.graph for v in node.outputs}
    sub.graph.outputs.clear()
    sub.graph.outputs.append(values[bias.name])
    common_passes.RemoveUnusedNodesPass()(sub)
    kept = [v for v in sub.graph.inputs if v.name == source.name]
    sub.graph.inputs.clear()
    sub.graph.inputs.extend(kept)
    # The cone's shapes were inferred for the model's sizes: probes use others.
    for node in sub.graph:
        for v in node.outputs:
            v.shape = None
    try:
        with ort_model_source(sub) as data:
            return create_session(data, SessionConfig(graph_optimization_level="disable", intra_op_num_threads=1), sub)
    except LlmcError:
        return None

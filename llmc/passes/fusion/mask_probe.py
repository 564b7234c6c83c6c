"""What an attention mask computes, found by running it: causal, padding, and a sliding window.

GroupQueryAttention does not take the model's mask: it masks causally by itself (cache columns
``<=`` the query's), takes the padding from ``attention_mask`` (:mod:`llmc.passes.fusion.gqa`)
and, with ``local_window_size``, a sliding window. Fusing is exact only when the model's mask is
exactly that. Exporters write the mask in many shapes (transformers 5's vmap-built masks with
GatherND/And, older Trilu/Range forms, sliding-window and chunked variants), and onnxscript's own
mask check never fails (its ``match`` result is compared with ``None``); so the mask is judged
by its semantics, not its nodes: its subgraph, from the graph inputs, runs in ONNX Runtime on
probe inputs (batches with left padding in either row; prefill, a decode step and a chunk after a
cache longer than any integer constant in the subgraph, and a decode step after ``MAX_WINDOW``
tokens, so that a window shows however it is written) and must equal

    attend[b, q, k] = attention_mask[b, k] and k <= P + q and (W == 0 or k > P + q - W)

on every real query row (``P`` the past length; rows of padding tokens attend to nothing real
in either graph), for one window ``W`` (0: none) read off the probes. A boolean mask attends
where true; an additive float mask attends where it is 0 and must be <= -1e4 elsewhere.

Requires: the mask depends only on graph inputs named by :mod:`llmc.model.decoder` (through
their values or shapes) and on small constants. Ensures: a window, or why not.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from llmc.model import decoder

MAX_WINDOW = 1 << 15  # longer windows (constants) are not probed: the mask is refused
_BLOCKED = -1e4  # an additive mask's masked entries are at most this
_CONSTANT_BYTES = 1 << 16


def mask_window(model: ir.Model, mask: ir.Value) -> int | str:
    """The sliding window ``W`` of ``mask`` (0: plain causal with padding), or why it is not one."""
    found = _subgraph(model, mask)
    if isinstance(found, str):
        return found
    nodes, inputs, longest = found
    if longest > MAX_WINDOW:
        return f"the mask uses a constant {longest} larger than the probes reach ({MAX_WINDOW})"
    try:
        session = _session(nodes, inputs, mask)
    except Exception as exc:  # noqa: BLE001 - any failure to run the mask alone means "not understood"
        return f"the mask does not run on its own ({type(exc).__name__})"
    probes = []
    for case in _cases(longest):
        feeds = _feeds(model, inputs, *case)
        try:
            (value,) = session.run(None, {name: feeds[name] for name in (v.name for v in inputs)})
        except Exception as exc:  # noqa: BLE001
            return f"the mask fails on probe inputs ({type(exc).__name__})"
        attend = _attended(np.asarray(value))
        if isinstance(attend, str):
            return attend
        probes.append((attend, feeds))
    window = _window_of(*max(probes, key=lambda p: p[1][decoder.ATTENTION_MASK].shape[1]))
    for attend, feeds in probes:
        problem = _compare(attend, feeds, window)
        if problem:
            return problem
    return window


def _subgraph(model: ir.Model, mask: ir.Value) -> tuple[list[ir.Node], list[ir.Value], int] | str:
    graph_inputs = {id(v): v for v in model.graph.inputs}
    known = {v.name for v in model.graph.inputs if v.name in decoder.TOKEN_INPUTS or decoder.is_past(v.name)}
    nodes: dict[int, ir.Node] = {}
    inputs: dict[int, ir.Value] = {}
    longest = 0
    stack = [mask]
    while stack:
        value = stack.pop()
        if id(value) in graph_inputs:
            if value.name not in known:
                return f"the mask reads the graph input '{value.name}'"
            inputs[id(value)] = value
            continue
        if value.const_value is not None:
            if value.const_value.nbytes > _CONSTANT_BYTES:
                return f"the mask reads a large constant '{value.name}'"
            longest = max(longest, _largest_integer(value.const_value.numpy()))
            continue
        node = value.producer()
        if node is None:
            return f"the mask reads '{value.name}', which nothing produces"
        if id(node) in nodes:
            continue
        if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
            return f"the mask has a control-flow node '{node.name}'"
        if node.op_type == "Constant":
            for attr in node.attributes.values():  # value, value_int(s), value_float(s)
                value = attr.value.numpy() if attr.type == ir.AttributeType.TENSOR else np.asarray(attr.value)
                longest = max(longest, _largest_integer(value))
        nodes[id(node)] = node
        stack.extend(i for i in node.inputs if i is not None)
        if len(nodes) > 400:
            return "the mask's subgraph is too large to probe"
    order = [node for node in model.graph if id(node) in nodes]
    return order, list(inputs.values()), longest


def _largest_integer(array: np.ndarray) -> int:
    """The largest magnitude of a small integer or whole-valued float constant (a window size)."""
    if array.size == 0 or array.size > 16 or not np.issubdtype(array.dtype, np.number):
        return 0
    if not np.issubdtype(array.dtype, np.integer):
        finite = array[np.isfinite(array)]
        array = finite[finite == np.round(finite)] if finite.size else finite
        if array.size == 0:
            return 0
    values = np.abs(array.astype(np.float64).reshape(-1))
    values = values[values < (1 << 31)]  # INT64_MAX-style sentinels (Slice ends) are not sizes
    return int(values.max()) if values.size else 0


def _session(nodes: list[ir.Node], inputs: list[ir.Value], mask: ir.Value):  # noqa: ANN202
    from llmc.runtime.ort import SessionConfig, create_session

    values = {id(v) for n in nodes for v in n.outputs} | {id(v) for v in inputs}
    initializers = {}
    for node in nodes:
        for value in node.inputs:
            if value is not None and id(value) not in values and value.const_value is not None:
                initializers[value.name] = ir.serde.serialize_tensor(value.const_value)
                initializers[value.name].name = value.name
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(
            [ir.serde.serialize_node(node) for node in nodes],
            "mask",
            [onnx.helper.make_tensor_value_info(v.name, int(v.dtype), None) for v in inputs],
            [onnx.helper.make_tensor_value_info(mask.name, int(mask.dtype), None)],
            list(initializers.values()),
        ),
        opset_imports=[onnx.helper.make_opsetid(d or "", v) for d, v in _opsets(nodes).items()],
    )
    proto.ir_version = 8
    return create_session(proto.SerializeToString(), SessionConfig(intra_op_num_threads=1))


def _opsets(nodes: list[ir.Node]) -> dict[str, int]:
    found: dict[str, int] = {"": 18}
    for node in nodes:
        domain = "" if node.domain == "ai.onnx" else node.domain
        if node.graph is not None and node.graph.opset_imports:
            found[domain] = node.graph.opset_imports.get(domain, found.get(domain, 1))
    return found


def _cases(longest: int) -> list[tuple[int, int, int, tuple[int, ...]]]:
    """(batch, new tokens, past, left padding per row) probes."""
    far = longest + 7
    # a window written so that no constant shows it (computed, say) still shows within MAX_WINDOW;
    # row 0 padded once, so a mask reading one row for the whole batch does not pass
    return [
        (2, 6, 0, (0, 2)), (2, 1, far, (0, 3)), (1, 5, far - 2, (0,)), (2, 3, 4, (0, 5)),
        (2, 1, MAX_WINDOW + 8, (3, 0)), (2, 4, 6, (2, 0)),
    ]


def _feeds(model: ir.Model, inputs: list[ir.Value], batch: int, new: int, past: int, pads: tuple[int, ...]) -> dict:
    total = past + new
    attention = np.ones((batch, total), dtype=np.int64)
    for row, pad in enumerate(pads):
        attention[row, :pad] = 0
    positions = np.clip(attention.cumsum(-1) - 1, 0, None)[:, past:]
    feeds = {
        decoder.INPUT_IDS: np.ones((batch, new), dtype=np.int64),
        decoder.ATTENTION_MASK: attention,
        decoder.POSITION_IDS: positions.astype(np.int64),
    }
    for value in inputs:
        if decoder.is_past(value.name):
            shape = [d if isinstance(d, int) else 1 for d in value.shape] if value.shape is not None else [1, 1, 1, 1]
            shape[0], shape[2] = batch, past
            feeds[value.name] = np.zeros(shape, dtype=value.dtype.numpy())
    for value in inputs:
        if value.name in feeds and feeds[value.name].dtype != value.dtype.numpy():
            feeds[value.name] = feeds[value.name].astype(value.dtype.numpy())
    return feeds


def _attended(value: np.ndarray) -> np.ndarray | str:
    if value.ndim != 4:
        return f"the mask has rank {value.ndim}, not [batch, heads, queries, keys]"
    if value.dtype == np.bool_:
        attend = value
    elif np.issubdtype(value.dtype, np.floating):
        attend = value == 0
        if not np.all(attend | (value <= _BLOCKED)):
            return "the additive mask has values other than 0 and large negatives"
    else:
        return f"the mask is {value.dtype}, not boolean or float"
    if value.shape[1] != 1 and not np.all(attend == attend[:, :1]):
        return "the mask differs between heads"
    return attend[:, 0]


def _expected(feeds: dict, window: int) -> np.ndarray:
    attention = feeds[decoder.ATTENTION_MASK].astype(bool)
    batch, total = attention.shape
    new = feeds[decoder.INPUT_IDS].shape[1]
    past = total - new
    queries = past + np.arange(new)[:, None]
    keys = np.arange(total)[None, :]
    allowed = keys <= queries
    if window:
        allowed &= keys > queries - window
    return attention[:, None, :] & allowed[None]


def _window_of(attend: np.ndarray, feeds: dict) -> int:
    """The keys the last query of an unpadded row attends to, when fewer than all."""
    attention = feeds[decoder.ATTENTION_MASK]
    row = int(np.flatnonzero(attention.all(axis=1))[0])  # every probe has an unpadded row
    count = int(attend[min(row, attend.shape[0] - 1), -1].sum())
    return count if count < attention.shape[1] else 0


def _compare(attend: np.ndarray, feeds: dict, window: int) -> str | None:
    expected = _expected(feeds, window)
    if attend.shape[0] not in (1, expected.shape[0]) or attend.shape[1:] != expected.shape[1:]:
        return f"the mask's shape {list(attend.shape)} is not [batch, queries, keys] {list(expected.shape)}"
    attend = np.broadcast_to(attend, expected.shape)
    new = feeds[decoder.INPUT_IDS].shape[1]
    real = feeds[decoder.ATTENTION_MASK][:, -new:].astype(bool)  # query rows of real tokens
    if not np.array_equal(attend[real], expected[real]):
        what = f"causal with a {window}-key sliding window" if window else "causal"
        return f"the mask is not {what} with the attention_mask's padding"
    return None

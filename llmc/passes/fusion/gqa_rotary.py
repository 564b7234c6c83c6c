"""RoPE inside GroupQueryAttention (``do_rotary``): the two RotaryEmbedding nodes before each
attention become the attention's own rotation, as onnxruntime-genai's builder writes it.

The kernel rotates the token in column ``c`` of the attention mask by position ``c`` (the first
prompt: ``0..S-1``; later steps: ``seqlens_k + 1 - S + s``, and ``seqlens_k`` is ``T - 1``, see
:mod:`llmc.passes.fusion.gqa`). The unfused graph rotates it by ``position_ids``, which count from
each row's first real token. For a row without left padding the two are the same. For a row with
``p`` padding columns every query and every key of that row is rotated ``p`` positions further,
consistently for the prompt and every later step; RoPE attention scores depend only on the
difference of the two positions, so attention outputs and logits are those of the unfused graph
(float rounding apart; the tests compare left-padded batches). What changes is the cache itself:
keys of a left-padded row are stored rotated by column, so ``position_ids`` is no longer read and
a cache written by another graph is not interchangeable with this one's. The manifest records it
(``gqa.rotary_inside``).

Requires: both RotaryEmbeddings read the graph input ``position_ids`` and the same cos/sin cache,
computed in the graph from ``Range(0, max(position_ids) + 1)`` (:mod:`llmc.passes.fusion.rotary`'s
form; constant caches are left outside, since their length may not cover every column); full
rotation (``2 * cache width == head size``), no scale. Ensures: the cache is re-computed from
``Range(0, T)``, ``T`` the attention mask's length, so it covers every column.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from llmc.passes.fusion.gqa import trailing_inputs

MS = "com.microsoft"


class RotaryInsideGroupQueryAttention(pattern.RewriteRuleClassBase):
    def __init__(self) -> None:
        # The cos/sin caches are shared by every layer: keep them until all layers are rewritten.
        super().__init__("RotaryInsideGroupQueryAttention", remove_nodes=True)
        self._caches: dict[int, tuple[ir.Value, ir.Value]] = {}

    def cleanup(self) -> None:
        self._caches.clear()

    def pattern(self, op, q, k, v, past_key, past_value, seqlens_k, total, bias, position_ids, cos, sin):  # noqa: ANN001, ANN201
        q_rotated = op.RotaryEmbedding(q, position_ids, cos, sin, _domain=MS, _outputs=["q_rotated"])
        k_rotated = op.RotaryEmbedding(k, position_ids, cos, sin, _domain=MS, _outputs=["k_rotated"])
        return op.GroupQueryAttention(
            q_rotated, k_rotated, v, past_key, past_value, seqlens_k, total, None, None, None, bias,
            _domain=MS, _outputs=3, _allow_other_attributes=True, _allow_other_inputs=True,  # head_sink, query_seqlens
        )

    def check(self, context, q_rotated, k_rotated, position_ids, cos, **_) -> pattern.MatchResult:  # noqa: ANN001
        result = pattern.MatchResult()
        graph = context.model.graph
        if not any(value is position_ids for value in graph.inputs) or position_ids.name != "position_ids":
            return result.fail("the rotation does not read the model input position_ids", position_ids)
        mask = next((value for value in graph.inputs if value.name == "attention_mask"), None)
        if mask is None:
            return result.fail("no attention_mask input to take the columns from", position_ids)
        attention = next(use.node for use in q_rotated.uses() if use.node.op_type == "GroupQueryAttention")
        if attention.attributes.get_int("do_rotary", 0):
            return result.fail("the attention rotates already", q_rotated)
        if len(q_rotated.uses()) != 1 or len(k_rotated.uses()) != 1:
            return result.fail("a rotated query or key has other consumers", q_rotated)
        for node in (q_rotated.producer(), k_rotated.producer()):
            if node.attributes.get_int("rotary_embedding_dim", 0) or node.attributes.get_float("scale", 1.0) != 1.0:
                return result.fail("partial or scaled rotation", node)
        if _range_chain(cos) is None:
            return result.fail("the cos/sin cache is not computed in the graph from Range over the positions", cos)
        width = cos.shape[1] if cos.shape is not None and cos.shape.rank() == 2 else None
        head = _head_size(attention, q_rotated.producer().inputs[0])
        if not isinstance(width, int) or not isinstance(head, int) or 2 * width != head:
            return result.fail(f"rotation width {width} is not the full head ({head})", cos)
        self._mask, self._interleaved = mask, q_rotated.producer().attributes.get_int("interleaved", 0)
        return result

    def rewrite(self, op, q, k, v, past_key, past_value, seqlens_k, total, bias, q_rotated, cos, sin, **_):  # noqa: ANN001, ANN201
        attention = next(use.node for use in q_rotated.uses() if use.node.op_type == "GroupQueryAttention")
        key = id(cos)
        if key not in self._caches:
            self._caches[key] = (_by_columns(op, cos, self._mask), _by_columns(op, sin, self._mask))
        cos_columns, sin_columns = self._caches[key]
        attributes = {name: attr.value for name, attr in attention.attributes.items()}
        attributes.update(do_rotary=1, rotary_interleaved=self._interleaved)
        return op.GroupQueryAttention(
            q, k, v, past_key, past_value, seqlens_k, total, cos_columns, sin_columns, None, bias,
            *trailing_inputs(attention), _domain=MS, _outputs=3, **attributes,
        )


def _head_size(attention: ir.Node, q: ir.Value) -> int | None:
    """The attention's head size: the past key's last axis (``[B, Hkv, P, head]``), else the
    query's hidden size over its heads (a normalized query's reshape may leave it unknown)."""
    past = attention.inputs[3] if len(attention.inputs) > 3 else None
    if past is not None and past.shape is not None and past.shape.rank() == 4 and isinstance(past.shape[3], int):
        return past.shape[3]
    heads = attention.attributes.get_int("num_heads", 0)
    hidden = q.shape[-1] if q.shape is not None and q.shape.rank() == 3 else None
    return hidden // heads if isinstance(hidden, int) and heads else None


def _range_chain(value: ir.Value) -> list[ir.Node] | None:
    """The nodes from ``Range(0, n, 1)`` to ``value`` (one input path each, in order), when every
    other input on the way is a constant; None for any other form."""
    chain: list[ir.Node] = []
    current = value.producer()
    while current is not None and len(chain) < 8:
        chain.append(current)
        if current.op_type == "Range" and current.domain in ("", "ai.onnx"):
            return list(reversed(chain))
        dynamic = [i for i in current.inputs if i is not None and i.const_value is None and not _is_constant(i)]
        if len(dynamic) != 1:
            return None
        current = dynamic[0].producer()
    return None


def _is_constant(value: ir.Value) -> bool:
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx")


def _by_columns(op, cache: ir.Value, mask: ir.Value) -> ir.Value:  # noqa: ANN001
    """``cache``'s chain re-built with the Range's limit the mask's length."""
    chain = _range_chain(cache)
    assert chain is not None  # checked
    columns = op.Squeeze(op.Shape(mask, start=1, end=2))
    replaced: dict[int, ir.Value] = {}
    for index, node in enumerate(chain):
        inputs = [replaced.get(id(i), i) for i in node.inputs]
        if index == 0:
            inputs = [inputs[0], columns, inputs[2]]
        attributes = {name: attr.value for name, attr in node.attributes.items()}
        out = getattr(op, node.op_type)(*inputs, _domain=node.domain, **attributes)
        replaced[id(node.outputs[0])] = out
    return replaced[id(cache)]


def rules() -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet([RotaryInsideGroupQueryAttention.rule()])

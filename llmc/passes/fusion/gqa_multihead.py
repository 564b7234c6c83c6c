"""GroupQueryAttention for multi-head models (every query head its own key/value head: GPT-NeoX,
GPT-J, GPT-2, OPT).

onnxscript's GQA pattern needs the key/value heads repeated (``Unsqueeze``/``Expand``/``Reshape``)
and the query as a reshape of a ``[B, S, D]`` projection; a multi-head model has no repeat and
often splits q/k/v out of one projection after the head transpose (GPT-NeoX), so it fused into
MultiHeadAttention instead. There, the KV cache is concatenated outside the kernel and the whole
cache is transposed and reshaped to ``[B, T, D]`` for every layer and step (three copies of the
cache per layer per token), and the runtime cannot bind one KV buffer for past and present:
1.18-1.20x llama's ms/token at equal size. GroupQueryAttention with ``kv_num_heads = num_heads``
takes the cache as it is (``[B, H, P, Dh]``), as onnxruntime-genai's builder writes these models.

The rule starts from the SDPA with the past concatenated before the new keys and values, the
query optionally rotated by a ``RotaryEmbedding`` (partial rotation kept, as
:mod:`llmc.passes.fusion.gqa` carries it) and the key rotated alike; q/k/v are taken in
``[B, H, S, Dh]`` and handed to the kernel as ``[B, S, D]`` (a transpose and reshape of the new
tokens only). The node is written as :mod:`llmc.passes.fusion.gqa` writes it: the padding from
``attention_mask``, the mask judged by running it, the scale and window carried.

Requires: query, key and value ``[B, H, S, Dh]`` with one ``H`` for all three and the past, the
attention's output transposed back and reshaped to ``[B, S, D]`` (or ``[B * S, D]``, GPT-2's
merge for its Gemm: then reshaped so after the kernel), both or neither of q and k rotated. Ensures: one GroupQueryAttention with three outputs, ``kv_num_heads == num_heads``.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import _fusion_utils, pattern

from llmc.passes.fusion.gqa import PaddingAwareGroupQueryAttention, rotary_attributes

MS = "com.microsoft"
_HEADS = [0, 2, 1, 3]


class MultiHeadGroupQueryAttention(PaddingAwareGroupQueryAttention):
    def pattern(self, op, query, key, value, past_key, past_value, position_ids, cos, sin, mask, merged_shape):  # noqa: ANN001, ANN201, E501
        q = pattern.OrValue(
            [op.RotaryEmbedding(query, position_ids, cos, sin, _domain=MS), query],
            tag_var="query_rotated", tag_values=[True, False],
        )
        k = pattern.OrValue(
            [op.RotaryEmbedding(key, position_ids, cos, sin, _domain=MS), key],
            tag_var="key_rotated", tag_values=[True, False],
        )
        key_seq = op.Concat(past_key, k, axis=-2)
        value_seq = op.Concat(past_value, value, axis=-2)
        attention = op.SDPA(
            q, key_seq, value_seq, mask, key_format="BHSd", _domain="ai.onnxruntime._fusion", _outputs=["attention"]
        )
        merged = op.Reshape(op.Transpose(attention, perm=_HEADS), merged_shape, _outputs=["merged"])
        return merged, key_seq, value_seq

    def check(  # noqa: PLR0913
        self, context, query, key, value, past_key, past_value, mask, attention, merged,  # noqa: ANN001
        query_rotated=False, key_rotated=False, **_,  # noqa: ANN001, ANN003
    ) -> pattern.MatchResult:
        if query_rotated != key_rotated:
            return pattern.MatchResult().fail("the query and the key are not rotated alike", query)
        dims: dict = {}
        for tensor, names in (
            (query, ["B", "H", "S", "Dh"]), (key, ["B", "H", "S", "Dh"]), (value, ["B", "H", "S", "Dv"]),
            (past_key, ["B", "H", "P", "Dh"]), (past_value, ["B", "H", "P", "Dv"]),
        ):
            if not _fusion_utils.check_shape_bool(dims, tensor, names):
                return pattern.MatchResult().fail(f"{tensor.name} is not {names}", tensor)
        if merged.shape is None or merged.shape.rank() not in (2, 3):
            return pattern.MatchResult().fail("the heads are not merged back to [B, S, D] or [B * S, D]", merged)
        heads = dims["H"]
        if not isinstance(heads, int) or dims["Dh"] != dims["Dv"]:
            return pattern.MatchResult().fail("the heads are not known, or values differ in size from keys", query)
        rotated = attention.producer().inputs[0]
        self.num_heads = self.kv_num_heads = heads
        self._rotary = None
        if query_rotated:
            self._rotary = [rotary_attributes(rotated), rotary_attributes(attention.producer().inputs[1].producer().inputs[1])]
        bindings = {"query_BSHDh": query, "query_BSD": query, "query_BHSDh_rope": rotated, "mask": mask}
        return self.check_inputs(context, bindings, pattern.MatchResult())

    def rewrite(self, op, query, key, value, past_key, past_value, position_ids, cos, sin, mask, merged, merged_shape, **_):  # noqa: ANN001, ANN201, E501
        shape = op.Constant(value=ir.tensor([0, 0, -1], dtype=ir.DataType.INT64))
        q, k, v = (op.Reshape(op.Transpose(x, perm=_HEADS), shape) for x in (query, key, value))
        out, present_key, present_value = super().rewrite(
            op, q, k, v, past_key, past_value, position_ids, cos, sin, mask, None, None
        )
        if merged.shape.rank() == 2:  # GPT-2 merges batch and sequence for its Gemm projection
            out = op.Reshape(out, merged_shape)
        return out, present_key, present_value


def rules() -> list[pattern.RewriteRuleSet]:
    return [pattern.RewriteRuleSet([MultiHeadGroupQueryAttention.rule()])]

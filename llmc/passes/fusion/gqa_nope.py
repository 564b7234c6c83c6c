"""GroupQueryAttention of a layer without RoPE ("NoPE": SmolLM3's every fourth layer, Cohere 2's
global layers).

onnxscript's GQA pattern starts from the two RotaryEmbedding nodes, so a layer that does not
rotate stayed MultiHeadAttention, and a graph with one such layer lost the shared KV buffer that
an all-GroupQueryAttention graph decodes with (SmolLM3 at 1.23-1.36x llama's ms/token). This is
the same subgraph without the rotation, written as :mod:`llmc.passes.fusion.gqa` writes it (the
padding from ``attention_mask``, the mask judged by running it, scale and window carried) with no
RotaryEmbedding and no ``do_rotary``.

Requires: q/k/v ``Reshape`` to heads and ``Transpose`` to ``[B, H, S, Dh]``, the past concatenated
before the new keys and values, the KV heads repeated by ``Unsqueeze``/``Expand``/``Reshape`` for
onnxscript's SDPA; every shape as onnxscript's GQA check requires it (``[B, S, D]`` inputs, a
``[B, Hkv, P, Dh]`` past, heads known). Ensures: one GroupQueryAttention with three outputs.
"""

from __future__ import annotations

from onnxscript.rewriter import _fusion_utils, _ir_utils, pattern

from llmc.passes.fusion.gqa import PaddingAwareGroupQueryAttention

_HEADS = [0, 2, 1, 3]


def _heads(op, value, name: str):  # noqa: ANN001, ANN202
    """``value`` [B, S, H*Dh] reshaped to heads and moved to [B, H, S, Dh]; ``name`` names the reshape."""
    return op.Transpose(op.Reshape(value, pattern.ANY_VALUE, _outputs=[name]), perm=_HEADS)


def _repeated(op, sequence):  # noqa: ANN001, ANN202
    return op.Reshape(op.Expand(op.Unsqueeze(sequence, [2]), pattern.ANY_VALUE), pattern.ANY_VALUE)


class NoRotaryGroupQueryAttention(PaddingAwareGroupQueryAttention):
    def pattern(self, op, query_BSD, key_BSDkv, value_BSDkv, past_key, past_value, mask):  # noqa: ANN001, ANN201, N803
        query = op.Transpose(
            op.Reshape(query_BSD, pattern.ANY_VALUE, _outputs=["query_BSHDh"]), perm=_HEADS,
            _outputs=["query_BHSDh_rope"],
        )
        key = _heads(op, key_BSDkv, "key_BSHkvDh")
        value = _heads(op, value_BSDkv, "value_BSHkvDh")
        key_seq = op.Concat(past_key, key, axis=-2)
        value_seq = op.Concat(past_value, value, axis=-2)
        attention = op.SDPA(
            query, _repeated(op, key_seq), _repeated(op, value_seq), mask, key_format="BHSd",
            _domain="ai.onnxruntime._fusion",
        )
        return op.Reshape(op.Transpose(attention, perm=_HEADS), pattern.ANY_VALUE), key_seq, value_seq

    def check(self, context, query_BSD, key_BSDkv, value_BSDkv, past_key, past_value, query_BSHDh, key_BSHkvDh, **bindings):  # noqa: ANN001, N803, E501
        dims: dict = {}
        for value, names in (
            (query_BSD, ["B", "S", "D"]), (key_BSDkv, ["B", "S", "Dkv"]), (value_BSDkv, ["B", "S", "Dkv"]),
            (past_key, ["B", "Hkv", "P", "Dh"]), (past_value, ["B", "Hkv", "P", "Dv"]),
        ):
            if not _fusion_utils.check_shape_bool(dims, value, names):
                return pattern.MatchResult().fail(f"{value.name} is not {names}", value)
        heads, kv_heads = _ir_utils.get_dim(query_BSHDh, 2), _ir_utils.get_dim(key_BSHkvDh, 2)
        if not isinstance(heads, int) or not isinstance(kv_heads, int):
            return pattern.MatchResult().fail("the number of heads is not known", query_BSHDh)
        self.num_heads, self.kv_num_heads, self._rotary = heads, kv_heads, None
        everything = {
            "query_BSD": query_BSD, "key_BSDkv": key_BSDkv, "value_BSDkv": value_BSDkv, "past_key": past_key,
            "past_value": past_value, "query_BSHDh": query_BSHDh, "key_BSHkvDh": key_BSHkvDh, **bindings,
        }
        return self.check_inputs(context, everything, pattern.MatchResult())

    def rewrite(self, op, query_BSD, key_BSDkv, value_BSDkv, past_key, past_value, mask, query_BSHDh, key_BSHkvDh, **_):  # noqa: ANN001, ANN201, N803, E501
        return super().rewrite(
            op, query_BSD, key_BSDkv, value_BSDkv, past_key, past_value, None, None, None, mask, query_BSHDh, key_BSHkvDh
        )


def rules() -> list[pattern.RewriteRuleSet]:
    return [pattern.RewriteRuleSet([NoRotaryGroupQueryAttention.rule()])]

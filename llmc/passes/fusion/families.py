"""Fusion families: the rewrite rules of each user-visible fusion.

A family is one user-visible fusion (``attention``, ``bias_gelu``...): an ordered list of
onnxscript rule sets (pattern / check / rewrite), the ops it produces, and the "anchor" ops whose
presence after fusion marks a candidate that did not fuse (what the "why not fused" report
lists). onnxscript's ``ort_fusions`` rules are the engine (they already understand dynamo
exports); llmc adds canonicalisation rules for the legacy exporter's variants and standard-op
rules for TensorRT. Which families a target uses, in which order, where each is off by default
(decided by measurement: ``make bench`` times every family on/off, benchmarks/RESULTS.md) and
from which opset is the target's declaration (:class:`llmc.spec.target.FamilyUse`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import onnx_ir as ir

from llmc.model.values import is_op

RuleSets = Callable[[], list]  # -> list[onnxscript.rewriter.pattern.RewriteRuleSet]


@dataclasses.dataclass(frozen=True)
class Step:
    """One rule set applied to a fixed point, optionally followed by shape inference."""

    rules: RuleSets
    shape_inference: bool = False
    explain: bool = True  # False: a clean-up step whose misses are not fusion candidates


@dataclasses.dataclass(frozen=True)
class FusionFamily:
    name: str
    description: str
    produces: tuple[str, ...]  # "domain::Op" of the fused ops
    steps: tuple[Step, ...]
    anchor: Callable[[ir.Node], bool]  # an op left behind when an instance did not fuse


def opset_problem(model: ir.Model, needed: int) -> str | None:
    """Why the model's opset rules out a family whose op exists from opset ``needed``, or None."""
    have = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    if have >= needed:
        return None
    return f"needs ONNX opset >= {needed} (the model imports {have}); re-export with opset_version={needed}"


def _feeds(node: ir.Node, *op_types: str) -> bool:
    """Whether the first input of ``node`` is produced by one of ``op_types``."""
    producer = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    return producer is not None and is_op(producer, *op_types)


def _layer_norm_anchor(node: ir.Node) -> bool:
    # ReduceMean(x) whose input also feeds a Sub: the mean-centering of a decomposed LayerNorm.
    if not is_op(node, "ReduceMean") or node.inputs[0] is None:
        return False
    return any(is_op(use.node, "Sub") for use in node.inputs[0].uses())


def _rms_anchor(node: ir.Node) -> bool:
    # ReduceMean(x*x) or ReduceMean(Pow(x, 2)) with no mean-centering: a decomposed RMSNorm.
    return is_op(node, "ReduceMean") and _feeds(node, "Pow", "Mul") and not _layer_norm_anchor(node)


def _skip_ln_anchor(node: ir.Node) -> bool:
    # A LayerNormalization whose input is a residual Add.
    return is_op(node, "LayerNormalization") and _feeds(node, "Add")


def _skip_rms_anchor(node: ir.Node) -> bool:
    return (
        node.domain == "com.microsoft"
        and node.op_type == "SimplifiedLayerNormalization"
        and _feeds(node, "Add")
    )


def _produced_by(value: ir.Value | None, *op_types: str) -> ir.Node | None:
    producer = value.producer() if value is not None else None
    return producer if producer is not None and is_op(producer, *op_types) else None


def _embed_anchor(node: ir.Node) -> bool:
    # A LayerNormalization of a sum (of sums) with an embedding Gather among its terms.
    if not is_op(node, "LayerNormalization"):
        return False
    total = _produced_by(node.inputs[0], "Add")
    if total is None:
        return False
    terms = list(total.inputs)
    for inner in [_produced_by(v, "Add") for v in total.inputs]:
        terms += list(inner.inputs) if inner is not None else []
    return any(_produced_by(v, "Gather") for v in terms)


def _packed_qkv_anchor(node: ir.Node) -> bool:
    # A self-attention MultiHeadAttention without KV cache (Attention's packed form has none).
    inputs = list(node.inputs) + [None] * 8
    return (
        node.domain == "com.microsoft"
        and node.op_type == "MultiHeadAttention"
        and inputs[6] is None
        and inputs[0] is not inputs[1]
    )


def _bias_gelu_anchor(node: ir.Node) -> bool:
    return (is_op(node, "Gelu") or (node.domain == "com.microsoft" and node.op_type == "Gelu")) and _feeds(
        node, "Add"
    )


# --- rule sets (imported lazily: onnxscript's rewriter is only needed when fusing) ---


def _canonical() -> list:
    from llmc.passes.fusion import canonical, grouped_qkv

    return [canonical.rules(), canonical.shape_rules(), grouped_qkv.rules()]


def _layer_norm() -> list:
    from onnxscript.rewriter.rules.fusion import _layer_norm

    return [_layer_norm.layer_normalization_ruleset]


def _embed_layer_norm() -> list:
    from llmc.passes.fusion import embed_layer_norm

    return embed_layer_norm.rules()


def _rms_standard() -> list:
    from onnxscript.rewriter.rules.fusion import _rms_normalization

    return [_rms_normalization.rms_normalization_ruleset]


def _gelu_ort() -> list:
    from llmc.passes.fusion import gelu

    return gelu.ort_rules()


def _gelu_trt() -> list:
    from llmc.passes.fusion import gelu

    return gelu.standard_rules()


def _bias_gelu() -> list:
    from onnxscript.rewriter.ort_fusions import bias_gelu

    return [bias_gelu.bias_gelu_rules]


def _rms_ort() -> list:
    from onnxscript.rewriter.ort_fusions import rms_normalization

    return [rms_normalization.rms_normalization_ruleset]


def _skip_layer_norm() -> list:
    from onnxscript.rewriter.ort_fusions import skip_normalization

    return [skip_normalization.skip_layer_normalization_ruleset]


def _skip_rms() -> list:
    from onnxscript.rewriter.ort_fusions import skip_normalization

    return [skip_normalization.skip_rms_normalization_ruleset]


def _rotary_ort() -> list:
    from onnxscript.rewriter.ort_fusions import cos_sin_cache, rotary_embedding

    from llmc.passes.fusion import rotary, rotary_interleaved, rotary_split, rotary_table

    return [
        rotary_embedding.rotary_embedding_rules,
        rotary.rules(),
        rotary_interleaved.rules(),
        rotary_split.rules(),
        rotary_table.rules(),
        cos_sin_cache.cos_sin_cache_rules,
        rotary_embedding.partial_embedding_rules,
    ]


def _sdpa() -> list:
    from onnxscript.rewriter.ort_fusions import sdpa

    return [sdpa.sdpa_rules]


def _gqa() -> list:
    from llmc.passes.fusion import gqa_multihead, gqa_nope, sinks, softcap
    from llmc.passes.fusion.gqa import gqa_rules

    return gqa_rules() + softcap.gqa_rules() + sinks.gqa_rules() + gqa_nope.rules() + gqa_multihead.rules()


def _softcap_sdpa() -> list:
    from llmc.passes.fusion import sinks, softcap

    return softcap.rules() + sinks.rules()


def _gqa_rotary() -> list:
    from llmc.passes.fusion.gqa_rotary import rules

    return [rules()]


def _gqa_packed() -> list:
    from llmc.passes.fusion.gqa_packed import rules

    return [rules()]


def _mha() -> list:
    from onnxscript.rewriter.ort_fusions import mha_scale

    from llmc.passes.fusion.attention import mha_rules

    return [*mha_rules(), mha_scale._mha_scale_rules]


def _finite_mask() -> list:
    from llmc.passes.fusion.attention import finite_mask_rules

    return finite_mask_rules()


def _mha_bias() -> list:
    from onnxscript.rewriter.ort_fusions import mha_bias

    return [mha_bias.mha_bias_rules]


def _packed_attention() -> list:
    from onnxscript.rewriter.ort_fusions import attention

    return [attention.attention_rules]


def _sdpa_via_mha() -> list:
    from onnxscript.rewriter.ort_fusions import sdpa_via_mha

    return [sdpa_via_mha._rules]


# In application order (targets list them in this order): normalizations first (attention
# patterns start after them), rotary before attention (MHA consumes RotaryEmbedding), attention
# before GELU (bias rules see plain MatMul+Add).
FAMILIES: tuple[FusionFamily, ...] = (
    FusionFamily(
        "canonical",
        "normalise exporter variants (scalar constants, shape arithmetic) so patterns match",
        (),
        (Step(_canonical),),
        lambda n: False,
    ),
    FusionFamily(
        "layer_norm",
        "ReduceMean/Sub/Pow/Sqrt/Div chains -> LayerNormalization (opset 17)",
        ("::LayerNormalization",),
        (Step(_layer_norm),),
        _layer_norm_anchor,
    ),
    FusionFamily(
        "embed_layer_norm",
        "word + position (+ segment) embedding gathers + LayerNormalization -> EmbedLayerNormalization",
        ("com.microsoft::EmbedLayerNormalization",),
        (Step(_embed_layer_norm),),
        _embed_anchor,
    ),
    FusionFamily(
        "rms_norm",
        "x * rsqrt(mean(x^2) + eps) * scale -> SimplifiedLayerNormalization",
        ("com.microsoft::SimplifiedLayerNormalization",),
        (Step(_rms_ort),),
        _rms_anchor,
    ),
    FusionFamily(
        "rms_norm_standard",
        "x * rsqrt(mean(x^2) + eps) * scale -> RMSNormalization-23 (standard op TensorRT parses)",
        ("::RMSNormalization",),
        (Step(_rms_standard),),
        _rms_anchor,
    ),
    FusionFamily(
        "gelu",
        "erf / tanh GELU formulas -> Gelu / FastGelu",
        ("com.microsoft::Gelu", "com.microsoft::FastGelu"),
        (Step(_gelu_ort),),
        lambda n: is_op(n, "Erf", "Tanh"),
    ),
    FusionFamily(
        "gelu_standard",
        "erf / tanh GELU formulas -> Gelu-20 (standard op TensorRT parses)",
        ("::Gelu",),
        (Step(_gelu_trt),),
        lambda n: is_op(n, "Erf", "Tanh"),
    ),
    FusionFamily(
        "skip_layer_norm",
        "Add + LayerNormalization -> SkipLayerNormalization",
        ("com.microsoft::SkipLayerNormalization",),
        (Step(_skip_layer_norm),),
        _skip_ln_anchor,
    ),
    FusionFamily(
        "skip_rms_norm",
        "Add + SimplifiedLayerNormalization -> SkipSimplifiedLayerNormalization",
        ("com.microsoft::SkipSimplifiedLayerNormalization",),
        (Step(_skip_rms),),
        _skip_rms_anchor,
    ),
    FusionFamily(
        "rotary",
        "rotate-half RoPE (with its cos/sin cache) -> RotaryEmbedding",
        ("com.microsoft::RotaryEmbedding",),
        (Step(_rotary_ort),),
        lambda n: False,  # RoPE leaves no single tell-tale op; unfused RoPE shows in attention
    ),
    FusionFamily(
        "gqa",
        "grouped-KV attention with RoPE and KV cache -> GroupQueryAttention (padding from attention_mask)",
        ("com.microsoft::GroupQueryAttention",),
        (Step(_softcap_sdpa, explain=False), Step(_sdpa, shape_inference=True), Step(_gqa),
         Step(_gqa_rotary, explain=False), Step(_gqa_packed, explain=False)),
        lambda n: False,  # what it leaves, attention fuses into MultiHeadAttention
    ),
    FusionFamily(
        "attention",
        "MatMul-Softmax-MatMul with head split/merge -> MultiHeadAttention (with past/present KV)",
        ("com.microsoft::MultiHeadAttention",),
        (
            Step(_sdpa, shape_inference=True),
            Step(_mha),
            Step(_mha_bias),
            Step(_sdpa_via_mha),
            Step(_finite_mask, explain=False),
        ),
        lambda n: is_op(n, "Softmax"),
    ),
    FusionFamily(
        "packed_qkv",
        "MultiHeadAttention fed by three projections of one input -> Attention (one packed QKV GEMM)",
        ("com.microsoft::Attention",),
        (Step(_packed_attention),),
        _packed_qkv_anchor,
    ),
    FusionFamily(
        "bias_gelu",
        "MatMul + Add(bias) + Gelu -> BiasGelu",
        ("com.microsoft::BiasGelu",),
        (Step(_bias_gelu),),
        _bias_gelu_anchor,
    ),
)


def get_family(name: str) -> FusionFamily:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise KeyError(name)

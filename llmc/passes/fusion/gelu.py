"""GELU fusions: the erf and tanh formulas, in the orders exporters write them.

onnxscript's GELU rules match one operand order and one grouping of the products. Exports differ:
GPT-2's ``gelu_new`` comes out of the dynamo exporter as ``Mul(Mul(x, 0.5), Add(Tanh(..), 1))``,
the legacy exporter writes ``Div(x, 1.4142)`` and constants first or last. These rules cover the
three groupings of the outer product with either operand order of every product, for both
formulas:

- erf:  0.5 * x * (1 + erf(x / sqrt(2)))                        -> Gelu
- tanh: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))  -> FastGelu / Gelu(approximate=tanh)

Targets: ``ort`` gets the contrib ops (Gelu, FastGelu: what ORT's BiasGelu/FastGelu fusions
build on); ``trt`` gets the standard Gelu-20, which needs the model's opset >= 20 (checked, with
the reason in the "why not fused" report). All rewrites compute the same formula.
"""

from __future__ import annotations

import math

from onnxscript.rewriter import pattern

STANDARD_GELU_OPSET = 20
_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _either(op_type: str, op, a, b):
    """``op_type(a, b)`` or ``op_type(b, a)``: the commutative op in either operand order."""
    make = getattr(op, op_type)
    return pattern.OrValue([make(a, b), make(b, a)])


def _erf_inner(op, x):
    # 1 + erf(x / sqrt(2)), with x * (1/sqrt(2)) as an alternative to the division.
    scaled = pattern.OrValue([op.Div(x, _SQRT_2), _either("Mul", op, x, 1.0 / _SQRT_2)])
    return _either("Add", op, op.Erf(scaled), 1.0)


def _tanh_inner(op, x):
    cube = pattern.OrValue([op.Pow(x, 3.0), _either("Mul", op, x, op.Mul(x, x))])
    poly = _either("Add", op, x, _either("Mul", op, cube, 0.044715))
    return _either("Add", op, op.Tanh(_either("Mul", op, poly, _SQRT_2_OVER_PI)), 1.0)


def _groupings(inner):
    """The three ways exporters group 0.5 * x * inner(x), each product in either order.

    The outermost product cannot be a choice (a pattern must end in a node), so each grouping
    comes as two patterns, one per order of the outer Mul.
    """

    def outer(left, right):
        def build(op, x):
            a, b = left(op, x), right(op, x)
            return op.Mul(a, b)

        return build

    half_x = lambda op, x: _either("Mul", op, x, 0.5)  # noqa: E731
    half_inner = lambda op, x: _either("Mul", op, inner(op, x), 0.5)  # noqa: E731
    x_inner = lambda op, x: _either("Mul", op, x, inner(op, x))  # noqa: E731
    ident = lambda op, x: x  # noqa: E731
    inner_only = inner
    half = lambda op, x: 0.5  # noqa: E731
    pairs = [(half_x, inner_only), (ident, half_inner), (x_inner, half)]
    return tuple(outer(a, b) for p, q in pairs for a, b in ((p, q), (q, p)))


def _opset_at_least(version: int):
    def check(context, x, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        opset = context.model.opset_imports.get("", 0)
        if opset < version:
            return result.fail(
                f"model opset {opset} < {version}: the standard Gelu needs opset "
                f"{version} (export with opset_version>={version})"
            )
        return result

    return check


def _rule_set(inner, replacement, name: str, check=None) -> pattern.RewriteRuleSet:
    rules = [
        pattern.RewriteRule(p, replacement, check, name=f"{name}{i}") for i, p in enumerate(_groupings(inner))
    ]
    return pattern.RewriteRuleSet(rules)


def ort_rules() -> list[pattern.RewriteRuleSet]:
    return [
        _rule_set(_erf_inner, lambda op, x, **_: op.Gelu(x, _domain="com.microsoft"), "ErfGelu"),
        _rule_set(_tanh_inner, lambda op, x, **_: op.FastGelu(x, _domain="com.microsoft"), "TanhGelu"),
    ]


def standard_rules() -> list[pattern.RewriteRuleSet]:
    check = _opset_at_least(STANDARD_GELU_OPSET)
    return [
        _rule_set(_erf_inner, lambda op, x, **_: op.Gelu(x, approximate="none"), "StandardErfGelu", check),
        _rule_set(_tanh_inner, lambda op, x, **_: op.Gelu(x, approximate="tanh"), "StandardTanhGelu", check),
    ]

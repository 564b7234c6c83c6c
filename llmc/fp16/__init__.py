"""FP16: float16 with float32 islands, in one package.

- ``options``: :class:`Fp16Options`; ``convert``: the pass and its island rules;
- ``emulate``: a faithful CPU emulation of float16 rounding; ``check``: the per-layer numeric
  check and fallback; ``stage``: all of it as one build stage; ``precision``: the precision's
  declaration (options, stage, judgement on the emulation, manifest section).
"""

__all__ = ["check", "convert", "emulate", "options", "precision", "stage"]

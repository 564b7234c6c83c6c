"""INT8: everything about it in one package.

- ``options``: :class:`QuantizeOptions` (calibration method, samples, budget, exclusions);
- ``calibration_data``: .npz feeds, stacked samples or text with a tokenizer;
- ``stats``: streaming per-tensor statistics and the range methods (max, percentile, entropy, mse);
- ``targets``, ``numerics``, ``padding_mask``, ``rewrite``: what to quantize and how, per target;
- ``quantize``: per-node choices by measured error and the accuracy budget's fallback loop;
- ``lint``: the target's Q/DQ rules; ``stage``: all of it as one build stage.
"""

__all__ = ["calibration_data", "lint", "numerics", "options", "padding_mask", "quantize", "rewrite", "stage",
           "stats", "targets"]

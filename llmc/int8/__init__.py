"""INT8 (``--precision int8``, calibrated): everything about it in one package.

- ``options``: :class:`QuantizeOptions` (calibration method, samples, budget, exclusions);
- ``calibration_data``: .npz feeds, stacked samples or text with a tokenizer;
- ``stats``: streaming per-tensor statistics and the range methods (max, percentile, entropy, mse);
- ``linear``, ``numerics``, ``padding_mask``, ``rewrite``: what to quantize and how, by the build
  target's Q/DQ rules (:class:`llmc.spec.target.QdqRules`);
- ``quantize``: per-node choices by measured error and the accuracy budget's fallback loop;
- ``lint``: the Q/DQ rules checked; ``stage``: all of it as one build stage;
- ``precision``: the precision's declaration (options, stage, judgement, manifest section).
"""

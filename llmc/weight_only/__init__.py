"""Weight-only quantization (``--precision int4``, ``--precision int8 --weight-only``): MatMul
weights as ``com.microsoft`` ``MatMulNBits`` blocks, the token embedding as
``GatherBlockQuantized``, gated on perplexity and top-1 agreement with the fp32 graph with a
node-by-node fallback (``stage``); ``precision`` declares the two precisions (options, stage,
judgement, manifest section)."""

"""INT4 weight-only quantization (``--precision int4``): MatMul weights as ``com.microsoft``
``MatMulNBits``, checked against the fp32 graph by top-1 agreement (``stage``)."""

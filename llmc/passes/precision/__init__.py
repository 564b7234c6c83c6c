"""Precision passes: float16 with float32 islands (``fp16``) and its CPU emulation (``emulate``)."""

"""Model compression before compilation (``llmc compress``): attention heads, FFN neurons and
layers removed physically by importance measured on the user's text, or 2:4 sparsity of the
layer projections; distillation against the original; export; ``--target-speedup`` searched by
the measured latency of built artifacts. BERT-style encoders and LLaMA-style decoders."""

from llmc.compression.compress import CompressOptions, compress

__all__ = ["CompressOptions", "compress"]

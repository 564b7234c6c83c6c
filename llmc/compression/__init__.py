"""Model compression before compilation: structured pruning of encoders (FFN neurons, layers)
with distillation against the original (``llmc compress``)."""

from llmc.compression.compress import CompressOptions, compress

__all__ = ["CompressOptions", "compress"]

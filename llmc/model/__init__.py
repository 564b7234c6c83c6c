"""The bottom layer: model I/O on onnx-ir, seeded feeds and input shapes, output comparison,
shared IR helpers, ONNX Runtime's symbolic shape inference, file hashing, process memory, the
decoder I/O contract (``decoder``), the model's tokenizer and generation config (``text``).

Everything in llmc may import it; it imports nothing of llmc but ``llmc.errors``. Import the
modules themselves (``from llmc.model import io``); this face stays light.
"""

__all__ = ["compare", "decoder", "feeds", "files", "io", "process", "summary", "symbolic_shapes", "text", "values"]

"""llmc: an ONNX model-optimization compiler for millisecond transformer inference.

    import llmc
    artifact = llmc.build("model.onnx", target="ort", output="out/")
    runner = llmc.load("out/")
    outputs = runner.run({"input_ids": ids, "attention_mask": mask})
"""

from llmc.compiler.artifact import Artifact, Runner, load
from llmc.compiler.build import build
from llmc.errors import LlmcError

__version__ = "0.1.0"

__all__ = ["Artifact", "LlmcError", "Runner", "__version__", "build", "load"]

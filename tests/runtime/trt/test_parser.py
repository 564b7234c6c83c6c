"""ONNX parser errors named by ONNX node."""

from __future__ import annotations

from llmc.targets.trt.parser import ParserErrorInfo, explain_parser_errors
from tests.runtime.trt.support import PLUGIN_NOT_FOUND


def test_explain_parser_errors_names_the_node():
    nodes = [("embed", "Gather"), ("/attn/SkipLayerNorm", "SkipLayerNormalization")]
    # TensorRT 10's wording for an op it has no importer (and no plugin) for, with only an index.
    error = ParserErrorInfo(
        PLUGIN_NOT_FOUND, node_index=1, code="INVALID_NODE", func="checkFallbackPluginImporter"
    )
    assert str(explain_parser_errors([error], "10.13.0.35", nodes)) == (
        "TensorRT 10.13.0.35 cannot import node '/attn/SkipLayerNorm' (SkipLayerNormalization): Plugin not "
        "found, are the plugin name, version, and namespace correct?; TensorRT 10.13.0.35 has no importer for "
        "SkipLayerNormalization; disable the fusion that produced it or use --target ort"
    )
    older = ParserErrorInfo("No importer registered for op: FastGelu. Attempting to import as plugin.", 0)
    assert "has no importer for FastGelu" in str(explain_parser_errors([older], "10.0", [("g", "FastGelu")]))
    # The parser's own node name wins; other codes point at the support matrix; extra errors counted.
    err = explain_parser_errors(
        [
            ParserErrorInfo(
                "Unsupported datatype\nmore detail", 0, "gather_0", "Gather", "UNSUPPORTED_NODE_DATATYPE"
            ),
            ParserErrorInfo("second", 1),
            ParserErrorInfo("third", 1),
        ],
        "11.0.0.1",
        nodes,
    )
    assert (
        "node 'gather_0' (Gather): Unsupported datatype; see the TensorRT ONNX operator support matrix"
        in str(err)
    )
    assert str(err).endswith("(+2 more parser errors)") and "\n" not in str(err)
    assert "cannot import the model: bad graph" in str(
        explain_parser_errors([ParserErrorInfo("bad graph")], "10", None)
    )
    assert "node #7" in str(explain_parser_errors([ParserErrorInfo("x", 7)], "10", nodes))
    assert "reported no error" in str(explain_parser_errors([], "10", None))

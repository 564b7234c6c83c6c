"""ONNX parsing into a TensorRT network, and parser errors named by ONNX node.

A failed parse becomes one :class:`LlmcError` line: the first error's node (name and op type),
TensorRT's reason without its C++ assertion wrapper, and the fix (disable the fusion that
produced an op TensorRT has no importer for, or see the operator support matrix).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError, first_line

SUPPORT_MATRIX_HINT = "see the TensorRT ONNX operator support matrix"
_ASSERTION = re.compile(r'^(?:Assertion failed:\s*)?[\w.\->()\[\]!]+\s*&&\s*"(.*)"\s*$')


@dataclasses.dataclass(frozen=True)
class ParserErrorInfo:
    """One ONNX parser error, detached from TensorRT (``node_index`` -1: no node).

    ``func`` is the parser function that failed (``checkFallbackPluginImporter`` when no
    importer and no plugin exist for the op).
    """

    desc: str
    node_index: int = -1
    node_name: str = ""
    op_type: str = ""
    code: str = ""
    func: str = ""

    @classmethod
    def from_trt(cls, error: Any) -> ParserErrorInfo:
        def call(method: str, default: Any) -> Any:
            fn = getattr(error, method, None)  # node_name/node_operator arrived in TensorRT 9.1
            try:
                return fn() if fn is not None else default
            except Exception:  # a binding without the field: fall back
                return default

        code = call("code", "")
        return cls(
            desc=str(call("desc", "")),
            node_index=int(call("node", -1)),
            node_name=str(call("node_name", "") or ""),
            op_type=str(call("node_operator", "") or ""),
            code=getattr(code, "name", str(code)).split(".")[-1],
            func=str(call("func", "") or ""),
        )

    @property
    def no_importer(self) -> bool:
        """Whether TensorRT has no importer (and no plugin) for the node's op at all."""
        text = self.desc.lower()
        return (
            "no importer registered" in text
            or "plugin not found" in text
            or "fallbackpluginimporter" in self.func.lower()
        )


def explain_parser_errors(
    errors: Sequence[ParserErrorInfo], version: str, nodes: Sequence[tuple[str, str]] | None = None
) -> LlmcError:
    """One line for a failed parse: the first error's node, TensorRT's reason, and the fix.

    ``nodes`` is the graph's ``[(name, op_type), ...]`` in order, used when the parser gives
    only a node index.
    """
    if not errors:
        return LlmcError(
            f"TensorRT {version} could not parse the ONNX model and reported no error; {SUPPORT_MATRIX_HINT}"
        )
    error = errors[0]
    name, op = error.node_name, error.op_type
    if nodes and 0 <= error.node_index < len(nodes):
        name = name or nodes[error.node_index][0]
        op = op or nodes[error.node_index][1]
    desc = _clean_desc(error.desc)
    if error.no_importer and op:
        hint = (
            f"TensorRT {version} has no importer for {op}; "
            "disable the fusion that produced it or use --target ort"
        )
    else:
        hint = SUPPORT_MATRIX_HINT
    if name or op:
        where = f"node '{name}' ({op})" if name and op else f"node '{name or op}'"
    elif error.node_index >= 0:
        where = f"node #{error.node_index}"
    else:
        where = "the model"
    more = (
        f" (+{len(errors) - 1} more parser error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    )
    return LlmcError(f"TensorRT {version} cannot import {where}: {desc}; {hint}{more}")


def parse_onnx(
    trt: Any,
    network: Any,
    onnx_path: Path,
    model_nodes: Sequence[tuple[str, str]] | None = None,
    logger: Any = None,
) -> Any:
    """Parse ``onnx_path`` into ``network``; returns the parser (keep it alive with the network).

    ``parse_from_file`` is used so external data files next to the model resolve.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise LlmcError(f"{onnx_path} does not exist; build the TensorRT-ready ONNX first")
    parser = trt.OnnxParser(network, logger if logger is not None else trt.Logger(trt.Logger.WARNING))
    if not parser.parse_from_file(str(onnx_path)):
        errors = [ParserErrorInfo.from_trt(parser.get_error(i)) for i in range(parser.num_errors)]
        raise explain_parser_errors(errors, str(trt.__version__), model_nodes)
    return parser


def _clean_desc(text: str) -> str:
    """The parser's description without its C++ assertion wrapper (``creator && "..."``)."""
    line = first_line(text)
    match = _ASSERTION.match(line)
    return match.group(1) if match else line

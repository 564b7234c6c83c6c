"""Loading and saving models on onnx-ir, with the checks users need before anything runs.

Loading never round-trips the weights through protobuf: the graph proto is parsed without its
external data and onnx-ir memory-maps the data files, so models over 2 GB load in seconds.
After loading, the graph is in topological order and every value has a unique, deterministic
name (onnx-ir's TopologicalSortPass and NameFixPass), so the same input always gives the same
output bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from google.protobuf.message import DecodeError

from llmc.errors import LlmcError, first_line
from llmc.model.files import MANIFEST_FILE, MODEL_FILE, sha256_file  # noqa: F401  (re-exported)

# A protobuf message cannot exceed 2 GiB; keep a margin for the graph itself.
PROTO_LIMIT_BYTES = 2**31 - 64 * 2**20
# Above this many weight bytes a session is created from a temporary file with external data:
# serializing to one protobuf costs two transient copies of the weights and is slower (BERT-base:
# 2.0 s and +1.0 GB RSS through bytes, 1.2 s and +0.3 GB through a file).
IN_MEMORY_LIMIT_BYTES = 32 * 2**20
EXTERNAL_DATA_SUFFIX = ".data"
# The temporary directories of ort_model_source: files in them are not named in errors.
SESSION_COPY_PREFIX = "llmc-session-"


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load ``path`` as an onnx-ir model, refusing files that are not a usable ONNX model."""
    path = Path(path)
    if not path.exists():
        raise LlmcError(f"{path}: no such file")
    if path.is_dir():
        raise LlmcError(f"{path}: is a directory; pass the .onnx file inside it")
    proto = _parse_proto(path)
    _check_external_data(proto, path)
    _check_single_producers(proto.graph, path)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # a proto that parses but is not a coherent model
        raise LlmcError(f"{path}: not a valid ONNX model ({first_line(exc)})") from None
    ir.external_data.set_base_dir(model.graph, str(path.parent.resolve()))
    _check_defined_values(model.graph, path)
    normalize(model, path)
    return model


def normalize(model: ir.Model, origin: str | os.PathLike | None = None) -> None:
    """Put the graph in topological order and give every value a unique, deterministic name.

    ``origin`` (the model's file, if any) is named in the error for a cyclic graph.
    """
    try:
        common_passes.TopologicalSortPass()(model)
    except Exception as exc:
        where = f"{origin}: " if origin is not None else ""
        cycle = find_cycle(model.graph)
        if not cycle:
            raise LlmcError(f"{where}the graph cannot be ordered ({first_line(exc)}); re-export the model") from None
        path = " -> ".join(f"'{n.name}' ({n.op_type})" for n in [*cycle, cycle[0]][:8])
        raise LlmcError(
            f"{where}the graph has a cycle through node {path} (each depends on its own output); "
            "re-export the model or fix those nodes' inputs"
        ) from None
    common_passes.NameFixPass()(model)


def find_cycle(graph: ir.Graph) -> list[ir.Node]:
    """The nodes of one cycle of ``graph``'s top level, in data-flow order, or [] if it has none."""
    nodes = list(graph)
    inside = set(nodes)
    preds = {n: {v.producer() for v in n.inputs if v is not None and v.producer() in inside} for n in nodes}
    # Drop every node with no remaining predecessor (Kahn): what is left has a cycle upstream.
    users: dict[ir.Node, list[ir.Node]] = {n: [] for n in nodes}
    for node, before in preds.items():
        for pred in before:
            users[pred].append(node)
    waiting = {n: len(before) for n, before in preds.items()}
    ready = [n for n, count in waiting.items() if count == 0]
    while ready:
        node = ready.pop()
        del waiting[node]
        for user in users[node]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    if not waiting:
        return []
    # Walk predecessors inside the remainder until a node repeats: that node is on a cycle.
    node, seen = next(iter(waiting)), []
    while node not in seen:
        seen.append(node)
        node = next(p for p in preds[node] if p in waiting)
    return list(reversed(seen[seen.index(node):]))


def save_model(
    model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None
) -> list[Path]:
    """Save ``model``; weights go to ``<name>.data`` when asked or when over the 2 GB limit.

    Returns the files written. The model in memory is not changed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = weights_nbytes(model) > PROTO_LIMIT_BYTES
    data_name = path.name + EXTERNAL_DATA_SUFFIX
    if external_data:
        # Tensors still mapped from the destination would be invalidated by the overwrite.
        ir.save(model, path, external_data=data_name, size_threshold_bytes=1024)
        data = path.parent / data_name
        if data.stat().st_size == 0:  # no tensor over the threshold: no data file to ship
            data.unlink()
            return [path]
        return [path, data]
    if _has_external_tensors(model):
        # Weights mapped from the source's data file: bring them into memory to inline them.
        ir.external_data.load_to_model(model)
    ir.save(model, path)
    return [path]


def weights_nbytes(model: ir.Model) -> int:
    """Bytes held by initializers (external or in-memory)."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value)


@contextlib.contextmanager
def ort_model_source(model: ir.Model) -> Iterator[bytes | str]:
    """Yield what ``onnxruntime.InferenceSession`` takes: bytes for small models, else a path.

    Models with external tensors or over ``IN_MEMORY_LIMIT_BYTES`` of weights are saved to a
    temporary directory (weights as external data): no copy of the weights in one protobuf.
    """
    if not _has_external_tensors(model) and weights_nbytes(model) < IN_MEMORY_LIMIT_BYTES:
        yield ir.serde.serialize_model(model).SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix=SESSION_COPY_PREFIX) as tmp:
        path = Path(tmp) / "model.onnx"
        ir.save(model, path, external_data="model.onnx.data", size_threshold_bytes=1024)
        yield str(path)


def is_session_copy(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary file of :func:`ort_model_source` (not the user's model)."""
    parent = Path(path).parent
    return parent.name.startswith(SESSION_COPY_PREFIX) and parent.parent == Path(tempfile.gettempdir())


def _has_external_tensors(model: ir.Model) -> bool:
    return any(
        isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values()
    )


def _parse_proto(path: Path) -> onnx.ModelProto:
    """Parse the graph proto only (weights stay on disk); map parse failures to one line."""
    if path.stat().st_size == 0:
        raise LlmcError(f"{path}: empty file, not an ONNX model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        kind = "truncated or corrupt ONNX file" if path.suffix == ".onnx" else "not an ONNX model"
        raise LlmcError(
            f"{path}: {kind} ({first_line(exc)}); re-export or re-download it"
        ) from None
    if not proto.HasField("graph") or proto.ir_version == 0:
        raise LlmcError(f"{path}: not an ONNX model (no graph or IR version in the file)")
    if not proto.graph.output:
        raise LlmcError(f"{path}: the graph has no outputs; it may be truncated")
    return proto


def _iter_tensor_protos(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_tensor_protos(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _iter_tensor_protos(g)


def _check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse external data outside the model's directory and report missing data files."""
    base = path.parent.resolve()
    for tensor in _iter_tensor_protos(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if not location or "\0" in location or location in (".", ".."):
            raise LlmcError(
                f"{path}: initializer '{tensor.name}' has an unusable external data location {location!r}; "
                "re-export the model"
            )
        target = (base / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(base):
            raise LlmcError(
                f"{path}: initializer '{tensor.name}' points its external data at '{location}', "
                f"outside the model's directory; refusing to read it (move the data beside the model)"
            )
        if not target.is_file():
            raise LlmcError(
                f"{path}: initializer '{tensor.name}' needs external data file '{location}', "
                "which is missing; copy it beside the model"
            )
        links = target.stat().st_nlink
        if links > 1:  # onnx-ir refuses to read these (a hard link could expose another file)
            raise LlmcError(
                f"{path}: external data file '{location}' has {links} hard links, which onnx-ir refuses to read; "
                f"replace it with a copy of its own (cp '{location}' x.tmp && mv x.tmp '{location}')"
            )
        end = _extent(info, tensor.name, path)
        if end > target.stat().st_size:
            raise LlmcError(
                f"{path}: external data file '{location}' is shorter than initializer "
                f"'{tensor.name}' needs ({end} bytes); the file is truncated"
            )


def _extent(info: dict[str, str], tensor: str, path: Path) -> int:
    """offset + length of an external tensor's bytes, from its (text) external_data fields."""
    try:
        offset, length = int(info.get("offset", 0) or 0), int(info.get("length", 0) or 0)
    except ValueError:
        raise LlmcError(
            f"{path}: initializer '{tensor}' has a non-numeric external data offset or length "
            f"({info.get('offset')!r}, {info.get('length')!r}); re-export the model"
        ) from None
    if offset < 0 or length < 0:
        raise LlmcError(f"{path}: initializer '{tensor}' has a negative external data offset or length; re-export the model")
    return offset + length


def model_from_proto(proto: onnx.ModelProto) -> ir.Model:
    """An in-memory ``ModelProto`` as an onnx-ir model, with the checks ``load_model`` runs.

    Its external data would be read relative to the working directory, which llmc never trusts:
    such a model must be built from its file (``onnx.load(path)`` reads the data into memory).
    """
    origin = Path("<in-memory model>")
    for tensor in _iter_tensor_protos(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise LlmcError(
                f"in-memory model: initializer '{tensor.name}' keeps its data in an external file; build the "
                ".onnx file instead, or load it with onnx.load(path) so the data is in memory"
            )
    _check_single_producers(proto.graph, origin)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # a proto that is not a coherent model
        raise LlmcError(f"in-memory model: not a valid ONNX model ({first_line(exc)})") from None
    _check_defined_values(model.graph, origin)
    normalize(model, origin)
    return model


def _check_single_producers(graph: onnx.GraphProto, path: Path) -> None:
    """Every tensor has one producer: a name written by two nodes (or by a node and a graph
    input or initializer) is one error naming it and both writers."""
    writers = {name: "the graph input" for name in (v.name for v in graph.input) if name}
    writers.update({t.name: "an initializer" for t in graph.initializer if t.name})
    for index, node in enumerate(graph.node):
        here = f"node '{node.name}' ({node.op_type})" if node.name else f"node #{index} ({node.op_type}, unnamed)"
        for name in node.output:
            if not name:
                continue
            if name in writers:
                by = f"twice by {here}" if writers[name] == here else f"by {writers[name]} and {here}"
                raise LlmcError(
                    f"{path}: tensor '{name}' is written {by}; every tensor must have one producer: "
                    "rename one of the outputs or re-export the model"
                )
            writers[name] = here
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                _check_single_producers(sub, path)


def _check_defined_values(graph: ir.Graph, path: Path) -> None:
    """Every node input must be produced by something: a truncated file often fails here."""
    defined = set(graph.inputs) | set(graph.initializers.values())
    for node in ir.traversal.RecursiveGraphIterator(graph):
        defined.update(node.outputs)
    for node in graph:
        for value in node.inputs:
            if value is None or value in defined or value.producer() is not None:
                continue
            if value.const_value is not None or value.graph is not None:
                continue
            raise LlmcError(
                f"{path}: node '{node.name}' ({node.op_type}) reads tensor '{value.name}' that no "
                "node, input or initializer defines; the file is truncated or malformed"
            )


def ir_sha256(model: ir.Model) -> str:
    """A content hash of an in-memory model: its text form plus every initializer's bytes."""
    digest = hashlib.sha256(ir.to_onnx_text(model, exclude_initializers=True).encode())
    for name, value in sorted(model.graph.initializers.items()):
        digest.update(name.encode())
        if value.const_value is not None:
            digest.update(value.const_value.tobytes())
    return digest.hexdigest()


def release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc only; elsewhere a no-op).

    A dropped ONNX Runtime session's buffers go back to glibc's arenas, which keep them: after a
    GPT-2 reference session, RSS stays ~380 MB higher until ``malloc_trim`` releases them. Builds
    create several sessions in a row, so this keeps their peak memory at what is live.
    """
    import ctypes
    import gc
    import sys

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass

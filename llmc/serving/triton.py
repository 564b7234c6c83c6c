"""``llmc triton``: an artifact as a Triton Inference Server model repository.

``REPO/NAME/config.pbtxt`` and ``REPO/NAME/1/model.onnx`` (with its external data) or
``model.plan`` (a TensorRT engine). The config is built as Triton's own ``ModelConfig`` protobuf
(``tritonclient``'s ``grpc/model_config_pb2``, the server's schema) from what the artifact is:
its inputs and outputs with their dtypes and dims (the first, dynamic, dimension is Triton's
batch), dynamic batching, CPU or GPU instance groups, ONNX Runtime's thread parameters, the
TensorRT execution accelerator for ``--device tensorrt`` artifacts, and for decoders sequence
batching whose implicit state carries the KV cache (``past_key_values.*`` in, ``present.*`` out);
a decoder's ``logits_to_keep`` is fixed at 0 in the repository's copy (:func:`keep_every_position`).
The model's directory is written into a fresh private directory beside its final place (never
a planted or predictable one), read back (the config through the schema, the model files against
the artifact's sha256) and renamed into place without replacing anything there. ``-o`` itself
must be a real directory or a path to create: a symlink, a file or an unwritable place is refused
in one line, as is an existing ``REPO/NAME`` (a link included), so nothing is written through a
link.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper

from llmc.errors import LlmcError
from llmc.model import decoder
from llmc.runtime.manifest import Manifest

# ONNX element types -> Triton's DataType names.
TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64", onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT16: "TYPE_INT16", onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.STRING: "TYPE_STRING",
}
TRT_PRECISION = {"fp16": "FP16", "int8": "INT8"}
INT32_MAX = 2**31 - 1  # Triton's max_batch_size and instance count are int32
MAX_WAIT_US = 60_000_000  # a minute: a longer batching delay is a mistake, not a setting
MAX_THREADS = 1024
MAX_NAME_BYTES = 200
_RENAME_NOREPLACE = 1  # linux/fs.h


@dataclasses.dataclass(frozen=True)
class TritonOptions:
    name: str | None = None
    max_batch_size: int = 8
    instances: int = 1
    threads: int | None = None  # ONNX Runtime intra-op threads per instance (None: the artifact's)
    batch_wait_us: int = 1000
    sequence_idle_us: int = 60_000_000

    def check(self) -> None:
        """Every numeric option in its range (one line naming the flag), the name one path component."""
        for flag, value, low, high, meaning in (
            ("--max-batch-size", self.max_batch_size, 0, INT32_MAX, " (0: no batching)"),
            ("--instances", self.instances, 1, INT32_MAX, ""),
            ("--threads", 0 if self.threads is None else self.threads, 0, MAX_THREADS, " (0: ONNX Runtime's default)"),
            ("--batch-wait-us", self.batch_wait_us, 0, MAX_WAIT_US, " microseconds"),
            ("sequence idle time", self.sequence_idle_us, 1, 2**63 - 1, " microseconds"),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise LlmcError(f"{flag} must be an integer from {low} to {high}{meaning}, not {value!r}")
        if self.name is not None:
            check_name(self.name, "--name")


def check_name(name: str, what: str) -> None:
    """A Triton model name: one printable path component, not starting with '.', short enough
    for any file system."""
    if (not name or "/" in name or "\\" in name or name.startswith(".") or not name.isprintable() or name != name.strip()
            or len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES):
        raise LlmcError(
            f"{what} {name!r} is not a model name (one printable path component of at most {MAX_NAME_BYTES} bytes, "
            "not starting with '.' or a space): pass --name NAME"
        )


def model_config_pb2() -> Any:
    """Triton's ``model_config_pb2`` from ``tritonclient`` (loaded by file: the package's
    ``grpc/__init__`` imports grpcio, which writing a config does not need)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise LlmcError("llmc triton writes Triton's own config schema: pip install tritonclient")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        raise LlmcError(f"{path} is missing: reinstall tritonclient")
    module_spec = importlib.util.spec_from_file_location("llmc_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]


def _triton_type(value: onnx.ValueInfoProto) -> str:
    elem = value.type.tensor_type.elem_type
    if elem not in TRITON_TYPES:
        raise LlmcError(f"'{value.name}' is {onnx.TensorProto.DataType.Name(elem)}: Triton has no such tensor type")
    return TRITON_TYPES[elem]


def _tensor(value: onnx.ValueInfoProto, batched: bool) -> dict[str, Any]:
    dims = _dims(value)
    if batched:
        if not dims or isinstance(dims[0], int):
            raise LlmcError(
                f"'{value.name}' has a fixed first dimension ({dims[0] if dims else 'a scalar'}), so Triton cannot "
                "batch it: build the model with a dynamic batch, or pass --max-batch-size 0"
            )
        dims = dims[1:]
    return {"name": value.name, "data_type": _triton_type(value), "dims": [d if isinstance(d, int) else -1 for d in dims]}


def build_config(model: onnx.ModelProto, manifest: Manifest, name: str, options: TritonOptions, plan: bool) -> Any:
    """Triton's ``ModelConfig`` for the artifact's model (``plan``: its TensorRT engine)."""
    pb = model_config_pb2()
    batched = options.max_batch_size > 0
    inputs = [v for v in model.graph.input if v.name not in {i.name for i in model.graph.initializer}]
    state_in = [v for v in inputs if decoder.is_past(v.name)]
    state_out = {v.name: v for v in model.graph.output if decoder.is_present(v.name)}
    config = pb.ModelConfig(name=name, max_batch_size=options.max_batch_size)
    config.platform = "tensorrt_plan" if plan else "onnxruntime_onnx"
    for value in inputs:
        if value not in state_in:
            config.input.add(**_tensor(value, batched))
    for value in model.graph.output:
        if value.name not in state_out:
            config.output.add(**_tensor(value, batched))
    device = manifest.session.options.get("device", "cpu")
    gpu = plan or device in ("cuda", "tensorrt")
    config.instance_group.add(count=options.instances, kind=pb.ModelInstanceGroup.KIND_GPU if gpu else pb.ModelInstanceGroup.KIND_CPU)
    if not plan:
        threads = options.threads
        if threads is None:
            threads = manifest.session.options.get("intra_op_num_threads", 0)
        if threads:
            config.parameters["intra_op_thread_count"].string_value = str(threads)
            config.parameters["inter_op_thread_count"].string_value = "1"
    if device == "tensorrt" and not plan:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = TRT_PRECISION.get(manifest.precision, "FP32")
    if state_in:
        _sequence_batching(config, state_in, state_out, options)
    elif batched:
        config.dynamic_batching.max_queue_delay_microseconds = options.batch_wait_us
    return config


def _sequence_batching(config: Any, state_in: list[onnx.ValueInfoProto], state_out: dict[str, Any], options: TritonOptions) -> None:
    """A decoder: Triton keeps each sequence's KV cache as implicit state between its requests
    (``past_key_values.N.*`` fed from the previous request's ``present.N.*``), empty at its start."""
    batching = config.sequence_batching
    batching.max_sequence_idle_microseconds = options.sequence_idle_us
    batching.direct.SetInParent()
    for value in state_in:
        present = decoder.present_for(value.name)
        output = state_out.get(present)
        if output is None:
            raise LlmcError(f"'{value.name}' has no '{present}' output to carry it: not an llmc decoder")
        tensor = _tensor(value, config.max_batch_size > 0)
        state = batching.state.add(input_name=value.name, output_name=output.name, data_type=tensor["data_type"])
        state.dims.extend(tensor["dims"])
        initial = state.initial_state.add(name="empty cache", data_type=tensor["data_type"], zero_data=True)
        initial.dims.extend([0 if d == -1 else d for d in tensor["dims"]])


def write_repository(artifact_path: str | Path, repo: str | Path, options: TritonOptions) -> Path:
    """Write ``repo/NAME`` for the artifact at ``artifact_path``; returns that directory."""
    options.check()
    repo = Path(repo)
    try:
        return _write(Path(artifact_path), repo, options)
    except OSError as exc:  # a path the file system refuses (too long, a loop, full, read-only...)
        where = f" ({exc.filename})" if exc.filename else ""
        raise LlmcError(
            f"-o {repo}: cannot write the model repository: {exc.strerror or exc}{where}; choose another path or --name"
        ) from None


def _write(artifact_path: Path, repo: Path, options: TritonOptions) -> Path:
    from google.protobuf import text_format

    from llmc.model.files import MODEL_FILE, PLAN_FILE
    from llmc.runtime.artifact import read_artifact

    check_repository(repo)
    artifact = read_artifact(artifact_path)  # the integrity contract first
    name = options.name or artifact.path.resolve().name
    if options.name is None:
        check_name(name, "the artifact's folder name")
    _refuse_existing(repo / name)
    plan = bool((artifact.manifest.engine or {}).get("built")) and (artifact.path / PLAN_FILE).is_file()
    model = onnx.load(str(artifact.path / MODEL_FILE), load_external_data=False)
    rewritten = None if plan else keep_every_position(model)
    config = build_config(model, artifact.manifest, name, options, plan)
    files = [PLAN_FILE] if plan else artifact.manifest.artifact.files
    sha256 = dict(artifact.manifest.artifact.sha256)
    _make_repository(repo)
    partial = Path(tempfile.mkdtemp(prefix=".llmc-", dir=repo))  # fresh, 0700: nothing planted in it
    try:
        (partial / "1").mkdir()
        for file in files:
            if file == MODEL_FILE and rewritten is not None:
                (partial / "1" / file).write_bytes(rewritten)
                sha256[file] = hashlib.sha256(rewritten).hexdigest()
            else:
                shutil.copyfile(artifact.path / file, partial / "1" / file)
        (partial / "config.pbtxt").write_text(text_format.MessageToString(config))
        _check(partial, config, files, sha256)
        os.chmod(partial, 0o777 & ~_umask())  # as a directory made by mkdir: readable by Triton's user
        _rename_noreplace(partial, repo / name)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return repo / name


def keep_every_position(model: onnx.ModelProto) -> bytes | None:
    """A decoder's ``logits_to_keep`` (llmc.passes.logits) made a constant 0 in ``model`` (its
    graph, weights left where they are): Triton batches the rows of different requests, which one
    scalar cannot serve, so the repository's model gives every position's logits, as its source
    did. The rewritten model file's bytes; None (``model`` untouched) without that input."""
    names = [value.name for value in model.graph.input]
    if decoder.LOGITS_TO_KEEP not in names:
        return None
    del model.graph.input[names.index(decoder.LOGITS_TO_KEEP)]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((), np.int64), decoder.LOGITS_TO_KEEP))
    return model.SerializeToString()


def check_repository(repo: Path) -> None:
    """``-o``: an existing real directory, or a path whose nearest existing ancestor is a
    writable directory; never a link (a dangling one included) or a file."""
    flag = f"-o {repo}"
    if repo.is_symlink():
        raise LlmcError(f"{flag} is a symlink; llmc never writes through links: give a real directory path")
    if repo.exists() and not repo.is_dir():
        raise LlmcError(f"{flag} is an existing file, not a directory; choose a directory path")
    ancestor = repo.absolute()
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise LlmcError(f"{flag}: {ancestor} is not a directory; choose another output path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise LlmcError(f"{flag}: cannot write into {ancestor} (permission denied); choose another output path")


def _refuse_existing(target: Path) -> None:
    if target.is_symlink():
        raise LlmcError(f"{target} is a symlink; llmc never writes through links: pick another --name or remove it")
    if target.exists():
        raise LlmcError(f"{target} exists; pick another --name or remove it")


def _make_repository(repo: Path) -> None:
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LlmcError(f"-o {repo}: cannot create it ({exc.strerror or exc}); choose another output path") from None
    check_repository(repo)  # still a real directory once made


def _rename_noreplace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` unless something is there (a directory planted meanwhile,
    empty or not, a link): then one line. ``renameat2(RENAME_NOREPLACE)`` on Linux; elsewhere a
    check just before the rename."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        if renameat2(-100, os.fsencode(source), -100, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            _refuse_existing(target)
        if code not in (errno.ENOSYS, errno.EINVAL, errno.EPERM):
            raise OSError(code, os.strerror(code), str(target))
    _refuse_existing(target)
    os.rename(source, target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check(directory: Path, config: Any, files: list[str], sha256: dict[str, str]) -> None:
    """The written config parses back to the same message; every model file is the artifact's."""
    from google.protobuf import text_format

    parsed = text_format.Parse((directory / "config.pbtxt").read_text(), model_config_pb2().ModelConfig())
    if parsed.SerializeToString(deterministic=True) != config.SerializeToString(deterministic=True):
        raise LlmcError(f"{directory / 'config.pbtxt'} does not read back as written; is the disk full?")
    for file in files:
        digest = hashlib.sha256((directory / "1" / file).read_bytes()).hexdigest()
        if file in sha256 and digest != sha256[file]:
            raise LlmcError(f"{directory / '1' / file} differs from the artifact's (sha256); is the disk full?")

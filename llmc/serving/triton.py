"""``llmc triton``: an artifact as a Triton Inference Server model repository.

``REPO/NAME/config.pbtxt`` and ``REPO/NAME/1/model.onnx`` (with its external data) or
``model.plan`` (a TensorRT engine). The config is built as Triton's own ``ModelConfig`` protobuf
(``tritonclient``'s ``grpc/model_config_pb2``, the server's schema) from what the artifact is:
its inputs and outputs with their dtypes and dims (the first, dynamic, dimension is Triton's
batch), dynamic batching, CPU or GPU instance groups, ONNX Runtime's thread parameters, the
TensorRT execution accelerator for ``--device tensorrt`` artifacts, and for decoders sequence
batching whose implicit state carries the KV cache (``past_key_values.*`` in, ``present.*`` out).
The repository is written beside its final place and renamed into it, then read back: the config
through the schema, the model files against the artifact's sha256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import onnx

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


@dataclasses.dataclass(frozen=True)
class TritonOptions:
    name: str | None = None
    max_batch_size: int = 8
    instances: int = 1
    threads: int | None = None  # ONNX Runtime intra-op threads per instance (None: the artifact's)
    batch_wait_us: int = 1000
    sequence_idle_us: int = 60_000_000

    def check(self) -> None:
        if self.max_batch_size < 0:
            raise LlmcError(f"--max-batch-size must be >= 0 (0: no batching), not {self.max_batch_size}")
        if self.instances < 1:
            raise LlmcError(f"--instances must be >= 1, not {self.instances}")
        if self.threads is not None and self.threads < 0:
            raise LlmcError(f"--threads must be >= 0, not {self.threads}")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise LlmcError(f"--name {self.name!r}: a model name is one path component, not starting with '.'")


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
    from google.protobuf import text_format

    from llmc.model.files import MODEL_FILE, PLAN_FILE
    from llmc.runtime.artifact import read_artifact

    options.check()
    artifact = read_artifact(artifact_path)  # the integrity contract first
    name = options.name or artifact.path.resolve().name
    target = Path(repo) / name
    if target.exists():
        raise LlmcError(f"{target} exists; pick another --name or remove it")
    plan = bool((artifact.manifest.engine or {}).get("built")) and (artifact.path / PLAN_FILE).is_file()
    model = onnx.load(str(artifact.path / MODEL_FILE), load_external_data=False)
    config = build_config(model, artifact.manifest, name, options, plan)
    files = [PLAN_FILE] if plan else artifact.manifest.artifact.files
    partial = Path(repo) / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "1").mkdir(parents=True)
    try:
        for file in files:
            shutil.copyfile(artifact.path / file, partial / "1" / file)
        (partial / "config.pbtxt").write_text(text_format.MessageToString(config))
        _check(partial, config, files, artifact.manifest.artifact.sha256)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


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

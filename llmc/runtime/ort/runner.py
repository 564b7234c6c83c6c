"""ONNX Runtime runner: feeds in, named numpy outputs back, with input checking.

On CPU a run is ``session.run``. On a GPU session (CUDA or TensorRT provider first in
``session.get_providers()``) it goes through ONNX Runtime's IOBinding instead: inputs are copied
to the device once at bind time, outputs are allocated on the device by the run and copied back
once at the end. ``session.run`` would do the same copies, but IOBinding also lets a caller keep
the outputs on the device (:meth:`OrtRunner.run_bound`, for timing the model without the
device-to-host copy) and pass inputs already on the device (:meth:`OrtRunner.to_device`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmc.errors import LlmcError
from llmc.model.decoder import every_position

# Providers whose tensors live in CUDA memory, i.e. IOBinding's device type "cuda".
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
DEVICE_TYPES = {"cpu": "cpu", "cuda": "cuda", "tensorrt": "cuda"}


def session_device(session: Any) -> tuple[str, int]:
    """(IOBinding device type, device id) of the provider ``session`` runs on first."""
    providers = list(session.get_providers())
    first = providers[0] if providers else "CPUExecutionProvider"
    if first not in GPU_PROVIDERS:
        return "cpu", 0
    options = session.get_provider_options().get(first, {})
    return "cuda", int(options.get("device_id", 0))


class OrtRunner:
    """Runs an ``InferenceSession``. ``run(feeds) -> {output name: array}``.

    ``device`` / ``device_id`` default to the session's first provider (cpu for a CPU session,
    so the CPU path stays ``session.run``). ``io_binding`` forces the IOBinding path on (or off);
    by default it is used on GPU devices only.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        session: Any,
        device: str | None = None,
        device_id: int | None = None,
        io_binding: bool | None = None,
    ) -> None:
        self.session = session
        self.inputs = {i.name: i for i in session.get_inputs()}
        # Initializers that are also graph inputs: defaults a caller may override.
        self.overridable = {i.name for i in session.get_overridable_initializers()}
        self.output_names = [o.name for o in session.get_outputs()]
        if device is not None and device not in DEVICE_TYPES:
            raise LlmcError(f"unknown runner device '{device}'; valid: {', '.join(DEVICE_TYPES)}")
        found, found_id = session_device(session)
        self.device = found if device is None else DEVICE_TYPES[device]
        self.device_id = found_id if device_id is None else device_id
        self.io_binding = self.device != "cpu" if io_binding is None else io_binding

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """One inference; outputs come back as numpy arrays on the host. ``logits_to_keep``
        (llmc.passes.logits) may be left out (0: every position, as the source model) and, at 0,
        given to a model without it (a build's feeds on its source, or the reverse)."""
        feeds = every_position(self.inputs, feeds)
        self.check_feeds(feeds)
        if not self.io_binding:
            outputs = self.session.run(self.output_names, feeds)
        elif self.overridable.intersection(feeds):
            # IOBinding binds graph inputs only, not initializer defaults: session.run can.
            outputs = self.session.run(self.output_names, _on_host(feeds))
        else:
            binding = self.bind_and_run(feeds, {})
            outputs = binding.copy_outputs_to_cpu()
        return dict(zip(self.output_names, outputs, strict=True))

    def run_bound(self, feeds: dict[str, Any], into: dict[str, Any] | None = None) -> dict[str, Any]:
        """One inference through IOBinding, outputs left on the runner's device as ``OrtValue``s.

        ``into`` binds outputs to existing ``OrtValue``s (name -> value), which may be bound as
        inputs too: a KV cache that ONNX Runtime's GroupQueryAttention updates in place.

        The run has finished when this returns (outputs are synchronized), so timing it measures
        the model and the input copies, not the output copy. ``value.numpy()`` brings one back.
        """
        self.check_feeds(feeds)
        overridden = sorted(self.overridable.intersection(feeds))
        if overridden:
            raise LlmcError(
                f"run_bound cannot override initializer default(s) {', '.join(overridden)} "
                "(ONNX Runtime's IOBinding binds graph inputs only); use run()"
            )
        return self.outputs_of(self.bind_and_run(feeds, into or {}))

    def outputs_of(self, binding: Any) -> dict[str, Any]:
        """A binding's outputs by name (``OrtValue``s on the runner's device)."""
        return dict(zip(self.output_names, binding.get_outputs(), strict=True))

    def run_again(self, binding: Any, feeds: dict[str, np.ndarray], fresh: tuple[str, ...] = ()) -> Any:
        """Run ``binding`` (from :meth:`bind_and_run`) again with ``feeds`` (numpy) bound anew and
        the outputs ``fresh`` allocated anew (their shapes may change); every other input and output
        stays bound as it was: a decode step re-binds three small inputs and the logits instead of
        every cache tensor twice."""
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.asarray(value, order="C"))
        for name in fresh:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding

    def to_device(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        """Copy numpy feeds to the runner's device once, as ``OrtValue``s that runs can reuse."""
        from onnxruntime import OrtValue

        values = {}
        for name, array in feeds.items():
            array = np.ascontiguousarray(array)
            # A copy the OrtValue owns: on CPU, ortvalue_from_numpy borrows the array's memory, and
            # a temporary contiguous copy would be freed under it (measured: garbage KV caches).
            value = OrtValue.ortvalue_from_shape_and_type(list(array.shape), array.dtype, self.device, self.device_id)
            value.update_inplace(array)
            values[name] = value
        return values

    def check_feeds(self, feeds: dict[str, Any]) -> None:
        missing = [name for name in self.inputs if name not in feeds]
        if missing:
            raise LlmcError(
                f"missing input(s) {', '.join(missing)}; the model takes {', '.join(self.inputs)}"
            )
        extra = [name for name in feeds if name not in self.inputs and name not in self.overridable]
        if extra:
            raise LlmcError(
                f"unknown input(s) {', '.join(extra)}; the model takes {', '.join(self.inputs)}"
            )

    def bind_and_run(self, feeds: dict[str, Any], into: dict[str, Any]) -> Any:
        """Bind ``feeds`` and every output on the device, run, and return the binding.

        A new binding per call: an IOBinding is not safe to share between threads, and creating
        one costs microseconds.
        """
        from onnxruntime import OrtValue

        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, OrtValue):  # e.g. from to_device(): no copy
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.asarray(value, order="C"))
        for name in self.output_names:  # in this order: get_outputs() follows the binding order
            if name in into:
                binding.bind_ortvalue_output(name, into[name])
            else:
                binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding


def _on_host(feeds: dict[str, Any]) -> dict[str, Any]:
    """``feeds`` with any ``OrtValue`` copied back to a numpy array (for ``session.run``)."""
    from onnxruntime import OrtValue

    return {name: v.numpy() if isinstance(v, OrtValue) else v for name, v in feeds.items()}


def run_model(model: Any, feeds: dict[str, np.ndarray], config: Any = None) -> dict[str, np.ndarray]:
    """Run an in-memory ``onnx_ir.Model`` once (default: the reference, ORT_DISABLE_ALL); ``feeds``
    may be its source model's (:meth:`OrtRunner.run`)."""
    from llmc.model.io import ort_model_source
    from llmc.runtime.ort.loader import REFERENCE_CONFIG, create_session

    with ort_model_source(model) as source:
        session = create_session(source, config or REFERENCE_CONFIG, model)
    return OrtRunner(session).run(feeds)

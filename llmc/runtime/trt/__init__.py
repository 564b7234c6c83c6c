"""TensorRT at run time: detection (:mod:`.detect`), the runner that owns the execution context
(:mod:`.runner`) and engine signing and its check before any plan is deserialized (:mod:`.trust`).

Importing this package never imports ``tensorrt`` or ``torch``; they load when an engine is
run, so artifacts without an engine and the tests work on machines without a GPU. Building an
engine is the ``trt`` target's finishing step (:mod:`llmc.targets.trt`).
"""

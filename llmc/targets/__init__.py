"""Build targets, one module each: :mod:`.ort` (ONNX Runtime) and :mod:`.trt` (TensorRT: the
declaration in :mod:`.trt.target`, the engine build that is its finishing step beside it).

A target is data (:class:`llmc.spec.target.Target`): its default pipeline, the fusion families
it uses and where each is off by default (measured: benchmarks/RESULTS.md), how int8 is written
for it, what it runs, and its finishing step. ``llmc.compiler.registry`` lists the targets.
"""

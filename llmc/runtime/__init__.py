"""The runtime: everything that runs a model, below the passes and the compiler.

- ``base``: the :class:`~llmc.runtime.base.Runner` protocol every backend's runner satisfies;
- ``ort``: ONNX Runtime sessions (the only place that creates them) and their runner;
- ``trt``: the TensorRT runner (the only place that creates execution contexts), signed plans;
- ``manifest``: the artifact's ``manifest.json``, typed (``Manifest``), its one writer and reader;
- ``artifact``: an artifact directory read and checked (``integrity``), ``load`` and ``Runner``;
- ``padding``: encoders' padding skipped at run time, and the build's measurement of it;
- ``timing``: the one interleaved timer; ``bench``: ``llmc bench`` on top of it.
"""

"""The ``trt`` target's engine build: settings and their builder config (:mod:`.config`),
optimization profiles (:mod:`.profiles`), ONNX parsing (:mod:`.parser`), the engine and timing
caches (:mod:`.cache`) and the build itself (:mod:`.loader`).

Importing this package never imports ``tensorrt``; it loads when an engine is built, so
``--no-engine`` builds and the tests work on machines without a GPU.
"""

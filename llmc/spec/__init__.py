"""What a build is made of, declared as data: options (:mod:`.options`), targets (:mod:`.target`)
and precisions (:mod:`.precision`).

Declarations only, no mechanics: a target (``llmc.targets``) or a precision (``llmc.int8``,
``llmc.weight_only``, ``llmc.fp16``) is an instance of these classes in its own module, and
``llmc.compiler.registry`` lists them, one line each. Light: importing this package imports
neither onnx nor ONNX Runtime, so ``llmc --help`` builds its options from it.
"""

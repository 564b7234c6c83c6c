"""The one compiled part of llmc: ONNX Runtime custom ops (llmc/kernels, see its module docstring).

Everything else is in pyproject.toml. The extension is optional: without a C++ compiler the
install goes on and builds use ONNX Runtime's own kernels (``llmc.kernels.unavailable`` says why).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "llmc.kernels._ops",
            sources=["llmc/kernels/int4_matmul.cpp"],
            language="c++",
            extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden", "-ffp-contract=off"],
            optional=True,
        )
    ]
)

"""Serving artifacts on existing engines: Triton model repositories (``llmc.serving.triton``)."""

from llmc.serving.triton import TritonOptions, build_config, write_repository

__all__ = ["TritonOptions", "build_config", "write_repository"]

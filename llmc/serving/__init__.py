"""Serving artifacts on existing engines: ``llmc serve`` on Ray Serve (``server``, ``protocol``,
``completions``, ``metrics``, ``run``, ``config``) and Triton model repositories (``triton``)."""

from llmc.serving.triton import TritonOptions, build_config, write_repository

__all__ = ["TritonOptions", "build_config", "write_repository"]

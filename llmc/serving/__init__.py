"""Serving artifacts: ``llmc serve``'s HTTP app (``app``: one route table; ``engine``: the loaded
artifact and its batchers; ``batcher``; ``encoders``: the encoder task routes; ``completions``:
OpenAI's completions; ``protocol`` and ``errors``: requests checked, refusals in each API's shape;
``metrics``), run in one process with uvicorn or on Ray Serve (``run``, ``server``, ``config``),
and Triton model repositories (``triton``)."""

from llmc.serving.triton import TritonOptions, build_config, write_repository

__all__ = ["TritonOptions", "build_config", "write_repository"]

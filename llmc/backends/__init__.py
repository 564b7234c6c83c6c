"""Backends: each is a loader (builds an executable session) plus a runner (runs it).

Every runner satisfies :class:`~llmc.backends.base.Runner`.
"""

from llmc.backends.base import Runner

__all__ = ["Runner"]

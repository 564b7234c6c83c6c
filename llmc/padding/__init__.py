"""Padding-aware execution for encoders: trailing padding is not computed (``trim``), and rows of
different lengths run in length buckets (``bucket``); what the build measured decides the
default (:mod:`llmc.padding.probe`)."""

from llmc.padding.execute import MODES, PaddedRunner, plan_buckets, real_lengths
from llmc.padding.layout import PaddingLayout, sequence_inputs
from llmc.padding.select import choose

__all__ = ["MODES", "PaddedRunner", "PaddingLayout", "choose", "plan_buckets", "real_lengths", "sequence_inputs"]

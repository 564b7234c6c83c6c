"""Padding-aware execution for encoders: trailing padding is not computed (``trim``), rows of
different lengths run in length buckets (``bucket``) or end to end in shared rows (``pack``,
:mod:`.pack`); what the build measured (:mod:`.probe`)
decides the default (:mod:`.select`). :mod:`.layout` finds the inputs and outputs that carry the
sequence, :mod:`.execute` runs them."""

"""The output directory of a build: see :mod:`llmc.model.output_dir`, where the generic parts live
(``llmc export`` writes its directory the same way). Re-exported here for the compiler."""

from __future__ import annotations

from llmc.model.output_dir import (
    ARTIFACT_LAYOUT,
    LOCK_SUFFIX,
    TEMP_INFIX,
    DirLayout,
    OutputWriter,
    check_output,
)

__all__ = ["ARTIFACT_LAYOUT", "LOCK_SUFFIX", "TEMP_INFIX", "DirLayout", "OutputWriter", "check_output"]

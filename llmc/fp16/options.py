"""What a float16 build keeps in float32 beyond the pass's own rules (light: no IR imports)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Fp16Options:
    """What the FP16 pass keeps in float32 beyond its rules."""

    io_fp16: bool = False  # float graph inputs/outputs in float16 (e.g. a decoder's KV cache)
    fp16_head: bool = False  # let the final logits head run in float16
    keep_fp32: tuple[str, ...] = ()  # node names or globs kept in float32
    # Node name -> reason, added by the numeric check (a layer moved back to float32).
    forced: tuple[tuple[str, str], ...] = ()

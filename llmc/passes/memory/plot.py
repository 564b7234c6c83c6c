"""``llmc inspect --memory --plot FILE.png``: live activation bytes over the schedule, and the arena.

Top: bytes live at each step in the graph's order and in the memory-aware order, with the arena
size and the lower bound marked and the largest tensors at the peak labelled. Bottom: the arena
plan itself, one rectangle per buffer (steps it lives x bytes it occupies). matplotlib is
imported here only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmc.model.decoder import is_cache_input
from llmc.passes.memory.planner import MemoryAnalysis

MIB = 2**20


def plot_memory(analysis: MemoryAnalysis, path: str | Path, title: str, index: int = 0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    s = analysis.sets[index]
    before = s.before.live_bytes() / MIB
    after = s.after.live_bytes() / MIB
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 8), sharex=True, height_ratios=(1, 1.3))
    steps = np.arange(len(after))
    scheduler = analysis.choice.scheduler if analysis.choice else "graph"
    top.step(steps, before, where="mid", color="0.55", lw=1.2, label=f"graph order (bound {before.max():.2f} MiB)")
    if analysis.order_changed:
        top.step(steps, after, where="mid", color="tab:blue", lw=1.4, label=f"{scheduler} order (bound {after.max():.2f} MiB)")
    top.axhline(s.plan.arena_bytes / MIB, color="tab:red", ls="--", lw=1, label=f"arena {s.plan.arena_bytes / MIB:.2f} MiB ({s.plan.method})")
    top.axhline(s.lower_bound_bytes / MIB, color="tab:green", ls=":", lw=1.5, label=f"lower bound {s.lower_bound_bytes / MIB:.2f} MiB")
    peak = s.after.peak_step()
    top.plot([peak], [after[peak]], "o", color="tab:red", ms=5)
    lines = [f"{t['tensor']} {'x'.join(map(str, t['shape']))}: {t['bytes'] / MIB:.2f} MiB" for t in s.top_at_peak()]
    top.annotate(
        "largest at the peak:\n" + "\n".join(lines),
        xy=(peak, after[peak]),
        xytext=(0.02 if peak > len(steps) / 2 else 0.55, 0.55),
        textcoords="axes fraction",
        fontsize=8,
        va="center",
        bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"},
        arrowprops={"arrowstyle": "->", "color": "0.4"},
    )
    top.set_ylabel("live activation MiB")
    top.set_ylim(0, max(before.max(), s.plan.arena_bytes / MIB) * 1.15 or 1)
    top.legend(loc="best", fontsize=8, framealpha=0.9)
    shapes = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in s.shapes.items() if not is_cache_input(k))
    top.set_title(f"{title}  ({shapes})", fontsize=10)

    plan = s.plan
    rects = [
        Rectangle((st - 0.5, off / MIB), en - st + 1, size / MIB)
        for st, en, off, size in zip(plan.start, plan.end, plan.offsets, plan.sizes, strict=True)
    ]
    colors = matplotlib.colormaps["tab20"](np.arange(len(rects)) % 20)
    bottom.add_collection(PatchCollection(rects, facecolor=colors, edgecolor="0.3", linewidth=0.3, alpha=0.85))
    labelled = {int(b) for b in s.after.live_at(peak)[:5]}
    for i, b in enumerate(plan.buffers):
        if int(b) in labelled:
            bottom.text(
                (plan.start[i] + plan.end[i]) / 2, (plan.offsets[i] + plan.sizes[i] / 2) / MIB,
                s.buffer_name(int(b)), fontsize=7, ha="center", va="center",
            )
    bottom.axhline(plan.arena_bytes / MIB, color="tab:red", ls="--", lw=1)
    bottom.set_xlim(-0.5, max(len(steps) - 0.5, 0.5))
    bottom.set_ylim(0, plan.arena_bytes / MIB * 1.05 or 1)
    bottom.set_ylabel("arena offset MiB")
    bottom.set_xlabel(f"schedule step ({scheduler} order)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

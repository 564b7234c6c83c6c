"""The decode roofline as text (``llmc bench --decode``, ``benchmarks.decode``) and as a plot
(``--plot FILE.png``: matplotlib, imported here only, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from llmc.generation.roofline import DecodeRoofline, OpTypeTime

MB = 1e6
OP_COLUMNS = ("op type", "nodes", "kernels/step", "ms/step", "% of step", "MB read", "GB/s", "floor ms", "% of floor")
BETWEEN = "(between kernels)"
PLOT_MIN_SHARE = 1.0  # % of the profiled step: smaller op types share one bar


def summary_lines(report: DecodeRoofline) -> list[str]:
    """The step's totals, one fact a line."""
    threads = f"{report.threads} thread{'s' if report.threads > 1 else ''}" if report.threads else "default threads"
    gathered = (
        f"; tables read by row (embedding, rotary caches) count only the rows read: {report.gathered_out / MB:.1f} MB "
        "left out"
        if report.gathered_out else ""
    )
    how = "measured (ReduceSum over 512 MiB, same threads)" if report.bandwidth_measured else "given"
    return [
        f"decode roofline of {report.model} ({report.device}, {threads}): batch 1, {report.context} cached tokens",
        f"ms/token: {report.ms_per_token:.3f} (median of {report.steps} steps; profiled steps "
        f"{report.profiled_ms:.3f} ms, mean of {report.profiled})",
        f"bytes read per token: {report.bytes_per_token / MB:.2f} MB (weights {report.weight_bytes / MB:.2f} MB "
        f"+ KV cache {report.kv_bytes / MB:.2f} MB{gathered})",
        f"bandwidth: {report.bandwidth_gbs:.2f} GB/s {how}; achieved {report.achieved_gbs:.2f} GB/s",
        f"floor: {report.floor_ms:.3f} ms/token; measured is {report.floor_pct:.0f}% of floor "
        f"(floor / measured)",
        f"nodes per step: {report.file_nodes} in the file, {report.session_nodes} after ONNX Runtime's rewrites, "
        f"{report.kernels_per_step:.0f} kernels run",
    ]


def op_rows(report: DecodeRoofline) -> list[list[str]]:
    """One row per op type (slowest first), then the time between kernels."""
    rows = [_op_row(op) for op in report.ops]
    between = report.between_kernels_ms
    share = 100 * between / report.profiled_ms if report.profiled_ms else 0.0
    rows.append([BETWEEN, "", "", f"{between:.3f}", f"{share:.1f}", "", "", "", ""])
    return rows


def _op_row(op: OpTypeTime) -> list[str]:
    has_bytes = op.bytes > 0
    return [
        op.op_type, str(op.nodes), f"{op.kernels:g}", f"{op.ms:.3f}", f"{op.share:.1f}",
        f"{op.bytes / MB:.2f}" if has_bytes else "-", f"{op.gbs:.2f}" if has_bytes and op.ms else "-",
        f"{op.floor_ms:.3f}" if has_bytes else "-", f"{op.floor_pct:.0f}%" if has_bytes and op.ms else "-",
    ]


def render_roofline(report: DecodeRoofline, markdown: bool = False) -> str:
    """The summary and the per-op-type table: aligned text, or Markdown (a bulleted summary
    and a pipe table)."""
    summary = summary_lines(report)
    rows = op_rows(report)
    if markdown:
        lines = [f"- {line}" for line in summary] + ["", table_markdown(list(OP_COLUMNS), rows)]
        return "\n".join(lines) + "\n"
    widths = [max(len(str(r[i])) for r in [list(OP_COLUMNS), *rows]) for i in range(len(OP_COLUMNS))]
    out = [*summary, ""]
    for row in [list(OP_COLUMNS), *rows]:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def table_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot_roofline(report: DecodeRoofline, path: str | Path, title: str | None = None) -> Path:
    """Bars of each op type's time per step against the time its bytes take at the measured
    bandwidth (its floor), and the whole step's against the step's floor; op types under 1% of the
    step (and of its floor) share one bar. PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [op for op in report.ops if op.share >= PLOT_MIN_SHARE or op.floor_ms >= PLOT_MIN_SHARE / 100 * report.profiled_ms]
    rest = [op for op in report.ops if op not in ops]
    labels = ["step (timed)", "step (profiled)", *(op.op_type for op in ops)]
    measured = [report.ms_per_token, report.profiled_ms, *(op.ms for op in ops)]
    floors = [report.floor_ms, report.floor_ms, *(op.floor_ms for op in ops)]
    if rest:
        labels.append(f"{len(rest)} other op types")
        measured.append(sum(op.ms for op in rest))
        floors.append(sum(op.floor_ms for op in rest))
    labels.append(BETWEEN)
    measured.append(report.between_kernels_ms)
    floors.append(0.0)
    fig, axis = plt.subplots(figsize=(10, 1.2 + 0.42 * len(labels)))
    ys = list(range(len(labels)))[::-1]
    axis.barh([y + 0.2 for y in ys], measured, height=0.4, color="tab:blue", label="measured (ops: profiled step)")
    axis.barh([y - 0.2 for y in ys], floors, height=0.4, color="tab:gray", label=f"bytes at {report.bandwidth_gbs:.1f} GB/s (floor)")
    for y, ms, floor in zip(ys, measured, floors, strict=True):
        note = f"{ms:.2f} ms" + (f"  ({100 * floor / ms:.0f}% of floor)" if floor >= 0.01 * ms > 0 else "")
        axis.text(ms, y + 0.2, " " + note, va="center", fontsize=8)
    axis.set_yticks(ys, labels)
    axis.set_xlabel("ms per decode step")
    axis.set_title(title or (
        f"{Path(report.model).name}: {report.ms_per_token:.2f} ms/token, {report.bytes_per_token / MB:.1f} MB/token, "
        f"{report.achieved_gbs:.1f} of {report.bandwidth_gbs:.1f} GB/s ({report.context} cached tokens)"
    ), fontsize=10)
    axis.legend(loc="lower right", fontsize=8)
    axis.margins(x=0.25)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

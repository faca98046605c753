"""Figures of a supervised stream, for MLflow and Prefect artifacts: matplotlib without a display (Agg)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: The lowest p-value drawn: a p-value of 0 is drawn there (the axis is logarithmic).
P_FLOOR = 1e-4


def stream_figure(rows: Sequence[Mapping[str, Any]], alpha: float) -> Figure:
    """The supervise report `rows` (`scanflow.supervision.batch_row` and its completions) along the stream.

    Top: the p-value per batch (log scale) against `alpha`; drifts in red, known shifts in orange, each decision
    written above its batch and a promotion marked with a star. Bottom: accuracy before and after the decision,
    where the stream's labels give it. Raises ValueError for no rows."""
    if not rows:
        raise ValueError("no batches to draw: the stream's report is empty")
    from matplotlib.figure import Figure

    steps = list(range(len(rows)))
    figure = Figure(figsize=(max(6.0, 0.6 * len(rows) + 3), 5.5), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    p_values = [max(float(row["p_value"]), P_FLOOR) for row in rows]
    top.plot(steps, p_values, color="0.3", marker="o", markersize=4, label="p-value")
    top.axhline(alpha, color="tab:red", linestyle="--", linewidth=1, label=f"alpha {alpha:g}")
    for kind, colour, label in (("yes", "tab:red", "drift"), ("known", "tab:orange", "known shift")):
        marked = [i for i, row in enumerate(rows) if row["drift"] == kind]
        if marked:
            top.scatter(marked, [p_values[i] for i in marked], color=colour, zorder=3, s=40, label=label)
    promoted = [i for i, row in enumerate(rows) if row["promoted"] == "yes"]
    if promoted:
        top.scatter(promoted, [p_values[i] for i in promoted], marker="*", s=160, color="tab:green", zorder=4, label="promoted")
    for i, row in enumerate(rows):
        if row["decision"] not in ("-", None):
            top.annotate(str(row["decision"]), (i, p_values[i]), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=7)
    top.set_yscale("log")
    top.set_ylim(P_FLOOR / 2, 2)
    top.set_ylabel("p-value (log)")
    top.set_title("Supervised stream: drift test per batch")
    top.legend(loc="best", fontsize=8)
    for key, style, label in (("accuracy_before", "-o", "accuracy before"), ("accuracy_after", "s", "accuracy after")):
        points = [(i, float(row[key])) for i, row in enumerate(rows) if row.get(key) is not None]
        if points:
            bottom.plot(*zip(*points), style, markersize=4, label=label)
    bottom.set_ylim(0, 1.02)
    bottom.set_ylabel("accuracy")
    bottom.set_xlabel("batch")
    bottom.set_xticks(steps, [str(row["batch"]) for row in rows], rotation=45, ha="right", fontsize=7)
    if bottom.get_lines():
        bottom.legend(loc="lower left", fontsize=8)
    return figure


def figure_bytes(figure: Figure, fmt: str = "png") -> bytes:
    """`figure` encoded as PNG (96 dpi) or SVG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=96)
    return buffer.getvalue()

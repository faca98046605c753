"""Figures of a supervised stream and of the study (`scanflow.study`), for MLflow, Prefect artifacts and docs/results:
matplotlib without a display (Agg)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

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


# ------------------------------------------------------------------------------------------------- the study
def _families(cells: Sequence[Any]) -> list[str]:
    return list(dict.fromkeys(cell.family for cell in cells))


def budget_figure(cells: Sequence[Any], budgets: Sequence[int]) -> Figure:
    """Accuracy on the corrupted holdout against the label budget, one panel per corruption family (means over its
    corruptions, severities and seeds): retrain with the person's labels and with random labels as lines over the
    budgets; nothing done, pseudo-labels, the filter and the ceiling as horizontal lines. `cells` are
    `scanflow.study.CellResult`s. Raises ValueError for no cells."""
    if not cells:
        raise ValueError("no study cells to draw")
    from matplotlib.figure import Figure

    families = _families(cells)
    figure = Figure(figsize=(3.2 * len(families) + 1, 3.6), layout="constrained")
    axes = figure.subplots(1, len(families), sharey=True, squeeze=False)[0]
    for axis, family in zip(axes, families):
        members = [c for c in cells if c.family == family]

        def mean(key: str) -> float:
            return 100 * sum(c.accuracy[key][0] for c in members) / len(members)

        axis.plot(budgets, [mean(f"person-{b}") for b in budgets], "-o", color="tab:blue", label="person's labels")
        axis.plot(budgets, [mean(f"random-{b}") for b in budgets], "--s", color="tab:gray", label="random labels")
        for key, colour, label in (("pseudo", "tab:purple", "pseudo-labels"), ("filter", "tab:green", "filter"),
                                   ("ceiling", "black", "all labelled"), ("none", "tab:red", "nothing done")):
            axis.axhline(mean(key), color=colour, linestyle=":" if key != "ceiling" else "-", linewidth=1.2, label=label)
        axis.set_xscale("log")
        axis.set_xticks(list(budgets), [str(b) for b in budgets])
        axis.set_xticks([], minor=True)  # a log axis labels its minor ticks otherwise (3x10^1 ...)
        axis.set_title(f"{family} ({len({c.corruption for c in members})} corruption(s))", fontsize=9)
        axis.set_xlabel("labels given")
    axes[0].set_ylabel("accuracy on corrupted holdout (%)")
    axes[-1].legend(loc="lower right", fontsize=7)
    figure.suptitle("Accuracy against the label budget", fontsize=10)
    return figure


def detection_heatmap(cells: Sequence[Any], detectors: Sequence[str]) -> Figure:
    """Share of corrupted batches flagged per corruption (rows) and severity (columns), one panel per detector
    (means over seeds). Raises ValueError for no cells."""
    if not cells:
        raise ValueError("no study cells to draw")
    from matplotlib.figure import Figure

    corruptions = list(dict.fromkeys(c.corruption for c in cells))
    severities = sorted({c.severity for c in cells})
    figure = Figure(figsize=(2.4 + 1.1 * max(len(severities), 2) * len(detectors), 1.6 + 0.35 * len(corruptions)), layout="constrained")
    axes = figure.subplots(1, len(detectors), sharey=True, squeeze=False)[0]
    image = None
    for axis, detector in zip(axes, detectors):
        grid = np.full((len(corruptions), len(severities)), np.nan)
        for i, corruption in enumerate(corruptions):
            for j, severity in enumerate(severities):
                rates = [c.detection_rate[detector] for c in cells if c.corruption == corruption and c.severity == severity]
                grid[i, j] = np.mean(rates) if rates else np.nan
        image = axis.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color="white" if value < 0.6 else "black")
        axis.set_title(detector, fontsize=9)
        axis.set_xticks(range(len(severities)), [str(s) for s in severities])
        axis.set_xlabel("severity")
        axis.set_yticks(range(len(corruptions)), corruptions, fontsize=7)
    figure.colorbar(image, ax=list(axes), label="share flagged", shrink=0.9)
    figure.suptitle("Corrupted batches flagged", fontsize=10)
    return figure


def remedy_figure(cells: Sequence[Any], budget: int) -> Figure:
    """Accuracy points recovered on the corrupted holdout (over nothing done) per corruption: retrain with the
    person's `budget` labels against the filter, with the ceiling's gain as a marker (means over severities and
    seeds). Raises ValueError for no cells."""
    if not cells:
        raise ValueError("no study cells to draw")
    from matplotlib.figure import Figure

    corruptions = list(dict.fromkeys(c.corruption for c in cells))

    def gain(corruption: str, key: str) -> float:
        members = [c for c in cells if c.corruption == corruption]
        return 100 * sum(c.accuracy[key][0] - c.accuracy["none"][0] for c in members) / len(members)

    positions = np.arange(len(corruptions))
    figure = Figure(figsize=(max(5.0, 0.7 * len(corruptions) + 2), 3.8), layout="constrained")
    axis = figure.subplots()
    axis.bar(positions - 0.2, [gain(c, f"person-{budget}") for c in corruptions], 0.4, color="tab:blue", label=f"retrain, {budget} labels")
    axis.bar(positions + 0.2, [gain(c, "filter") for c in corruptions], 0.4, color="tab:green", label="filter")
    axis.scatter(positions, [gain(c, "ceiling") for c in corruptions], marker="_", s=300, color="black", zorder=3, label="all labelled")
    axis.axhline(0, color="0.5", linewidth=0.8)
    axis.set_xticks(positions, corruptions, rotation=30, ha="right", fontsize=8)
    axis.set_ylabel("accuracy points recovered")
    axis.set_title("Where each remedy wins", fontsize=10)
    axis.legend(fontsize=8)
    return figure


def study_stream_rows(cells: Sequence[Any]) -> list[dict[str, Any]]:
    """The cells' batches in study order as `stream_figure` rows: p-value, drift, the champion's accuracy on the
    batch, decision (on the batch it was taken on) and promotion. Batch names: corruption-severity/o (clean) or /c."""
    rows = []
    for cell in cells:
        for verdict in cell.verdicts:
            decided = cell.decision.batch_id == verdict.batch_id
            rows.append({"batch": f"{cell.corruption[:8]}-{cell.severity}/{'c' if verdict.corrupted else 'o'}",
                         "p_value": verdict.p_value, "drift": "yes" if verdict.is_drift else "no",
                         "accuracy_before": None if np.isnan(verdict.accuracy) else verdict.accuracy,
                         "decision": cell.decision.action if decided else "-",
                         "promoted": "yes" if decided and cell.decision.promoted else "no"})
    return rows

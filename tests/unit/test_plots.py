"""The stream's figure on fixed rows: what it draws, and the files it encodes to."""

from __future__ import annotations

import pytest

from scanflow.plots import P_FLOOR, figure_bytes, stream_figure


def _row(i: int, p: float, drift: str, decision: str = "-", promoted: str = "-", before: float | None = 0.9,
         after: float | None = None) -> dict:
    return {"batch": f"batch-{i:03d}", "p_value": p, "drift": drift, "decision": decision, "promoted": promoted,
            "accuracy_before": before, "accuracy_after": after}


ROWS = [_row(0, 0.41, "no"), _row(1, 0.001, "yes", "filter", "yes", 0.5, 0.8), _row(2, 0.0, "known", "as batch-001 (filter)"),
        _row(3, 0.3, "no", before=None)]


def test_the_stream_figure_draws_the_test_the_decisions_and_the_accuracy():
    figure = stream_figure(ROWS, alpha=0.05)
    top, bottom = figure.axes
    assert [text.get_text() for text in top.get_legend().get_texts()] == ["p-value", "alpha 0.05", "drift", "known shift", "promoted"]
    p_line, alpha_line = top.get_lines()
    assert list(p_line.get_ydata()) == [0.41, 0.001, P_FLOOR, 0.3] and list(alpha_line.get_ydata()) == [0.05, 0.05]
    assert [[tuple(point) for point in c.get_offsets()] for c in top.collections] == [[(1, 0.001)], [(2, P_FLOOR)], [(1, 0.001)]]
    assert [text.get_text() for text in top.texts] == ["filter", "as batch-001 (filter)"]
    assert top.get_yscale() == "log"
    assert [text.get_text() for text in bottom.get_legend().get_texts()] == ["accuracy before", "accuracy after"]
    before, after = bottom.get_lines()
    assert list(before.get_xdata()) == [0, 1, 2] and list(after.get_xdata()) == [1] and list(after.get_ydata()) == [0.8]
    assert [label.get_text() for label in bottom.get_xticklabels()] == [row["batch"] for row in ROWS]


def test_a_clean_stream_has_no_drift_marks_and_no_empty_legend_entries():
    figure = stream_figure([_row(0, 0.5, "no", before=None), _row(1, 0.2, "no", before=None)], alpha=0.01)
    top, bottom = figure.axes
    assert [text.get_text() for text in top.get_legend().get_texts()] == ["p-value", "alpha 0.01"]
    assert len(top.collections) == len(top.texts) == len(bottom.get_lines()) == 0 and bottom.get_legend() is None


def test_the_figure_encodes_to_png_and_svg():
    figure = stream_figure(ROWS, alpha=0.05)
    png, svg = figure_bytes(figure, "png"), figure_bytes(figure, "svg")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert b"<svg" in svg[:1000] and len(svg) > 10_000


def test_an_empty_report_is_refused_by_name():
    with pytest.raises(ValueError, match="no batches to draw: the stream's report is empty"):
        stream_figure([], alpha=0.05)

"""What the supervise loop shows and reports, as plain functions over the flows' JSON results: the evidence above
the decision form, one report row per batch, the summary table. The Prefect side lives in flows/supervise.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scanflow.stream import StreamBatch


def form_description(detection: Mapping[str, Any]) -> str:
    """Markdown shown above the decision form (from the detect flow's result): the verdict, the recommendation, the
    grid of critical samples and a table of them."""
    rows = "\n".join(
        f"| {row['position']} | {row['batch_index']} | {row['score']:.2f} | {row['predicted']} |" for row in detection["critical_rows"]
    )
    return (
        f"## Drift in batch {detection['batch_id']} (model v{detection['model_version']})\n\n"
        f"Statistic {detection['statistic']:.2f} vs threshold {detection['threshold']:.2f}, p = {detection['p_value']:.4f}; "
        f"{detection['n_critical']} of {detection['n']} samples look critical. Recommended: **{detection['recommended_action']}**.\n\n"
        f"![critical samples](data:image/png;base64,{detection['grid_png_b64']})\n\n"
        "| position | batch row | score | model's guess |\n|---|---|---|---|\n" + rows + "\n\n"
        "Correct the labels the model got wrong (they are pre-filled with its guesses), choose an action, submit."
    )


def batch_row(batch: StreamBatch, prediction: Mapping[str, Any], detection: Mapping[str, Any]) -> dict[str, Any]:
    """The report row of one batch after predict and detect (accuracy from the labels kept beside the stream)."""
    return {
        "batch": batch.batch_id, "corrupted": batch.corruption or "no", "model": f"v{prediction['model_version']}",
        "drift": "yes" if detection["is_drift"] else "no", "p_value": round(detection["p_value"], 4),
        "decision": "-", "decided_by": "-", "labels_used": 0,
        "accuracy_before": round(batch.accuracy(prediction["labels"]), 4), "accuracy_after": None, "promoted": "-",
    }


def with_decision(row: Mapping[str, Any], batch: StreamBatch, improvement: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """`row` completed with the improve flow's summary and the predictions of the champion after it."""
    return {
        **row, "decision": improvement["action"], "decided_by": improvement["decided_by"],
        "promoted": "yes" if improvement["promoted"] else "no",
        "labels_used": (improvement.get("outcome") or {}).get("n_labels_used", 0),
        "accuracy_after": round(batch.accuracy(after["labels"]), 4),
    }


def summary_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    header = "| batch | corrupted | model | drift | p | decision | by | labels | accuracy before | after | promoted |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    body = "\n".join(
        f"| {r['batch']} | {r['corrupted']} | {r['model']} | {r['drift']} | {r['p_value']} | {r['decision']} | {r['decided_by']} | "
        f"{r['labels_used']} | {r['accuracy_before']:.3f} | {'-' if r['accuracy_after'] is None else format(r['accuracy_after'], '.3f')} | {r['promoted']} |"
        for r in rows
    )
    return "# Supervised stream\n\n" + header + body

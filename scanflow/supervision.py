"""What the supervise loop shows and reports, as plain functions over the flows' JSON results: the evidence above
the decision form, one report row per batch, the summary table. The Prefect side lives in flows/supervise.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from scanflow.detect import DEFAULT_LABEL_BUDGET
from scanflow.drift.base import DEFAULT_ALPHA
from scanflow.errors import ScanflowError
from scanflow.improve.promotion import DEFAULT_PROMOTION_MARGIN
from scanflow.stream import StreamBatch

TIMEOUT_ACTIONS = ("filter", "ignore")


class InvalidPolicyError(ScanflowError, ValueError):
    """A supervision policy value outside its range."""


@dataclass(frozen=True)
class SupervisionSettings:
    """How the supervise loop treats drift: what counts as drift, how much a person is asked, how long the loop
    waits, and what earns a promotion. The `SupervisionPolicy` Prefect block stores one of these by name.

    `alpha`: false-alarm rate of the batch test on clean batches (a fraction). `budget`: critical samples shown
    (and labelled) per drifted batch. `pause_timeout_s`: seconds a decision form waits. `action_on_timeout`: what
    runs when nobody answers (filter or ignore; retraining needs a person's labels). `promotion_margin`: clean
    accuracy (a fraction) a challenger may lose and still be promoted. `ask_known_shifts`: ask again about a drift
    that is a shift a person already decided about for the champion (off by default: one drift, one question).
    """

    alpha: float = DEFAULT_ALPHA
    budget: int = DEFAULT_LABEL_BUDGET
    pause_timeout_s: int = 3600
    action_on_timeout: str = "ignore"
    promotion_margin: float = DEFAULT_PROMOTION_MARGIN
    ask_known_shifts: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.alpha < 1:
            problems.append(f"alpha must be a false-alarm rate in (0, 1), got {self.alpha}")
        if self.budget < 1:
            problems.append(f"budget must be at least 1 sample, got {self.budget}")
        if self.pause_timeout_s < 1:
            problems.append(f"pause_timeout_s must be at least 1 second, got {self.pause_timeout_s}")
        if self.action_on_timeout not in TIMEOUT_ACTIONS:
            problems.append(f"action_on_timeout must be one of {', '.join(TIMEOUT_ACTIONS)} (retraining needs a person's labels), got {self.action_on_timeout!r}")
        if not 0 <= self.promotion_margin < 1:
            problems.append(f"promotion_margin must be a fraction in [0, 1), got {self.promotion_margin}")
        if problems:
            raise InvalidPolicyError("invalid supervision policy: " + "; ".join(problems))

    def overridden(self, **values: Any) -> "SupervisionSettings":
        """These settings with every value that is not None replaced (a run's explicit parameters win over its
        policy); unknown names are an error, not ignored."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidPolicyError(f"unknown supervision settings {unknown}; known: {sorted(known)}")
        return replace(self, **{k: v for k, v in values.items() if v is not None})


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
        f"Evidently's report on this batch is being attached to MLflow run `{detection['mlflow_run_id']}` while this "
        "form waits (Artifacts > evidently_report.html in the MLflow UI).\n\n"
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


def with_known_shift(row: Mapping[str, Any], known_shift: Mapping[str, Any]) -> dict[str, Any]:
    """`row` of a drifted batch recognised as a shift already decided about (no question asked)."""
    return {**row, "drift": "known", "decision": f"as {known_shift['batch_id']} ({known_shift['decision']})", "decided_by": "known shift"}


def summary_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    header = "| batch | corrupted | model | drift | p | decision | by | labels | accuracy before | after | promoted |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    body = "\n".join(
        f"| {r['batch']} | {r['corrupted']} | {r['model']} | {r['drift']} | {r['p_value']} | {r['decision']} | {r['decided_by']} | "
        f"{r['labels_used']} | {r['accuracy_before']:.3f} | {'-' if r['accuracy_after'] is None else format(r['accuracy_after'], '.3f')} | {r['promoted']} |"
        for r in rows
    )
    return "# Supervised stream\n\n" + header + body

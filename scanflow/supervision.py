"""What the supervise loop shows and reports, as plain functions over the flows' JSON results: the evidence above
the decision form, one report row per batch, the summary table. The Prefect side lives in flows/supervise.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import base64
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from scanflow.detect import DEFAULT_LABEL_BUDGET, DetectionReport, KnownShiftMatch
from scanflow.drift.base import DEFAULT_ALPHA
from scanflow.errors import ScanflowError
from scanflow.human import ACTIONS, InvalidDecisionError
from scanflow.improve.base import ImprovementReport
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
    `retrain_steps`, `denoiser_steps`: optimisation steps of a decision's retraining rounds or of its filter's
    denoiser (None: the improvers' defaults, `scanflow.config.RETRAIN_STEPS` and `DENOISER_STEPS`).
    """

    alpha: float = DEFAULT_ALPHA
    budget: int = DEFAULT_LABEL_BUDGET
    pause_timeout_s: int = 3600
    action_on_timeout: str = "ignore"
    promotion_margin: float = DEFAULT_PROMOTION_MARGIN
    ask_known_shifts: bool = False
    retrain_steps: int | None = None
    denoiser_steps: int | None = None

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
        for name in ("retrain_steps", "denoiser_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                problems.append(f"{name} must be a whole number of optimisation steps, at least 1 (or unset for the default), got {value!r}")
        if problems:
            raise InvalidPolicyError("invalid supervision policy: " + "; ".join(problems))

    def improve_steps(self, action: str) -> int | None:
        """The optimisation steps the improve flow gets for a decision's `action` (None: the improver's default)."""
        return {"retrain": self.retrain_steps, "filter": self.denoiser_steps}.get(action)

    def overridden(self, **values: Any) -> "SupervisionSettings":
        """These settings with every value that is not None replaced (a run's explicit parameters win over its
        policy); unknown names are an error, not ignored."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidPolicyError(f"unknown supervision settings {unknown}; known: {sorted(known)}")
        return replace(self, **{k: v for k, v in values.items() if v is not None})


class DecisionRequest(BaseModel):
    """What a person is asked about one drifted batch: the verdict, the recommendation and the critical samples in
    the order shown (batch row, score, the model's guess, a PNG thumbnail each). The decision form, `scanflow
    pending` and `scanflow answer` all show it; it travels as the ask-human flow run's parameter."""

    model_config = ConfigDict(frozen=True)

    batch_id: str
    model_version: str
    statistic: float
    threshold: float
    p_value: float
    n_critical: int
    n: int
    recommended: str
    classes: tuple[str, ...]
    shown: tuple[int, ...]
    scores: tuple[float, ...]
    guesses: tuple[int, ...]
    thumbnails_b64: tuple[str, ...]
    grid_png_b64: str = ""
    mlflow_run_id: str = ""
    #: The decisions the champion can carry out, and why not the others ("" when all can).
    actions: tuple[str, ...] = ACTIONS
    actions_note: str = ""

    @classmethod
    def from_detection(cls, detection: DetectionReport) -> "DecisionRequest":
        """The request for a drifted batch, from the detect step's report."""
        return cls(
            batch_id=detection.batch_id, model_version=detection.model_version, statistic=detection.statistic,
            threshold=detection.threshold, p_value=detection.p_value, n_critical=detection.n_critical, n=detection.n,
            recommended=detection.recommended_action, classes=detection.classes, shown=detection.selected_indices,
            scores=tuple(row.score for row in detection.critical_rows), guesses=detection.guesses,
            thumbnails_b64=detection.thumbnails_b64, grid_png_b64=detection.grid_png_b64,
            mlflow_run_id=detection.mlflow_run_id, actions=detection.actions, actions_note=detection.actions_note,
        )

    def check_offered(self, action: str) -> None:
        """Raise InvalidDecisionError naming why when the champion cannot carry out `action`."""
        if action not in self.actions:
            raise InvalidDecisionError(f"model v{self.model_version} cannot {action}: {self.actions_note}; choose "
                                       f"{' or '.join(self.actions)}")

    def offered_or_ignore(self, action: str) -> str:
        """`action` when the champion can carry it out, else "ignore" (always offered): what a timeout runs."""
        return action if action in self.actions else "ignore"

    def heading_markdown(self) -> str:
        """The verdict and the recommendation, shown first in the form."""
        return (
            f"### Drift in batch {self.batch_id} (model v{self.model_version})\n\n"
            f"Drift statistic **{self.statistic:.2f}** against the threshold {self.threshold:.2f} (p = {self.p_value:.4f}); "
            f"{self.n_critical} of {self.n} images look critical. Recommended: **{self.recommended}** "
            f"({ACTION_HELP[self.recommended]}).\n\n"
            + (f"Offered: {', '.join(self.actions)}, because {self.actions_note}.\n\n" if self.actions != ACTIONS else "")
            + ("Below, each critical sample sits above its label. Its choice starts at the model's guess, which is not a "
               "label until you pick a class name; \"not sure\" skips a sample. Retrain needs labels, filter does not "
               "(labels you give judge it too). Then press Submit at the bottom.")
        )

    def sample_markdown(self, position: int) -> str:
        """One critical sample as the form shows it: the image, its number, batch row, score and the model's guess."""
        return (
            f"![sample #{position + 1}](data:image/png;base64,{self.thumbnails_b64[position]})\n\n"
            f"**#{position + 1}** · batch row {self.shown[position]} · score {self.scores[position]:.2f} · "
            f"model's guess: {self.classes[self.guesses[position]]}"
        )

    def table(self) -> str:
        """The critical samples as a plain-text table for a terminal."""
        lines = ["  #   row  score  model's guess"]
        lines += [
            f"{k + 1:>3} {row:>5} {score:>6.2f}  {self.classes[guess]}"
            for k, (row, score, guess) in enumerate(zip(self.shown, self.scores, self.guesses))
        ]
        return "\n".join(lines)

    def summary_line(self) -> str:
        return (f"batch {self.batch_id} (model v{self.model_version}): statistic {self.statistic:.2f} vs threshold "
                f"{self.threshold:.2f}, p = {self.p_value:.4f}; {len(self.shown)} samples to label; recommended: {self.recommended}")

    def save_grid(self, path: str | Path) -> Path:
        """The grid of critical samples (numbered in the order shown) as a PNG file at `path`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.grid_png_b64))
        return path


ACTION_HELP = {
    "retrain": "fine-tune the model on your labels",
    "filter": "clean the inputs with a denoiser; needs no labels",
    "ignore": "accept this drift; change nothing",
}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def batch_row(batch: StreamBatch, prediction: Mapping[str, Any], detection: DetectionReport) -> dict[str, Any]:
    """The report row of one batch after predict and detect (accuracy from the labels kept beside the stream)."""
    return {
        "batch": batch.batch_id, "corrupted": batch.corruption or "no", "model": f"v{prediction['model_version']}",
        "drift": "yes" if detection.is_drift else "no", "p_value": round(detection.p_value, 4),
        "decision": "-", "decided_by": "-", "labels_used": 0,
        "accuracy_before": _rounded(batch.accuracy(prediction["labels"])), "accuracy_after": None, "promoted": "-",
    }


def with_decision(row: Mapping[str, Any], batch: StreamBatch, improvement: ImprovementReport, after: Mapping[str, Any]) -> dict[str, Any]:
    """`row` completed with the improve step's report and the predictions of the champion after it."""
    return {
        **row, "decision": improvement.action, "decided_by": improvement.decided_by,
        "promoted": "yes" if improvement.promoted else ("needs labels" if improvement.verdict_outcome == "not enough labels" else "no"),
        "labels_used": improvement.n_labels_used,
        "accuracy_after": _rounded(batch.accuracy(after["labels"])),
    }


def with_known_shift(row: Mapping[str, Any], known_shift: KnownShiftMatch) -> dict[str, Any]:
    """`row` of a drifted batch recognised as a shift already decided about (no question asked)."""
    return {**row, "drift": "known", "decision": f"as {known_shift.batch_id} ({known_shift.decision})", "decided_by": "known shift"}


def stream_metrics(row: Mapping[str, Any], detection: DetectionReport | None = None) -> dict[str, float]:
    """One report row as MLflow metrics of the supervise run, logged with step = the batch's index so that MLflow
    charts the stream: `p_value`, `drift` (1 for a new or a known drift, else 0), `labels_used`, `promoted` (1 or
    0), `accuracy_before`/`accuracy_after` (fractions, where the stream's labels give them), and, for a batch
    detected in this run, the detector's `statistic` and `threshold`."""
    metrics = {"p_value": float(row["p_value"]), "drift": float(row["drift"] in ("yes", "known")),
               "labels_used": float(row["labels_used"]), "promoted": float(row["promoted"] == "yes")}
    metrics.update({key: float(row[key]) for key in ("accuracy_before", "accuracy_after") if row.get(key) is not None})
    if detection is not None:
        metrics.update(statistic=float(detection.statistic), threshold=float(detection.threshold))
    return metrics


def summary_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    header = "| batch | corrupted | model | drift | p | decision | by | labels | accuracy before | after | promoted |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    body = "\n".join(
        f"| {r['batch']} | {r['corrupted']} | {r['model']} | {r['drift']} | {r['p_value']} | {r['decision']} | {r['decided_by']} | "
        f"{r['labels_used']} | {'-' if r['accuracy_before'] is None else format(r['accuracy_before'], '.3f')} | {'-' if r['accuracy_after'] is None else format(r['accuracy_after'], '.3f')} | {r['promoted']} |"
        for r in rows
    )
    return "# Supervised stream\n\n" + header + body

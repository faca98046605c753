"""The detect verb: score one production batch with the champion's detector and prepare what a person sees.

Everything here is plain Python so the flow (flows/detect.py) stays a list of named phases.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from scanflow.drift.base import Detector, DriftResult
from scanflow.drift.known import ShiftMatch
from scanflow.human import ACTIONS, policy_action
from scanflow.drift.selection import Selection, select_critical, select_typical
from scanflow.gallery import image_grid

DEFAULT_LABEL_BUDGET = 20
DRIFT_EVENT = "scanflow.drift.detected"


@dataclass(frozen=True)
class Detection:
    """One batch's verdict, the samples chosen for a person, the model's guesses for them, and the batch's shift
    signature (per-image detector signals, compared with known shifts)."""

    batch_id: str
    model_version: str
    result: DriftResult
    selection: Selection
    predicted_labels: np.ndarray = field(repr=False)
    classes: tuple[str, ...]
    signature: np.ndarray = field(repr=False)

    def class_name(self, label: int) -> str:
        """The name of a predicted label; "unknown" when the detector watches no classifier (label -1)."""
        return self.classes[label] if 0 <= label < len(self.classes) else "unknown"

    def critical_rows(self) -> list[dict[str, Any]]:
        """One row per selected sample, in the order shown: position, batch index, score, model's guess."""
        scores = self.result.sample_scores
        return [
            {
                "position": position,
                "batch_index": index,
                "score": round(float(scores[index]), 3),
                "above_threshold": bool(scores[index] > self.result.sample_threshold),
                "predicted": self.class_name(int(self.predicted_labels[index])),
            }
            for position, index in enumerate(self.selection.indices)
        ]

    def summary(self) -> dict[str, Any]:
        """JSON-able verdict for logs, events and `--json` (per-sample scores left out)."""
        result = self.result.to_dict()
        result.pop("sample_scores")
        return {
            "batch_id": self.batch_id,
            "model_version": self.model_version,
            **result,
            "n_critical": len(self.result.critical_indices),
            "selected_indices": list(self.selection.indices),
            "recommendation": recommendation(self.result),
        }


class CriticalRow(BaseModel):
    """One sample chosen for a person, in the order shown: its position, batch row, sample score (higher = stranger),
    whether the score is above the detector's sample threshold, and the model's guess (a class name)."""

    model_config = ConfigDict(frozen=True)

    position: int
    batch_index: int
    score: float
    above_threshold: bool
    predicted: str


class KnownShiftMatch(BaseModel):
    """The shift a person already decided about that a drifted batch cannot be told apart from: its batch, the
    decision, the champion version it applies to, the improve run that holds it, and the energy test's p-value."""

    model_config = ConfigDict(frozen=True)

    batch_id: str
    decision: str
    model_version: str
    mlflow_run_id: str
    p_value: float


class DetectionReport(BaseModel):
    """What the detect step returns: the verdict on one batch (as `DriftResult`, without per-sample scores), the
    samples chosen for a person with the model's guesses and thumbnails (PNG, base64; empty on a clean batch), the
    decision recommended among those the champion can carry out (`actions`, and why not the others in
    `actions_note`), the known shift it matches (None: a new drift, or no drift), and the MLflow run that logs it.
    It is what a deployment's result holds (Prefect's JSON serializer round-trips it) and what `--json` prints."""

    model_config = ConfigDict(frozen=True)

    batch_id: str
    model_version: str
    detector: str
    is_drift: bool
    statistic: float
    p_value: float
    threshold: float
    alpha: float
    n: int
    sample_threshold: float
    critical_indices: tuple[int, ...]
    n_critical: int
    details: dict[str, Any]
    selected_indices: tuple[int, ...]
    recommendation: str
    mlflow_run_id: str
    critical_rows: tuple[CriticalRow, ...]
    guesses: tuple[int, ...]
    classes: tuple[str, ...]
    recommended_action: str
    actions: tuple[str, ...] = ACTIONS
    actions_note: str = ""
    known_shift: KnownShiftMatch | None = None
    grid_png_b64: str = ""
    thumbnails_b64: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, detection: "Detection", mlflow_run_id: str, *, actions: tuple[str, ...] = ACTIONS, actions_note: str = "",
        known: ShiftMatch | None = None, grid_png: bytes = b"", thumbnails: list[bytes] | None = None,
    ) -> "DetectionReport":
        """The report of `detection`, logged as `mlflow_run_id`; `actions`: what the champion can carry out."""
        return cls(
            **detection.summary(), mlflow_run_id=mlflow_run_id,
            critical_rows=tuple(CriticalRow(**row) for row in detection.critical_rows()),
            guesses=tuple(int(detection.predicted_labels[i]) for i in detection.selection.indices),
            classes=detection.classes, recommended_action=policy_action(detection.result, actions), actions=tuple(actions),
            actions_note=actions_note, known_shift=KnownShiftMatch(**known.to_dict()) if known is not None else None,
            grid_png_b64=base64.b64encode(grid_png).decode("ascii"),
            thumbnails_b64=tuple(base64.b64encode(png).decode("ascii") for png in thumbnails or ()),
        )

    def brief(self) -> dict[str, Any]:
        """The report without images (grid and thumbnails), JSON-able: what `scanflow detect --json` prints."""
        return self.model_dump(mode="json", exclude={"grid_png_b64", "thumbnails_b64"})


def recommendation(result: DriftResult) -> str:
    """A short, honest next step for a person reading the verdict."""
    if not result.is_drift:
        return "no drift at this batch size: nothing to do"
    share = len(result.critical_indices) / max(result.n, 1)
    if share >= 0.5:
        return "most of the batch looks corrupted: label the critical samples, then retrain or add a filter"
    return "part of the batch looks different: label the critical samples to decide whether it matters"


def detect_batch(
    detector: Detector, images: torch.Tensor, batch_id: str, model_version: str,
    budget: int = DEFAULT_LABEL_BUDGET, classes: tuple[str, ...] | None = None,
) -> Detection:
    """Test one batch, pick at most `budget` samples for a person to label: typical of the drifted part of the batch
    in the classifier's own feature space (`select_typical` over `shifted_candidates`: their labels teach a retrained
    model the most), strangest first. A detector without a `classifier` shows the strangest critical samples, and
    the model's guesses are then unknown (-1)."""
    if detector.classifier is None:
        result, features = detector.assess(images)
        selection = select_critical(result.sample_scores, result.critical_indices, budget)
        predicted = np.full(len(images), -1, dtype=np.int64)
        names = classes or ()
        return Detection(batch_id, model_version, result, selection, predicted, names, detector.signature_of(features))
    embeddings, probabilities = (tensor.numpy() for tensor in detector.classifier.embed_and_predict_proba(images))
    result, features = detector.assess(images, probabilities=probabilities)
    predicted = probabilities.argmax(axis=1)
    selection = select_typical(
        result.sample_scores, result.critical_indices, budget, embeddings, clean_median=detector.clean_score_quantile(0.5)
    )
    names = classes or tuple(str(k) for k in range(probabilities.shape[1]))
    return Detection(batch_id, model_version, result, selection, predicted, names, detector.signature_of(features))


def critical_samples_png(images: torch.Tensor, detection: Detection, per_row: int = 10, scale: int = 3) -> bytes:
    """A PNG grid of the selected samples in the order shown, labelled with position and the model's guess."""
    indices = list(detection.selection.indices)
    if not indices:
        indices = list(np.argsort(-detection.result.sample_scores)[: min(per_row, len(images))])
    rows = [indices[i : i + per_row] for i in range(0, len(indices), per_row)]
    cells = [[images[i] for i in row] for row in rows]
    labels = [f"#{r * per_row}-{r * per_row + len(row) - 1}" for r, row in enumerate(rows)]
    picture = image_grid(cells, row_labels=labels, scale=scale)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


#: Height (px) a critical sample is shown at to a person, at least: 28x28 images are enlarged 4 times, 8x8 ones 12.
THUMBNAIL_MIN_PX = 96


def sample_thumbnails(images: torch.Tensor, detection: Detection, min_px: int = THUMBNAIL_MIN_PX) -> list[bytes]:
    """One PNG per selected sample, in the order shown, enlarged (nearest neighbour) by the smallest whole factor
    that makes it at least `min_px` tall, so a person can judge it."""
    scale = max(1, -(-min_px // images.shape[-2]))
    thumbnails = []
    for index in detection.selection.indices:
        buffer = io.BytesIO()
        image_grid([[images[index]]], scale=scale).save(buffer, format="PNG")
        thumbnails.append(buffer.getvalue())
    return thumbnails


def summary_markdown(detection: Detection) -> str:
    """The drift summary a person reads first: verdict, statistic against threshold, recommendation."""
    result = detection.result
    verdict = "**DRIFT**" if result.is_drift else "no drift"
    return "\n".join(
        [
            f"# Batch `{detection.batch_id}`: {verdict}",
            "",
            "| what | value |",
            "|---|---|",
            f"| detector | {result.detector} (model version {detection.model_version}) |",
            f"| statistic | {result.statistic:.3f} (threshold {result.threshold:.3f} at alpha {result.alpha}) |",
            f"| p-value | {result.p_value:.4f} |",
            f"| critical samples | {len(result.critical_indices)} of {result.n} above the sample threshold {result.sample_threshold:.2f} |",
            f"| selected for labelling | {len(detection.selection.indices)} |",
            "",
            f"**Recommendation:** {recommendation(result)}",
        ]
    )


def save_evidently_report(detector: Detector, images: torch.Tensor, path: str | Path) -> Path:
    """Evidently's HTML drift report of the batch against the reference (seconds: keep it off the hot path)."""
    from scanflow.drift.evidently import save_drift_report

    return save_drift_report(detector.report_features(images), detector.reference_report_features(), path)

"""The detect verb: score one production batch with the champion's detector and prepare what a person sees.

Everything here is plain Python so the flow (flows/detect.py) stays a list of named phases.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scanflow.drift.base import Detector, DriftResult
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

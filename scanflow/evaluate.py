"""Accuracy of a classifier on a labelled set, overall and per class."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scanflow.data import LabeledImages
from scanflow.models import Classifier


@dataclass(frozen=True)
class Evaluation:
    """Accuracy (fraction correct, 0..1) on `n` images of one split, and per class in label order."""

    dataset: str
    split: str
    n: int
    accuracy: float
    per_class_accuracy: tuple[float, ...]

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_accuracy": self.accuracy}


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of `predictions` equal to `labels` (both int64 [N]); a rejected prediction (-1) counts as wrong."""
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape")
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined: pass at least one labelled image")
    return float((predictions == labels).float().mean())


def evaluate_classifier(model: Classifier, data: LabeledImages) -> Evaluation:
    """Predict every image of `data` and compare with its labels."""
    predictions = model.predict(data.images)
    per_class = []
    for label in range(data.info.n_classes):
        mask = data.labels == label
        per_class.append(float((predictions[mask] == label).float().mean()) if mask.any() else float("nan"))
    return Evaluation(
        dataset=data.info.name,
        split=data.split,
        n=len(data),
        accuracy=accuracy(predictions, data.labels),
        per_class_accuracy=tuple(per_class),
    )

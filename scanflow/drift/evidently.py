"""Drift detection with Evidently's model-based embedding drift, calibrated by Scanflow.

The batch statistic is the ROC AUC of a domain classifier that tells a batch's rows from a sample of clean
reference rows, where a row is an image's autoencoder latent vector concatenated with the classifier's softmax.
It is computed by Evidently's `ModelDriftMethod`, called directly: inside a `Report`, `EmbeddingsDrift` always
fits a t-SNE for its plot, far too slow for the `calibration_windows` calls per batch size that the base class
makes. Evidently's own threshold (AUC > 0.55) is not used: the base class calibrates the AUC's null
distribution per batch size, and `drifted` booleans from Evidently are ignored.

Per-image scores are the Mahalanobis distance of the latent vector to the clean latent distribution, with a
Ledoit-Wolf shrunk covariance so that small reference sets still give a well-conditioned inverse.

`save_drift_report` writes Evidently's HTML `DataDriftPreset` report for a human, off the hot path.

This is the only Scanflow module that imports `evidently`; it is pinned to `EVIDENTLY_VERSION` because the API
changed a lot in 0.7 and the fallback rules below follow that version's source.
"""

from __future__ import annotations

import importlib.metadata
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.covariance import LedoitWolf
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import roc_auc_score

from scanflow.drift.base import DEFAULT_ALPHA, DEFAULT_SAMPLE_FPR, Detector, Features
from scanflow.models import Autoencoder, Classifier

EVIDENTLY_VERSION = "0.7.23"


def check_evidently_version(installed: str) -> None:
    """Refuse any Evidently but the pinned one: its drift API and internals changed between minor releases."""
    if installed != EVIDENTLY_VERSION:
        raise ImportError(
            f"scanflow.drift.evidently needs evidently=={EVIDENTLY_VERSION}, found {installed}; "
            f"install the pinned version (pip install 'evidently=={EVIDENTLY_VERSION}')"
        )


check_evidently_version(importlib.metadata.version("evidently"))

from evidently import DataDefinition, Dataset, Report  # noqa: E402  (only after the version check)
from evidently.core.report import Snapshot  # noqa: E402
from evidently.metrics.embeddings import ModelDriftMethod  # noqa: E402
from evidently.presets import DataDriftPreset  # noqa: E402

DEFAULT_MAX_REFERENCE = 1000
DEFAULT_CALIBRATION_WINDOWS = 200
DEFAULT_REPORT_LATENT_COLUMNS = 4

_MODEL_DRIFT = ModelDriftMethod(threshold=0.55, bootstrap=False, quantile_probability=0.95, pca_components=None)


# ------------------------------------------------------------------------------------------------ frames
def latent_columns(dim: int) -> list[str]:
    """Column names of latent embeddings: z0..z{dim-1}."""
    return [f"z{i}" for i in range(dim)]


def softmax_columns(n_classes: int) -> list[str]:
    """Column names of softmax outputs: p0..p{n_classes-1}."""
    return [f"p{i}" for i in range(n_classes)]


def latent_frame(z: np.ndarray) -> pd.DataFrame:
    """Latent embeddings [N, D] as a DataFrame with columns z0..z{D-1}."""
    return pd.DataFrame(np.asarray(z, dtype=np.float64), columns=latent_columns(z.shape[1]))


def softmax_frame(p: np.ndarray) -> pd.DataFrame:
    """Softmax outputs [N, K] as a DataFrame with columns p0..p{K-1}."""
    return pd.DataFrame(np.asarray(p, dtype=np.float64), columns=softmax_columns(p.shape[1]))


def features_frame(features: Features) -> pd.DataFrame:
    """The "z" and (when present) "p" entries of a features dict side by side: columns z0.., p0.."""
    frames = [latent_frame(features["z"])] + ([softmax_frame(features["p"])] if "p" in features else [])
    return pd.concat(frames, axis=1)


# ------------------------------------------------------------------------------------- domain classifier
def _standardise(current: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale both by the reference's column mean/std: Evidently's SGD classifier is scale-sensitive."""
    mean = reference.mean(axis=0)
    std = reference.std(axis=0)
    std[std == 0] = 1.0
    return (current - mean) / std, (reference - mean) / std


def _check_rows(current: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    current = np.asarray(current, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if current.ndim != 2 or reference.ndim != 2 or current.shape[1] != reference.shape[1]:
        raise ValueError(
            "current and reference must be 2-D with the same number of columns, "
            f"got {current.shape} and {reference.shape}"
        )
    if len(current) < 1 or len(reference) < 2:
        raise ValueError(f"need >= 1 current and >= 2 reference rows, got {len(current)} and {len(reference)}")
    if not (np.isfinite(current).all() and np.isfinite(reference).all()):
        raise ValueError("current and reference rows must be finite (no NaN or inf)")
    return current, reference


def _evidently_auc(current: np.ndarray, reference: np.ndarray) -> float | None:
    """Evidently's model-based drift score, or None when its fixed 50/50 split leaves no current row in a half.

    Evidently (0.7.23, `ModelDriftMethod`) concatenates reference then current rows, splits them in halves with
    `train_test_split(random_state=42)` (not stratified), fits `SGDClassifier(log_loss, random_state=42)` on one
    half and returns the ROC AUC on the other. With no current row in the training half SGD raises ValueError;
    with none in the test half the AUC is NaN. Which happens depends only on the two row counts: with
    1,000 reference rows only n = 1 fails; with 500 reference rows n = 1 and 2 fail.
    """
    columns = [f"c{i}" for i in range(current.shape[1])]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            score, _, _ = _MODEL_DRIFT(pd.DataFrame(current, columns=columns), pd.DataFrame(reference, columns=columns))
    except ValueError:
        return None
    return None if np.isnan(score) else float(score)


def _fallback_auc(current: np.ndarray, reference: np.ndarray) -> float:
    """The AUC a domain classifier can reach with no current row to learn from, for batches Evidently can't score.

    Every row is scored by its Euclidean distance from the reference centre (columns already standardised), and
    the ROC AUC of that score separates current from reference rows: the share of reference rows nearer the
    centre than a current row (ties count half). It is a valid statistic because the base class calibrates it
    per n, it is defined for a single current row, and it is cheap.
    """
    centre = reference.mean(axis=0)
    scores = np.r_[np.linalg.norm(reference - centre, axis=1), np.linalg.norm(current - centre, axis=1)]
    labels = np.r_[np.zeros(len(reference), dtype=int), np.ones(len(current), dtype=int)]
    return float(roc_auc_score(labels, scores))


def domain_classifier_auc_with_method(
    current: np.ndarray, reference: np.ndarray, seed: int = 0
) -> tuple[float, str]:
    """`domain_classifier_auc` and which implementation produced it: "evidently-model" or "distance-rank"."""
    current, reference = _check_rows(current, reference)
    current, reference = _standardise(current, reference)
    rng = np.random.default_rng(seed)
    current, reference = current[rng.permutation(len(current))], reference[rng.permutation(len(reference))]
    score = _evidently_auc(current, reference)
    if score is not None:
        return score, "evidently-model"
    return _fallback_auc(current, reference), "distance-rank"


def domain_classifier_auc(current: np.ndarray, reference: np.ndarray, seed: int = 0) -> float:
    """ROC AUC of a classifier telling `current` rows from `reference` rows (0.5 = indistinguishable, 1 = apart).

    Evidently's `ModelDriftMethod` called directly (no Report), on columns
    standardised by the reference mean/std. Evidently fixes `random_state=42` for its split and classifier, so
    the result is deterministic for a given row order; `seed` permutes the rows of each input first, which
    selects the rows that fall in each half. When Evidently cannot score (in practice a single current row; see
    `_evidently_auc`), the AUC of each row's distance from the reference centre is returned instead
    (`_fallback_auc`): with one current row there is nothing to cross-validate a classifier on.
    """
    return domain_classifier_auc_with_method(current, reference, seed)[0]


# ---------------------------------------------------------------------------------------------- detector
def _model_state(model: Classifier | Autoencoder) -> dict[str, Any]:
    return {"config": model.config(), "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def _rebuild(cls: type[Classifier] | type[Autoencoder], state: dict[str, Any]) -> Any:
    model = cls(**state["config"])
    model.load_state_dict(state["state_dict"])
    return model.eval()


class EvidentlyDetector(Detector):
    """Domain-classifier drift on [latent embedding, softmax] rows, via Evidently; Mahalanobis sample scores.

    `max_reference` caps the clean rows the domain classifier compares a batch with (a seeded sample of the
    reference images): the cost of one statistic grows with it (see benchmarks/README.md).
    `calibration_windows` defaults to 200 rather than the base class's 500 for the same reason.
    """

    name = "evidently-domain-classifier"

    def __init__(
        self,
        classifier: Classifier,
        autoencoder: Autoencoder,
        max_reference: int = DEFAULT_MAX_REFERENCE,
        alpha: float = DEFAULT_ALPHA,
        sample_fpr: float = DEFAULT_SAMPLE_FPR,
        calibration_windows: int = DEFAULT_CALIBRATION_WINDOWS,
        seed: int = 0,
    ) -> None:
        super().__init__(alpha=alpha, sample_fpr=sample_fpr, calibration_windows=calibration_windows, seed=seed)
        if max_reference < 2:
            raise ValueError(f"max_reference must be >= 2, got {max_reference}")
        self.classifier = classifier.eval()
        self.autoencoder = autoencoder.eval()
        self.max_reference = max_reference
        self._reference_rows: np.ndarray | None = None
        self._latent_mean: np.ndarray | None = None
        self._latent_precision: np.ndarray | None = None

    def _fit(self, reference: torch.Tensor) -> None:
        z = self.autoencoder.embed(reference).numpy().astype(np.float64)
        covariance = LedoitWolf().fit(z)
        self._latent_mean, self._latent_precision = covariance.location_, covariance.precision_
        rng = np.random.default_rng(self.seed)
        keep = np.sort(rng.choice(len(reference), min(len(reference), self.max_reference), replace=False))
        p = self.classifier.predict_proba(reference[torch.from_numpy(keep)]).numpy().astype(np.float64)
        self._reference_rows = np.hstack([z[keep], p])

    def _features(self, images: torch.Tensor, probabilities: np.ndarray | None = None) -> Features:
        """Latent z [N, D], softmax p [N, K] and Mahalanobis sample scores [N] (latent standard deviations)."""
        z = self.autoencoder.embed(images).numpy().astype(np.float64)
        if probabilities is None:
            probabilities = self.classifier.predict_proba(images).numpy()
        p = probabilities.astype(np.float64)
        return {"z": z, "p": p, "sample_scores": self._mahalanobis(z)}

    def _mahalanobis(self, z: np.ndarray) -> np.ndarray:
        centred = z - self._latent_mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", centred, self._latent_precision, centred), 0.0))

    def _statistic(self, features: Features) -> float:
        """Domain-classifier ROC AUC of the batch's [z, p] rows against the reference sample (0.5 = no drift)."""
        return domain_classifier_auc(self._rows(features), self._reference_rows, seed=self.seed)

    def _details(self, features: Features) -> dict[str, Any]:
        """The AUC (computed again), its implementation, and the dimensions of the compared rows."""
        auc, method = domain_classifier_auc_with_method(self._rows(features), self._reference_rows, seed=self.seed)
        return {
            "auc": auc,
            "auc_method": method,
            "embedding_dim": int(features["z"].shape[1]),
            "n_classes": int(features["p"].shape[1]),
            "reference_rows": int(len(self._reference_rows)),
        }

    @staticmethod
    def _rows(features: Features) -> np.ndarray:
        return np.hstack([features["z"], features["p"]])

    def features(self, images: Any) -> Features:
        """Per-image features of a batch ("z", "p", "sample_scores"), e.g. for `save_drift_report`."""
        return self._features(self._check(images))

    def reference_features(self) -> Features:
        """The stored clean reference sample as a features dict ("z", "p"), e.g. for `save_drift_report`."""
        self._require_fitted()
        dim = self.autoencoder.latent_dim
        return {"z": self._reference_rows[:, :dim], "p": self._reference_rows[:, dim:]}

    def _state(self) -> dict[str, Any]:
        return {
            "classifier": _model_state(self.classifier),
            "autoencoder": _model_state(self.autoencoder),
            "max_reference": self.max_reference,
            "reference_rows": self._reference_rows,
            "latent_mean": self._latent_mean,
            "latent_precision": self._latent_precision,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.classifier = _rebuild(Classifier, state["classifier"])
        self.autoencoder = _rebuild(Autoencoder, state["autoencoder"])
        self.max_reference = state["max_reference"]
        self._reference_rows = state["reference_rows"]
        self._latent_mean = state["latent_mean"]
        self._latent_precision = state["latent_precision"]


# ----------------------------------------------------------------------------------------------- report
def _report_columns(current: Features, reference: Features, max_latent_columns: int) -> list[str]:
    """All softmax columns (when "p" is given), plus the "z" columns whose means moved most (in reference standard
    deviations)."""
    std = reference["z"].std(axis=0)
    std[std == 0] = 1.0
    shift = np.abs(current["z"].mean(axis=0) - reference["z"].mean(axis=0)) / std
    latent = np.sort(np.argsort(-shift, kind="stable")[:max_latent_columns])
    softmax = softmax_columns(reference["p"].shape[1]) if "p" in reference else []
    return [f"z{i}" for i in latent] + softmax


def drift_report(current: pd.DataFrame, reference: pd.DataFrame) -> Snapshot:
    """Evidently's `DataDriftPreset` over every (numerical) column of `current` against `reference`.

    Its cost grows with the number of columns (plotly widgets per column). Get the JSON
    with `report_dict(snapshot)`, the HTML with `snapshot.save_html(str(path))` (Evidently silently writes
    nothing when given a `Path`).
    """
    definition = DataDefinition(numerical_columns=list(reference.columns))
    return Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )


def report_dict(snapshot: Snapshot) -> dict[str, Any]:
    """The report's metrics and tests as plain JSON types (`snapshot.dict()` holds numpy floats and enums)."""
    return json.loads(snapshot.json())


def save_drift_report(
    current_features: Features,
    reference_features: Features,
    path: str | Path,
    max_latent_columns: int = DEFAULT_REPORT_LATENT_COLUMNS,
) -> Path:
    """Write Evidently's HTML drift report of a batch against the reference to `path`; returns the path.

    Covers the softmax columns and the `max_latent_columns` latent columns whose means shifted most, to keep
    the report small and quick. Off the hot path: run it as a
    separate task. Needs "z" (and optionally "p") in both feature dicts (`Detector.report_features` and
    `Detector.reference_report_features` give them).
    """
    columns = _report_columns(current_features, reference_features, max_latent_columns)
    snapshot = drift_report(
        features_frame(current_features)[columns], features_frame(reference_features)[columns]
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    return path

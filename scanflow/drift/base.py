"""The detector contract: `fit(reference) -> self`, `score(batch)`, and a concrete `predict(batch) -> DriftResult`.

A subclass fills three hooks: `_fit` (learn the clean reference), `_features` (per-image features of a batch,
computed once per batch: embeddings, scores, softmax outputs) and `_statistic` (one batch statistic from those
features, higher = more drift). The base class owns everything users call and everything that must be the same
for every detector: input validation, the NotFittedError, per-sample scores, and the calibration of both
thresholds on clean held-out images:

- the **sample threshold** is the (1 - sample_fpr) quantile of the calibration images' sample scores, so a clean
  image is flagged critical with probability ~ sample_fpr;
- the **batch threshold** is calibrated per batch size n: the statistic is computed on `calibration_windows`
  random clean windows of size n drawn with replacement from the calibration images (drawing without
  replacement would make windows that cover a large share of a small calibration set too alike, and the null
  too narrow: 11 % false alarms at n = 200 from 1,000 MNIST calibration images), and a batch's p-value is the share of those
  windows with a statistic at least as large (with the +1 correction). Drift is declared when p <= alpha, so the
  false-alarm rate on clean batches of that size is at most alpha (up to sampling noise of the null). A statistic
  that compares a batch with calibration estimates gets them redrawn per null window (`_null_statistic`).
Null distributions are cached per n and saved with the detector.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch

from scanflow.artifacts import load_state, save_state, sha256_file
from scanflow.data import DatasetInfo, validate_batch
from scanflow.errors import InvalidBatchError, NotFittedError, ScanflowError

DEFAULT_ALPHA = 0.05
DEFAULT_SAMPLE_FPR = 0.05
DEFAULT_CALIBRATION_WINDOWS = 500
MIN_CALIBRATION_IMAGES = 20
#: Version of what `save` writes; `load` refuses other versions (3: the pickle-free state format).
FORMAT_VERSION = 3
#: Null distributions (per window size) of the detectors loaded in this process, one dict per detector file
#: (its sha256). A null depends only on what the file holds, so every load of the same fitted detector (each batch of
#: a supervise loop loads its champion's) reuses the nulls any of them computed instead of drawing them again.
_LOADED_NULLS: dict[str, dict[int, np.ndarray]] = {}

Features = dict[str, np.ndarray]


@dataclass(frozen=True)
class DriftResult:
    """The verdict on one batch.

    `p_value` is the calibrated probability of a statistic this large on a clean batch of the same size;
    `threshold` is the statistic's value at p = alpha for this n; `sample_scores` (float [N], higher = stranger)
    are comparable across batches; `critical_indices` lists every sample above `sample_threshold`, highest first
    (the label budget is applied later, by `scanflow.drift.selection`).
    """

    detector: str
    is_drift: bool
    statistic: float
    p_value: float
    threshold: float
    alpha: float
    n: int
    sample_scores: np.ndarray = field(repr=False)
    sample_threshold: float
    critical_indices: tuple[int, ...]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (sample scores as a list)."""
        values = asdict(self)
        values["sample_scores"] = [float(s) for s in self.sample_scores]
        values["critical_indices"] = list(self.critical_indices)
        return values


def _checked_probabilities(probabilities: np.ndarray | None, n: int) -> np.ndarray | None:
    if probabilities is None:
        return None
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) != n:
        raise InvalidBatchError(
            f"probabilities must be the classifier's softmax for the batch, shape [{n}, K]; got {list(probabilities.shape)}"
        )
    if not np.isfinite(probabilities).all():
        raise InvalidBatchError("probabilities contain NaN or infinite values: pass the classifier's softmax output")
    return probabilities


class Detector(ABC):
    """Base class of every drift detector. Subclasses fill `_fit`, `_features` and `_statistic`."""

    name: ClassVar[str]

    def __init__(
        self,
        alpha: float = DEFAULT_ALPHA,
        sample_fpr: float = DEFAULT_SAMPLE_FPR,
        calibration_windows: int = DEFAULT_CALIBRATION_WINDOWS,
        seed: int = 0,
    ) -> None:
        if not 0 < alpha < 1 or not 0 < sample_fpr < 1:
            raise ValueError(f"alpha and sample_fpr must be in (0, 1), got alpha={alpha}, sample_fpr={sample_fpr}")
        self.alpha = alpha
        self.sample_fpr = sample_fpr
        self.calibration_windows = calibration_windows
        self.seed = seed
        self.info: DatasetInfo | None = None
        self.sample_threshold: float | None = None
        self._calibration: Features | None = None
        self._null: dict[int, np.ndarray] = {}

    def at_alpha(self, alpha: float) -> "Detector":
        """Use another false-alarm rate from now on (e.g. a supervision policy's): the null distributions are kept
        per window size, so the new threshold is one quantile away and nothing is refitted."""
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be a false-alarm rate in (0, 1), got {alpha}")
        self.alpha = alpha
        return self

    # ----------------------------------------------------------------------------------------------- hooks
    @abstractmethod
    def _fit(self, reference: torch.Tensor) -> None:
        """Learn what clean images look like from `reference` (uint8 [N, C, H, W])."""

    @abstractmethod
    def _features(self, images: torch.Tensor, probabilities: np.ndarray | None = None) -> Features:
        """Per-image features of a batch; must include "sample_scores" (float [N], higher = stranger).

        `probabilities` is the classifier's softmax [N, K] for these images when the caller already has it
        (the predict step), so a detector that needs it does not run the classifier a second time.
        """

    @abstractmethod
    def _statistic(self, features: Features) -> float:
        """One batch statistic from `_features` output (or a row subset of it); higher = more drift."""

    # ------------------------------------------------------------------------------------------ public API
    @property
    def is_fitted(self) -> bool:
        return self._calibration is not None

    def fit(self, reference: Any, calibration: Any | None = None, info: DatasetInfo | None = None) -> Self:
        """Fit on clean `reference` images and calibrate thresholds on clean `calibration` images.

        Without `calibration`, a seeded 20 % of `reference` is held out for it: thresholds calibrated on the
        images a detector was fitted to would be too low.
        """
        reference = validate_batch(reference, info)
        if calibration is None:
            order = torch.randperm(len(reference), generator=torch.Generator().manual_seed(self.seed))
            cut = max(MIN_CALIBRATION_IMAGES, len(reference) // 5)
            if len(reference) < 2 * cut:
                raise InvalidBatchError(
                    f"{self.name}: {len(reference)} reference images are too few to fit and calibrate; "
                    f"pass at least {2 * cut}, or a separate calibration set"
                )
            reference, calibration = reference[order[cut:]], reference[order[:cut]]
        calibration = validate_batch(calibration, info)
        if len(calibration) < MIN_CALIBRATION_IMAGES:
            raise InvalidBatchError(
                f"{self.name}: {len(calibration)} calibration images are too few; pass at least {MIN_CALIBRATION_IMAGES}"
            )
        self.info = info
        self._null = {}
        self._fit(reference)
        self._calibration = self._features(calibration)
        scores = self._calibration["sample_scores"]
        self.sample_threshold = float(np.quantile(scores, 1.0 - self.sample_fpr))
        return self

    def score(self, images: Any, probabilities: np.ndarray | None = None) -> np.ndarray:
        """Per-sample scores, float [N], higher = stranger; comparable across batches (no per-batch scaling)."""
        images = self._check(images)
        return self._features(images, _checked_probabilities(probabilities, len(images)))["sample_scores"]

    def predict(self, images: Any, probabilities: np.ndarray | None = None) -> DriftResult:
        """Test one batch for drift and rank its critical samples.

        Pass `probabilities` (the classifier's softmax [N, K] from the predict step) to skip a second
        classifier pass on the hot path.
        """
        return self.assess(images, probabilities)[0]

    def assess(self, images: Any, probabilities: np.ndarray | None = None) -> tuple[DriftResult, Features]:
        """`predict`, plus the per-image features it computed (e.g. latent vectors), so a caller that needs
        them too (critical-sample selection) does not run the models again."""
        images = self._check(images)
        features = self._features(images, _checked_probabilities(probabilities, len(images)))
        statistic = float(self._statistic(features))
        null = self.null_distribution(len(images))
        exceed = int(np.sum(null >= statistic))
        p_value = (1 + exceed) / (1 + len(null))
        threshold = float(np.quantile(null, 1.0 - self.alpha))
        scores = np.asarray(features["sample_scores"], dtype=np.float64)
        above = np.flatnonzero(scores > self.sample_threshold)
        critical = tuple(int(i) for i in above[np.argsort(-scores[above], kind="stable")])
        return DriftResult(
            detector=self.name,
            is_drift=p_value <= self.alpha,
            statistic=statistic,
            p_value=float(p_value),
            threshold=threshold,
            alpha=self.alpha,
            n=len(images),
            sample_scores=scores,
            sample_threshold=float(self.sample_threshold),
            critical_indices=critical,
            details=self._details(features),
        ), features

    def clean_score_quantile(self, quantile: float) -> float:
        """The `quantile` (0..1) of per-sample scores on the clean calibration images: a per-image threshold
        that about 1 - quantile of clean images exceed."""
        if not 0 <= quantile <= 1:
            raise ValueError(f"quantile must be in [0, 1], got {quantile}")
        return float(np.quantile(self._require_fitted()["sample_scores"], quantile))

    def null_distribution(self, n: int) -> np.ndarray:
        """The statistic on `calibration_windows` clean windows of size n, drawn with replacement (cached per n)."""
        calibration = self._require_fitted()
        if n not in self._null:
            size = len(calibration["sample_scores"])
            rng, reference_rng = np.random.default_rng([self.seed, n]), np.random.default_rng([self.seed, n, 1])
            windows = (rng.choice(size, n, replace=True) for _ in range(self.calibration_windows))
            self._null[n] = np.array(
                [self._null_statistic({k: v[rows] for k, v in calibration.items()}, reference_rng) for rows in windows]
            )
        return self._null[n]

    def _null_statistic(self, window: Features, rng: np.random.Generator) -> float:
        """The statistic of one clean calibration window for the null. A subclass whose statistic compares the
        batch with an estimate from the calibration images (e.g. their mean) overrides this to redraw that
        estimate from a bootstrap resample (`rng`): a production batch meets the estimate with its sampling error,
        windows drawn from the very images it was computed from do not."""
        return self._statistic(window)

    def _details(self, features: Features) -> dict[str, Any]:
        """Extra, JSON-able facts a subclass wants in the result (e.g. component statistics)."""
        return {}

    # ------------------------------------------------------------------ what the flows use beyond predict
    #: The classifier the detector watches (its softmax and hidden features), when it has one: detection uses it
    #: to pick the samples a person labels, and an improvement refits a detector around a new one.
    classifier: Any = None

    def signature_of(self, features: Features) -> np.ndarray:
        """Per-image signals, float [N, F] in clean standard deviations, that two batches are compared on to tell
        whether they carry the same shift (`scanflow.drift.known`). Default: the standardised sample score."""
        clean = self._require_fitted()["sample_scores"]
        scores = np.asarray(features["sample_scores"], dtype=np.float64)
        return ((scores - clean.mean()) / (clean.std() + 1e-12))[:, None]

    def shift_signature(self, images: Any, probabilities: np.ndarray | None = None) -> np.ndarray:
        """`signature_of` the features of `images`."""
        images = self._check(images)
        return self.signature_of(self._features(images, _checked_probabilities(probabilities, len(images))))

    def report_features(self, images: Any) -> Features:
        """The columns of the human-facing drift report (`scanflow.drift.evidently.save_drift_report`): "z"
        [N, D] and optionally the softmax "p" [N, K]. Default: the sample score as the one "z" column."""
        return {"z": self.score(images)[:, None]}

    def reference_report_features(self) -> Features:
        """`report_features` of clean images, to compare a batch's with. Default: the calibration images'."""
        return {"z": np.asarray(self._require_fitted()["sample_scores"], dtype=np.float64)[:, None]}

    # -------------------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the fitted detector (state from `_state`, calibration features, cached nulls) to `path`."""
        self._require_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format_version": FORMAT_VERSION,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "params": {"alpha": self.alpha, "sample_fpr": self.sample_fpr, "calibration_windows": self.calibration_windows, "seed": self.seed},
            "info": self.info,
            "sample_threshold": self.sample_threshold,
            "calibration": self._calibration,
            "null": self._null,
            "state": self._state(),
        }
        try:
            return save_state(payload, path)
        except TypeError as error:
            raise ScanflowError(f"{self.name} cannot be saved: {error}") from None

    @classmethod
    def load(cls, path: str | Path) -> "Detector":
        """Read a detector written by `save`. Nothing in the file can run code: the class must be a `Detector`
        subclass in `scanflow.drift`, and the state holds only numbers, arrays and Scanflow model weights. Detectors
        loaded from identical files in one process share their null distributions (`_LOADED_NULLS`); `fit` gives a
        detector nulls of its own again."""
        import importlib

        path = Path(path)
        if not path.is_file():
            raise ScanflowError(f"no saved detector at {path}")
        payload = load_state(path)
        if payload.get("format_version") != FORMAT_VERSION:
            raise ScanflowError(
                f"{path} was saved in detector format {payload.get('format_version')}, this Scanflow reads "
                f"{FORMAT_VERSION}: register a new version with `scanflow train`"
            )
        module, _, qualname = str(payload["class"]).rpartition(".")
        if not module.startswith("scanflow.drift."):
            raise ScanflowError(f"{path} names the class {payload['class']!r}, which is not a Scanflow detector")
        try:
            detector_cls = getattr(importlib.import_module(module), qualname, None)
        except ImportError:
            detector_cls = None
        if not isinstance(detector_cls, type) or not issubclass(detector_cls, cls):
            raise ScanflowError(f"{path} holds a {payload['class']}, not a {cls.__name__}")
        detector = detector_cls.__new__(detector_cls)
        Detector.__init__(detector, **payload["params"])
        detector._restore(payload["state"])
        detector.info = payload["info"]
        detector.sample_threshold = payload["sample_threshold"]
        detector._calibration = payload["calibration"]
        detector._null = _LOADED_NULLS.setdefault(sha256_file(path), {})
        detector._null.update(payload["null"])
        return detector

    def _state(self) -> dict[str, Any]:
        """What a subclass needs to rebuild itself: numbers, arrays, tensors, Scanflow models (see `save_state`)."""
        return {}

    def _restore(self, state: dict[str, Any]) -> None:
        """Inverse of `_state`."""

    # ---------------------------------------------------------------------------------------- internals
    def _require_fitted(self) -> Features:
        if self._calibration is None:
            raise NotFittedError(f"{self.name} is not fitted: call fit(reference_images) before score/predict")
        return self._calibration

    def _check(self, images: Any) -> torch.Tensor:
        self._require_fitted()
        return validate_batch(images, self.info)

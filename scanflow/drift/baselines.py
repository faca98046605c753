"""The published baselines, as `Detector` subclasses so the benchmark runs and calibrates them like Scanflow's own.

- `QuotaDetector`: the rule of the research system Scanflow (2021), a pixel autoencoder's reconstruction error
  with per-batch 5/95 percentile thresholds (`published_quota_flags`), plus the minimal fix that makes it a
  calibratable batch detector;
- `BBSDDetector`: black-box shift detection on softmax outputs (Rabanser et al. 2019, "Failing Loudly"), per-class
  Kolmogorov-Smirnov tests with a Bonferroni correction; its sample score is the maximum-softmax-probability baseline;
- `MMDDetector`: unbiased MMD^2 with a Gaussian kernel on an encoder's embedding (an untrained autoencoder, as
  published);
- `PixelStatsDetector`: KS tests on four per-image pixel statistics, the baseline that knows nothing about images.

Every statistic is "higher = more drift"; the base class turns it into a calibrated p-value per batch size, so
the asymptotic p-values computed here only serve as monotone scores (and to combine components).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Self

import numpy as np
import torch
from scipy.special import kolmogorov

from scanflow.data import DatasetInfo
from scanflow.drift.base import Detector, Features
from scanflow.errors import InvalidBatchError
from scanflow.models import Autoencoder, Classifier

__all__ = [
    "BBSDDetector",
    "MAX_PERMUTATIONS",
    "MMDDetector",
    "PIXEL_STATISTICS",
    "PixelStatsDetector",
    "QUOTA_PERCENTILES",
    "QuotaDetector",
    "bonferroni_log10",
    "ks_pvalues",
    "pixel_statistics",
    "published_quota_flags",
]

QUOTA_PERCENTILES: tuple[float, float] = (5.0, 95.0)
"""The published two-sided thresholds, in percent of the batch."""

BRIGHT_PIXEL = 0.5
"""A pixel is bright above this value on the [0, 1] scale."""

PIXEL_STATISTICS: tuple[str, ...] = ("mean", "std", "bright_share", "neighbour_difference")

MIN_ROBUST_SCALE = 1.0 / 255.0
"""Floor of the robust spread (MAD x 1.4826) of a pixel statistic: one grey level on the [0, 1] scale."""

MAD_TO_STD = 1.4826
MAX_PERMUTATIONS = 200
_TINY_P = float(np.finfo(np.float64).tiny)

Encoder = Callable[[torch.Tensor], Any]


# ------------------------------------------------------------------------------------------------- helpers
def _as_float64(values: Any) -> np.ndarray:
    """A numpy float64 copy of a tensor or array (models return float32 tensors)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _reference_sample(n: int, max_rows: int, seed: int) -> np.ndarray:
    """Sorted indices of at most `max_rows` of `n` reference rows, drawn without replacement with `seed`."""
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))


def _check_max_reference(max_reference: int) -> int:
    if max_reference < 2:
        raise ValueError(f"max_reference must be at least 2, got {max_reference}")
    return int(max_reference)


def _require_shape(images: torch.Tensor, expected: tuple[int, int, int], model: str) -> None:
    """Reject a batch whose image shape is not the one the model was built for."""
    found = tuple(int(d) for d in images.shape[1:])
    if found != expected:
        raise InvalidBatchError(
            f"the {model} was built for images of shape {list(expected)} (C, H, W), got {list(found)}; "
            "resize the batch or use a model trained on this image size"
        )


def ks_pvalues(batch: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Two-sided two-sample KS p-values per column of `batch` [n, K] against `reference` [m, K].

    The statistic D is scipy's `ks_2samp` one (empirical CDFs compared at every pooled value, so ties are
    handled); the p-value is Kolmogorov's limiting distribution at sqrt(n m / (n + m)) D, computed for all
    columns at once: `scipy.stats.kstwo` (what `ks_2samp(method="asymp")` uses) costs milliseconds per call, too slow
    for hundreds of calibration windows, and the base class calibrates the statistic anyway.
    """
    n, m = batch.shape[0], reference.shape[0]
    pooled = np.concatenate([batch, reference])
    order = np.argsort(pooled, axis=0, kind="stable")
    values = np.take_along_axis(pooled, order, axis=0)
    gap = np.cumsum(np.where(order < n, 1.0 / n, -1.0 / m), axis=0)
    last_of_value = np.ones_like(values, dtype=bool)
    last_of_value[:-1] = values[1:] != values[:-1]
    distances = np.max(np.where(last_of_value, np.abs(gap), 0.0), axis=0)
    return np.clip(kolmogorov(np.sqrt(n * m / (n + m)) * distances), 0.0, 1.0)


def bonferroni_log10(pvalues: np.ndarray) -> tuple[float, float]:
    """(Bonferroni p = min(1, K min p_k), -log10 of it); the log is capped near 308 instead of reaching inf."""
    corrected = float(min(1.0, len(pvalues) * float(np.min(pvalues))))
    return corrected, float(np.log10(1.0 / max(corrected, _TINY_P)))


def published_quota_flags(errors: np.ndarray | torch.Tensor) -> np.ndarray:
    """The published Scanflow (2021) rule: bool [N], True for samples outside the batch's own 5/95 percentiles.

    Reconstruction errors are min/max normalised inside the batch, then every sample below the 5th or above the
    95th percentile of the normalised batch is flagged. Both steps are relative to the batch, so about 10 % of
    *every* batch is flagged, clean or corrupted: the rule cannot tell a drifted batch from a clean one. A batch
    whose errors are all equal flags nothing.
    """
    values = _as_float64(errors).reshape(-1)
    spread = values.max() - values.min()
    normalised = (values - values.min()) / spread if spread > 0 else np.zeros_like(values)
    low, high = np.percentile(normalised, QUOTA_PERCENTILES)
    return (normalised < low) | (normalised > high)


def pixel_statistics(images: torch.Tensor) -> np.ndarray:
    """Four statistics per image, float64 [N, 4], all on the [0, 1] pixel scale, over all channels.

    Columns (`PIXEL_STATISTICS`): mean, standard deviation, share of pixels brighter than 0.5, and mean absolute
    difference between horizontal and vertical neighbours (a sharpness/noise measure).
    """
    x = _as_float64(images)
    if images.dtype == torch.uint8:
        x /= 255.0
    flat = x.reshape(len(x), -1)
    horizontal = np.abs(np.diff(x, axis=3)).reshape(len(x), -1)
    vertical = np.abs(np.diff(x, axis=2)).reshape(len(x), -1)
    neighbour = (horizontal.sum(axis=1) + vertical.sum(axis=1)) / (horizontal.shape[1] + vertical.shape[1])
    return np.stack([flat.mean(axis=1), flat.std(axis=1), (flat > BRIGHT_PIXEL).mean(axis=1), neighbour], axis=1)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances [len(a), len(b)], clipped at 0 against rounding.

    The inner products use `einsum`, not BLAS: for window-sized inputs BLAS threads cost more to wake than the
    product (milliseconds per call on a busy machine, times hundreds of calibration windows).
    """
    d2 = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * np.einsum("ik,jk->ij", a, b)
    return np.maximum(d2, 0.0)


def _median_bandwidth(reference: np.ndarray) -> float:
    """The median heuristic: median squared distance between distinct reference points (embedding units^2)."""
    d2 = _squared_distances(reference, reference)
    median = float(np.median(d2[~np.eye(len(reference), dtype=bool)]))
    return median if median > 0 else 1.0


def _mean_off_diagonal(kernel_sum: float, n: int) -> float:
    """Mean kernel value over the n (n - 1) ordered pairs of distinct points, given the sum with a unit diagonal."""
    return (kernel_sum - n) / (n * (n - 1)) if n > 1 else 0.0


def _self_kernel_sum(points: np.ndarray, bandwidth: float) -> float:
    d2 = _squared_distances(points, points)
    np.fill_diagonal(d2, 0.0)
    return float(np.exp(-d2 / bandwidth).sum())


# ------------------------------------------------------------------------------------------------ detectors
class QuotaDetector(Detector):
    """The published Scanflow (2021) quota rule on a pixel autoencoder's reconstruction error.

    As published, `published_quota_flags` flags the samples outside the 5/95 percentiles of the min/max-normalised
    errors *of the batch itself*, which flags ~10 % of every batch and so carries no drift signal. The minimal fix
    used as the batch statistic: the share of samples whose raw reconstruction error (mean squared error per pixel,
    [0, 1] scale) exceeds the 95th percentile of the *reference* errors; the base class calibrates it per batch
    size. Sample score: the raw reconstruction error. `details` reports the published rule's flagged share.
    """

    name: ClassVar[str] = "quota"

    def __init__(self, autoencoder: Autoencoder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.autoencoder = autoencoder
        self.reference_p95: float | None = None

    def _errors(self, images: torch.Tensor) -> np.ndarray:
        model = self.autoencoder
        _require_shape(images, (model.channels, model.height, model.width), "autoencoder")
        return _as_float64(model.reconstruction_error(images))

    def _fit(self, reference: torch.Tensor) -> None:
        self.reference_p95 = float(np.percentile(self._errors(reference), QUOTA_PERCENTILES[1]))

    def _features(self, images: torch.Tensor, probabilities: np.ndarray | None = None) -> Features:
        return {"sample_scores": self._errors(images)}

    def _statistic(self, features: Features) -> float:
        return float(np.mean(features["sample_scores"] > self.reference_p95))

    def _details(self, features: Features) -> dict[str, Any]:
        flags = published_quota_flags(features["sample_scores"])
        return {"published_flagged_share": float(flags.mean()), "reference_p95": self.reference_p95}

    def _state(self) -> dict[str, Any]:
        return {"autoencoder": self.autoencoder, "reference_p95": self.reference_p95}

    def _restore(self, state: dict[str, Any]) -> None:
        self.autoencoder = state["autoencoder"]
        self.reference_p95 = state["reference_p95"]


class BBSDDetector(Detector):
    """Black-box shift detection (Rabanser et al. 2019, the best method of "Failing Loudly").

    Per class k, a two-sample KS test between the batch's and the reference's softmax column k; the batch p-value is
    Bonferroni's min(1, K min_k p_k) and the statistic is -log10 of it (higher = more drift). The reference is a
    seeded sample of at most `max_reference` fitting images. Sample score: 1 - maximum softmax probability (the MSP
    baseline), in [0, 1 - 1/K].
    """

    name: ClassVar[str] = "bbsd"

    def __init__(self, classifier: Classifier, max_reference: int = 2000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.classifier = classifier
        self.max_reference = _check_max_reference(max_reference)
        self.reference: np.ndarray | None = None

    def _softmax(self, images: torch.Tensor) -> np.ndarray:
        spec = self.classifier.spec
        _require_shape(images, (spec.channels, spec.height, spec.width), "classifier")
        return _as_float64(self.classifier.predict_proba(images))

    def _fit(self, reference: torch.Tensor) -> None:
        rows = _reference_sample(len(reference), self.max_reference, self.seed)
        self.reference = self._softmax(reference[torch.from_numpy(rows)])

    def _features(self, images: torch.Tensor, probabilities: np.ndarray | None = None) -> Features:
        softmax = self._softmax(images) if probabilities is None else probabilities
        return {"softmax": softmax, "sample_scores": 1.0 - softmax.max(axis=1)}

    def _test(self, features: Features) -> tuple[np.ndarray, float, float]:
        pvalues = ks_pvalues(features["softmax"], self.reference)
        return (pvalues, *bonferroni_log10(pvalues))

    def _statistic(self, features: Features) -> float:
        return self._test(features)[2]

    def _details(self, features: Features) -> dict[str, Any]:
        pvalues, corrected, _ = self._test(features)
        return {"bonferroni_p": corrected, "most_shifted_class": int(np.argmin(pvalues))}

    def _state(self) -> dict[str, Any]:
        return {"classifier": self.classifier, "max_reference": self.max_reference, "reference": self.reference}

    def _restore(self, state: dict[str, Any]) -> None:
        self.classifier = state["classifier"]
        self.max_reference = state["max_reference"]
        self.reference = state["reference"]


#: Channels of the untrained autoencoder baseline (c): the width Scanflow's own autoencoder had when the baseline
#: was first measured, kept so its recorded figures stay comparable (random features do not improve with width).
UNTRAINED_AUTOENCODER_WIDTH = 32


class MMDDetector(Detector):
    """Unbiased MMD^2 between the batch and a fixed reference sample, on an encoder's embedding.

    Gaussian kernel k(x, y) = exp(-||x - y||^2 / h) with h the median squared distance between reference points
    (the median heuristic; sigma^2 = h / 2). The reference is a seeded sample of at most `max_reference` fitting
    images. The published baseline judges MMD^2 with a permutation test; here the base class's calibration on clean
    windows replaces it (same null hypothesis, one null per batch size instead of one per batch, so `predict` is
    cheap). `permutation_p_value` gives the published test for comparison.

    `encoder` maps a uint8 batch [N, C, H, W] to embeddings [N, D] (tensor or array), e.g. `Autoencoder.embed` of an
    untrained autoencoder (see `untrained_autoencoder`). `save` stores an encoder that is a method of a Scanflow
    model (its weights), and refuses any other callable. Sample score: 1 - mean k(x, reference), in [0, 1], higher = farther from the reference.
    """

    name: ClassVar[str] = "mmd"

    def __init__(self, encoder: Encoder, max_reference: int = 500, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encoder = encoder
        self.max_reference = _check_max_reference(max_reference)
        self.reference: np.ndarray | None = None
        self.bandwidth: float | None = None
        self.reference_kernel_mean: float | None = None

    @classmethod
    def untrained_autoencoder(
        cls, info_or_shape: DatasetInfo | Sequence[int], latent_dim: int = 32, seed: int = 0, **kwargs: Any
    ) -> Self:
        """A detector on the embedding of an untrained `Autoencoder` initialised with `seed` (the published setup).

        `info_or_shape` is a `DatasetInfo` or a (C, H, W) image shape; the global torch RNG is left untouched.
        `kwargs` go to the constructor (its `seed` defaults to the same `seed`).
        """
        if isinstance(info_or_shape, DatasetInfo):
            channels, height, width = info_or_shape.image_shape
        else:
            channels, height, width = (int(d) for d in info_or_shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            autoencoder = Autoencoder(channels, height, width, latent_dim=latent_dim, width_multiplier=UNTRAINED_AUTOENCODER_WIDTH)
        autoencoder.eval()
        kwargs.setdefault("seed", seed)
        return cls(autoencoder.embed, **kwargs)

    def _embed(self, images: torch.Tensor) -> np.ndarray:
        embedding = _as_float64(self.encoder(images))
        return embedding.reshape(len(images), -1)

    def _fit(self, reference: torch.Tensor) -> None:
        rows = _reference_sample(len(reference), self.max_reference, self.seed)
        self.reference = self._embed(reference[torch.from_numpy(rows)])
        self.bandwidth = _median_bandwidth(self.reference)
        self.reference_kernel_mean = _mean_off_diagonal(
            _self_kernel_sum(self.reference, self.bandwidth), len(self.reference)
        )

    def _reference_similarity(self, embedding: np.ndarray) -> np.ndarray:
        """Mean kernel value k(x, reference) per embedded image, float [N] in [0, 1]."""
        return np.exp(-_squared_distances(embedding, self.reference) / self.bandwidth).mean(axis=1)

    def _features(self, images: torch.Tensor, probabilities: np.ndarray | None = None) -> Features:
        embedding = self._embed(images)
        return {"embedding": embedding, "sample_scores": 1.0 - self._reference_similarity(embedding)}

    def _statistic(self, features: Features) -> float:
        """Unbiased MMD^2, from the embedding alone: the cross term is recomputed, so any row subset is consistent."""
        embedding = features["embedding"]
        within = _mean_off_diagonal(_self_kernel_sum(embedding, self.bandwidth), len(embedding))
        cross = float(self._reference_similarity(embedding).mean())
        return within + self.reference_kernel_mean - 2.0 * cross

    def _details(self, features: Features) -> dict[str, Any]:
        return {"bandwidth": self.bandwidth}

    def permutation_p_value(
        self, features: Features | torch.Tensor | np.ndarray, n_permutations: int = MAX_PERMUTATIONS
    ) -> float:
        """The published permutation test of MMD^2 between a batch and the reference sample, p with +1 correction.

        `features` is a batch of images or `_features` output. Batch and reference points are pooled and
        re-split `n_permutations` times (at most `MAX_PERMUTATIONS`), seeded by the detector's seed and n.
        """
        if not 1 <= n_permutations <= MAX_PERMUTATIONS:
            raise ValueError(f"n_permutations must be in 1..{MAX_PERMUTATIONS}, got {n_permutations}")
        self._require_fitted()
        if not isinstance(features, dict):
            features = self._features(self._check(features))
        n, m = len(features["embedding"]), len(self.reference)
        pooled = np.concatenate([features["embedding"], self.reference])
        d2 = _squared_distances(pooled, pooled)
        np.fill_diagonal(d2, 0.0)
        kernel = np.exp(-d2 / self.bandwidth)
        rng = np.random.default_rng([self.seed, n])
        in_batch = np.zeros((n + m, n_permutations + 1))
        in_batch[:n, 0] = 1.0
        for column in range(1, n_permutations + 1):
            in_batch[rng.permutation(n + m)[:n], column] = 1.0
        statistics = self._split_mmd2(kernel, in_batch, n, m)
        return float((1 + np.sum(statistics[1:] >= statistics[0])) / (1 + n_permutations))

    @staticmethod
    def _split_mmd2(kernel: np.ndarray, in_batch: np.ndarray, n: int, m: int) -> np.ndarray:
        """Unbiased MMD^2 for each split of the pooled points given by the 0/1 columns of `in_batch` [n + m, P]."""
        total = kernel.sum()
        weighted = kernel @ in_batch
        batch_batch = np.einsum("ip,ip->p", in_batch, weighted)
        batch_reference = in_batch.T @ kernel.sum(axis=1) - batch_batch
        reference_reference = total - 2.0 * batch_reference - batch_batch
        within_batch = (batch_batch - n) / (n * (n - 1)) if n > 1 else np.zeros_like(batch_batch)
        within_reference = (reference_reference - m) / (m * (m - 1))
        return within_batch + within_reference - 2.0 * batch_reference / (n * m)

    def _state(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder,
            "max_reference": self.max_reference,
            "reference": self.reference,
            "bandwidth": self.bandwidth,
            "reference_kernel_mean": self.reference_kernel_mean,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.encoder = state["encoder"]
        self.max_reference = state["max_reference"]
        self.reference = state["reference"]
        self.bandwidth = state["bandwidth"]
        self.reference_kernel_mean = state["reference_kernel_mean"]


class PixelStatsDetector(Detector):
    """The baseline that knows nothing about the task: KS tests on four per-image pixel statistics.

    Statistics as in `pixel_statistics` ([0, 1] pixel scale); per statistic a two-sample KS test against a seeded
    reference sample of at most `max_reference` images, Bonferroni over the four, statistic -log10 of the corrected
    p-value. Sample score: the largest |robust z| over the four statistics, z = (value - reference median) /
    (1.4826 MAD), the spread floored at one grey level; unitless.
    """

    name: ClassVar[str] = "pixel_stats"

    def __init__(self, max_reference: int = 2000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_reference = _check_max_reference(max_reference)
        self.reference: np.ndarray | None = None
        self.median: np.ndarray | None = None
        self.scale: np.ndarray | None = None

    def _fit(self, reference: torch.Tensor) -> None:
        rows = _reference_sample(len(reference), self.max_reference, self.seed)
        statistics = pixel_statistics(reference[torch.from_numpy(rows)])
        self.reference = statistics
        self.median = np.median(statistics, axis=0)
        mad = np.median(np.abs(statistics - self.median), axis=0)
        self.scale = np.maximum(MAD_TO_STD * mad, MIN_ROBUST_SCALE)

    def _features(self, images: torch.Tensor, probabilities: np.ndarray | None = None) -> Features:
        statistics = pixel_statistics(images)
        z = np.abs(statistics - self.median) / self.scale
        return {"pixel_statistics": statistics, "sample_scores": z.max(axis=1)}

    def _test(self, features: Features) -> tuple[np.ndarray, float, float]:
        pvalues = ks_pvalues(features["pixel_statistics"], self.reference)
        return (pvalues, *bonferroni_log10(pvalues))

    def _statistic(self, features: Features) -> float:
        return self._test(features)[2]

    def _details(self, features: Features) -> dict[str, Any]:
        pvalues, corrected, _ = self._test(features)
        return {"bonferroni_p": corrected, "ks_p": dict(zip(PIXEL_STATISTICS, (float(p) for p in pvalues)))}

    def _state(self) -> dict[str, Any]:
        return {
            "max_reference": self.max_reference,
            "reference": self.reference,
            "median": self.median,
            "scale": self.scale,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.max_reference = state["max_reference"]
        self.reference = state["reference"]
        self.median = state["median"]
        self.scale = state["scale"]

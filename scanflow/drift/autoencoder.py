"""Scanflow's own detector: per-image strangeness from the autoencoder and the classifier, one calibrated batch test.

Sample score: the mean of six component scores, each on a log scale and standardised with the median and MAD of
clean reference images ("robust standard deviations above clean", comparable across batches):
- `reconstruction`: the autoencoder's mean squared reconstruction error (pixels in [0, 1]);
- `latent`: squared Mahalanobis distance of the latent vector to the reference latents (Ledoit-Wolf covariance);
- `uncertainty`: -log of the classifier's top softmax probability;
- `pixels`: Mahalanobis distance of the image's pixel statistics (mean, standard deviation, share of bright
  pixels, neighbour difference and its ratio to the standard deviation and, with `extended_pixels`, the log
  ratio of the mean absolute Laplacian to the neighbour difference and the shares of clipped pixels) to the
  reference's;
- `rarity`: the mean surprise (-log p, nats) of the image's least probable pixels under per-position histograms
  of reference pixel values (`PixelRarity`): small local marks;
- `local_error` (colour images only, `default_components`): how far the image's worst reconstructed positions lie
  from clean reconstruction at the same positions (`LocalError`): small marks on colour images, where any value is
  common at every position;
- `embedding` (optional, `OPTIONAL_COMPONENTS`): squared Mahalanobis distance of the classifier's own hidden
  features (`embed_and_predict_proba`, e.g. an adopted model's named embedding layer) to the reference's, so a
  change the model's representation sees counts even when pixels and the autoencoder miss it. It is two-sided
  (`TWO_SIDED_COMPONENTS`): blur and fog pull embeddings toward the reference's centre, closer than clean images sit.

Batch statistic: the largest of three z-scores under clean data, plus a tie-breaker of at most `TIE_BREAK`:
- mean shift: the batch mean of each image's raw signals (log components, pixel statistics, latent vector and,
  with `prediction_shift`, the classifier's log class probabilities) against the clean calibration mean, a
  Hotelling-type chi-square with the clean covariance, mapped to a z-score;
- score shift: the batch's mean sample score;
- excess of strange samples: per view, how many samples exceed its clean (1 - sample_fpr) quantile, as a binomial
  z-score against the expected share.
The tie-breaker (the score shift mapped to (0, 1)) orders windows that share one count, and no other order.
Each null window is compared with a bootstrap resample of the calibration images (`_null_statistic`), so the null
carries the sampling error of the clean estimates. Why these choices: docs/decisions/0004-the-autoencoder-detector.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import special, stats
from sklearn.covariance import LedoitWolf

from scanflow.data import LabeledImages
from scanflow.drift.base import Detector, Features
from scanflow.models import Autoencoder, Classifier, native_bfloat16, to_float

COMPONENTS = ("reconstruction", "latent", "uncertainty", "pixels", "rarity", "local_error")
#: Components a grey-image detector leaves out by default: on grey images `rarity` already sees small marks, and
#: `local_error` only dilutes the sample score (mean sample AUROC on MNIST 0.957 -> 0.944 and on Fashion-MNIST
#: 0.952 -> 0.936 at severity 3 with it).
COLOUR_ONLY_COMPONENTS = ("local_error",)
#: Components a detector scores only when asked (`components=`): they need more of the classifier than its softmax.
OPTIONAL_COMPONENTS = ("embedding",)
#: Components scored by their distance from clean in either direction (the absolute standardised value): an image
#: that is too typical is as strange as one too far out.
TWO_SIDED_COMPONENTS = ("embedding",)
#: Components that tell what kind of change an image carries, hence which remedy fits (`_details`' strongest
#: component share, which `scanflow.human.policy_action` votes with). `rarity` and `local_error` tell only that pixels
#: are unusual where they sit, as much for marks a filter removes (spatter, lines) as for moved shapes only retraining
#: fixes (shear, translate): with `rarity` in the vote, sheared and translated digits got "filter".
KIND_COMPONENTS = ("reconstruction", "latent", "uncertainty", "pixels")
#: Classes up to which `prediction_shift` adds the log class probabilities to the mean-shift signals: each class is a
#: dimension of the chi-square, and beyond this many a shift spread over a few classes would drown in the rest.
MAX_PREDICTION_CLASSES = 20
#: Probability floor before the log of `prediction_shift`'s signals: a model that returns labels only (one-hot
#: probabilities) gives finite signals, its class mix.
_PROBABILITY_FLOOR = 1e-6
#: Reference rows kept for human-facing reports (Evidently's HTML drift report), not for the test itself.
REPORT_REFERENCE_ROWS = 1000
_EPS = 1e-12
_MAD_TO_SD = 1.4826
#: Scale of the tie-break added to the batch statistic (z units): far below the gaps between a null's distinct
#: statistics (one count is >= 0.14 z at n <= 200), far above float64 rounding at statistics of order 1-100.
TIE_BREAK = 1e-6
#: Upper edges (pixel values in [0, 1]) of the value bins of `PixelRarity`'s per-position histograms: finer near
#: black, where most positions of a clean image sit and a faint mark is already a surprise.
RARITY_BIN_EDGES = (0.02, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9)
#: How many of an image's least probable pixels `PixelRarity` averages: a small mark (a blob, a line, a few
#: pixels of salt) decides the score instead of drowning in hundreds of ordinary pixels.
RARE_PIXELS = 10
#: Floor of `LocalError`'s per-position error scale (squared error summed over channels, pixels in [0, 1]): about
#: one grey level of 255 per channel, so positions the autoencoder reconstructs perfectly (an MNIST border) do not
#: turn rounding into surprise.
LOCAL_ERROR_FLOOR = 1e-4
#: Precisions the autoencoder's decoder may run in when the detector computes reconstruction errors ("auto": bfloat16
#: where the CPU computes it natively, else float32; decided at fit and kept with the fitted detector).
RECONSTRUCTION_PRECISIONS = ("auto", "float32", "bfloat16")
#: The value bin of each uint8 pixel value, uint8 [256].
_VALUE_BIN = np.digitize(np.arange(256) / 255.0, RARITY_BIN_EDGES).astype(np.uint8)


def pixel_statistics(images: torch.Tensor, detail: bool = False) -> np.ndarray:
    """Four statistics per image, float [N, 4], on the [0, 1] pixel scale: mean, standard deviation, share of
    pixels brighter than 0.5, and mean absolute difference between horizontal and vertical neighbours. With
    `detail`, three more, [N, 7]: the mean absolute 4-neighbour Laplacian of the interior (second-order detail,
    which blur removes and pixel shuffles, noise and marks add), and the shares of pixels at most 1 and at least 254
    of 255 (clipped dark and bright, as exposure shifts leave them)."""
    x = to_float(images)
    flat = x.flatten(1)
    vertical = x[..., 1:, :] - x[..., :-1, :]
    horizontal = x[..., :, 1:] - x[..., :, :-1]
    extra = []
    if detail:  # the Laplacian from the first differences, before they turn absolute
        laplacian = (horizontal[..., 1:-1, 1:] - horizontal[..., 1:-1, :-1]) + (vertical[..., 1:, 1:-1] - vertical[..., :-1, 1:-1])
        raw = images.flatten(1)
        extra = [laplacian.abs_().flatten(1).mean(1), (raw <= 1).sum(1, dtype=torch.int32) / raw.shape[1],
                 (raw >= 254).sum(1, dtype=torch.int32) / raw.shape[1]]
    vertical, horizontal = vertical.abs_().flatten(1), horizontal.abs_().flatten(1)
    neighbour_mean = (vertical.sum(1) + horizontal.sum(1)) / (vertical.shape[1] + horizontal.shape[1])
    mean = flat.mean(1)
    # sample variance from the two moments: ten times faster than Tensor.std here, exact enough on [0, 1] pixels
    variance = (flat.square().sum(1) - flat.shape[1] * mean.square()) / (flat.shape[1] - 1)
    stats = torch.stack([mean, variance.clamp_min(0).sqrt(), (flat > 0.5).float().mean(1), neighbour_mean, *extra], dim=1)
    return stats.numpy().astype(np.float64)


class PixelRarity:
    """How surprising each pixel value is where it sits: per-position histograms of clean pixel values.

    `bin_surprise` [bins, positions] holds -log p (nats) of each value bin at each position (C * H * W of them),
    estimated from clean images with half a count added per bin (so an empty bin costs about log(2 N) nats for N
    images). An image's rarity is the mean surprise of its RARE_PIXELS least probable pixels: local marks the
    autoencoder smooths over and global statistics average away (a few grey blobs on the background, a stray
    line) make it large, as does content where clean images never have any.
    """

    def __init__(self, bin_surprise: np.ndarray) -> None:
        self.bin_surprise = np.asarray(bin_surprise, dtype=np.float64)
        #: surprise of every uint8 value [256, positions], looked up per pixel by `score`
        self._lookup = torch.from_numpy(self.bin_surprise[_VALUE_BIN].astype(np.float32))

    @classmethod
    def fit(cls, images: torch.Tensor) -> "PixelRarity":
        """From clean uint8 images [N, C, H, W]."""
        flat = images.flatten(1).numpy()
        value_bins = _VALUE_BIN[flat]
        bins = len(RARITY_BIN_EDGES) + 1
        counts = np.stack([(value_bins == b).sum(axis=0) for b in range(bins)])
        return cls(-np.log((counts + 0.5) / (len(flat) + 0.5 * bins)))

    def score(self, images: torch.Tensor) -> np.ndarray:
        """Mean surprise (nats) of each image's RARE_PIXELS least probable pixels, float [N]; uint8 [N, C, H, W]."""
        flat = images.flatten(1)
        if flat.shape[1] != self._lookup.shape[1]:
            raise ValueError(f"images have {flat.shape[1]} pixels, the rarity histograms {self._lookup.shape[1]}")
        surprise = self._lookup.gather(0, flat.long())
        return surprise.topk(min(RARE_PIXELS, flat.shape[1]), dim=1).values.mean(dim=1).double().numpy()


class LocalError:
    """Where an image's reconstruction fails, against where clean images' does: per-position median and robust
    scale (1.4826 MAD, at least `LOCAL_ERROR_FLOOR`) of clean squared reconstruction errors [H, W] (summed over
    channels). An image's score is log(1 + m), m the mean of its RARE_PIXELS largest standardised errors (at
    least 0): a mark the autoencoder does not reproduce stands out where clean images reconstruct well, while edges
    that always reconstruct badly do not. Unlike `PixelRarity` it needs no rare value, so it sees grey blobs on
    colour images, where every value is common at every position."""

    def __init__(self, location: np.ndarray, scale: np.ndarray) -> None:
        self.location = np.asarray(location, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float32)
        self._location, self._scale = torch.from_numpy(self.location), torch.from_numpy(self.scale)

    @classmethod
    def fit(cls, error_maps: torch.Tensor) -> "LocalError":
        """From clean images' error maps [N, H, W] (`Autoencoder.embed_with_error_maps`)."""
        median, scale = _robust_location_scale(error_maps.numpy().astype(np.float64))
        return cls(median, np.maximum(scale, LOCAL_ERROR_FLOOR))

    def score(self, error_maps: torch.Tensor) -> np.ndarray:
        """log(1 + mean of the RARE_PIXELS largest standardised errors), float [N]; error maps [N, H, W]."""
        if error_maps.shape[1:] != self._location.shape:
            raise ValueError(
                f"error maps are {tuple(error_maps.shape[1:])}, the clean local errors {tuple(self._location.shape)}"
            )
        standardised = ((error_maps.float() - self._location) / self._scale).flatten(1)
        worst = standardised.topk(min(RARE_PIXELS, standardised.shape[1]), dim=1).values.mean(dim=1)
        return torch.log1p(worst.clamp_min(0)).double().numpy()


def default_components(channels: int) -> tuple[str, ...]:
    """The components a detector scores by default for images of `channels` channels: all of COMPONENTS for colour,
    without COLOUR_ONLY_COMPONENTS for grey."""
    return COMPONENTS if channels > 1 else tuple(c for c in COMPONENTS if c not in COLOUR_ONLY_COMPONENTS)


def _pixel_shape_features(pixels: np.ndarray) -> np.ndarray:
    """Pixel statistics [N, 4] (or [N, 7] with their detail) on scales where clean images are roughly
    Gaussian, plus the contrast ratio, [N, 5] (or [N, 8]). The detail statistics enter as the sharpness ratio
    (second- against first-order detail) and the square roots of the clipped shares. On 32x32 colour images the
    mildest glass blur moves the sharpness ratio by 2.6 clean standard deviations and the mildest brightening the
    bright clipped share by 5, where the first four statistics see less than 1."""
    mean, std, bright, neighbour = pixels.T[:4]
    columns = [mean, std, np.sqrt(bright), np.log(neighbour + 1e-3), neighbour / (std + 1e-3)]
    if pixels.shape[1] > 4:
        detail, dark, clipped = pixels.T[4:]
        columns += [np.log(detail + 1e-3) - np.log(neighbour + 1e-3), np.sqrt(dark), np.sqrt(clipped)]
    return np.stack(columns, axis=1)


def _mahalanobis_squared(points: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distances [N] of `points` [N, D]. Computed by torch, not numpy: numpy's matmul hands even
    these small products to OpenBLAS threads, which then contend with torch's for the cores for the rest of the
    process (docs/decisions/0005-inference-speed.md)."""
    centred = torch.from_numpy(np.ascontiguousarray(points - mean, dtype=np.float64))
    return ((centred @ torch.from_numpy(np.asarray(precision, dtype=np.float64))) * centred).sum(dim=1).numpy()


@dataclass(frozen=True)
class CleanReference:
    """What a batch is compared with: clean signal means [F], mean sample score, per-view sample-score quantiles
    [1 + components] (a view's threshold for "strange")."""

    signal_mean: np.ndarray
    score_mean: float
    view_thresholds: np.ndarray

    @classmethod
    def of(cls, signals: np.ndarray, views: np.ndarray, sample_fpr: float) -> "CleanReference":
        """From clean images' mean-shift signals [N, F] and views [N, V] (the sample score first)."""
        return cls(signals.mean(axis=0), float(views[:, 0].mean()), np.quantile(views, 1.0 - sample_fpr, axis=0))


@dataclass(frozen=True)
class _BatchTest:
    """What the batch statistic derives from the calibration features: the images' signals [N, F] and views [N, V]
    (which the null resamples), the fixed scales (signal standard deviations, Ledoit-Wolf precision of the
    standardised signals, the sample scores' standard deviation) and the calibration images' own reference."""

    signals: np.ndarray
    views: np.ndarray
    signal_scale: np.ndarray
    signal_precision: np.ndarray
    score_scale: float
    reference: CleanReference


def _mean_shift_signals(features: Features) -> np.ndarray:
    """Per-image signals whose batch mean the mean-shift view tests: raw components and pixel statistics, the
    latent vector, then the log class probabilities when the detector has `prediction_shift`, float [N, F]."""
    prediction = [features["prediction"]] if "prediction" in features else []
    return np.concatenate([features["signals"], features["latent"], *prediction], axis=1)


def chi_square_z(chi_square: float, df: int) -> float:
    """The standard normal quantile with the upper-tail probability of `chi_square` on `df` degrees of freedom. Where
    that probability underflows (below 1e-300) it is taken in logs, from the incomplete gamma function's asymptotic
    expansion beyond the range of `chi2.logsf`, so the z-score keeps growing with the shift: a floored probability
    made every strong shift 37.05, and a filter's drift evidence (`scanflow.improve.promotion.DriftEvidence`) then
    compared two floors."""
    p_value = stats.chi2.sf(chi_square, df)
    if p_value > 1e-300:
        return float(stats.norm.isf(p_value))
    log_p = stats.chi2.logsf(chi_square, df)
    if not np.isfinite(log_p):
        s, y = df / 2, chi_square / 2
        log_p = (s - 1) * np.log(y) - y - special.gammaln(s) + np.log1p((s - 1) / y)
    return float(-special.ndtri_exp(log_p))


def _decoder_dtype(precision: str) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if native_bfloat16() else torch.float32
    return getattr(torch, precision)


def _robust_location_scale(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    median = np.median(values, axis=0)
    mad = np.median(np.abs(values - median), axis=0) * _MAD_TO_SD
    return median, np.maximum(mad, 1e-6)


class AutoencoderDetector(Detector):
    """Drift from the champion's own models: autoencoder reconstruction and latent distance, classifier
    uncertainty and pixel statistics, combined per image and tested per batch (see the module docstring)."""

    name = "scanflow-autoencoder"

    def __init__(
        self,
        classifier: Classifier,
        autoencoder: Autoencoder,
        components: tuple[str, ...] | None = None,
        reconstruction_precision: str = "auto",
        two_sided: tuple[str, ...] = TWO_SIDED_COMPONENTS,
        prediction_shift: bool = True,
        extended_pixels: bool = True,
        **kwargs: Any,
    ) -> None:
        """`components`: the component scores of the sample score (`COMPONENTS`, `OPTIONAL_COMPONENTS`); default
        `default_components` of the reference images' channels, decided at `fit`.
        `prediction_shift`: also test the batch mean of the classifier's log class probabilities (for models of
        at most `MAX_PREDICTION_CLASSES` classes), as black-box shift detection does: a corruption that moves the
        model's answers counts even where the autoencoder's reconstruction misses it (blur reconstructs well).
        A batch whose class mix differs from the reference's moves it too.
        `extended_pixels`: add the detail statistics (`pixel_statistics(detail=True)`) to the mean-shift signals
        and the `pixels` component: blur and pixel shuffles that the autoencoder reconstructs well still change
        the sharpness ratio, and brightening that it reconstructs well still clips pixels.
        `two_sided`: the components scored by their distance from clean in either direction (default
        `TWO_SIDED_COMPONENTS`); raises ValueError for a name outside `components`' choices.
        `reconstruction_precision`: the decoder's precision for the reconstruction errors (see
        `RECONSTRUCTION_PRECISIONS`). bfloat16 is faster on a CPU with native bfloat16 and moves the errors by
        0.2 % on average; the latent vectors stay float32. The fitted detector keeps the precision it was fitted
        with, so its scores stay comparable with its calibration on whatever machine loads it; on a CPU without
        native bfloat16 that pass is emulated and slower (docs/decisions/0005-inference-speed.md)."""
        super().__init__(**kwargs)
        unknown = set(components or ()) - set(COMPONENTS + OPTIONAL_COMPONENTS)
        if unknown or (components is not None and len(components) == 0):
            raise ValueError(f"components must be a non-empty subset of {COMPONENTS + OPTIONAL_COMPONENTS}, got {components}")
        if reconstruction_precision not in RECONSTRUCTION_PRECISIONS:
            raise ValueError(
                f"reconstruction_precision must be one of {RECONSTRUCTION_PRECISIONS}, got {reconstruction_precision!r}"
            )
        if set(two_sided) - set(COMPONENTS + OPTIONAL_COMPONENTS):
            raise ValueError(f"two_sided must name components of {COMPONENTS + OPTIONAL_COMPONENTS}, got {two_sided}")
        self.reconstruction_precision = reconstruction_precision
        self.two_sided = tuple(two_sided)
        self.prediction_shift = prediction_shift
        self.extended_pixels = extended_pixels
        self.classifier = classifier.eval()
        self.autoencoder = autoencoder.eval()
        self._requested_components = None if components is None else tuple(components)
        #: The components scored; None until `fit` decides the default.
        self.components: tuple[str, ...] | None = self._requested_components
        self._latent_mean: np.ndarray | None = None
        self._latent_precision: np.ndarray | None = None
        self._pixel_mean: np.ndarray | None = None
        self._pixel_precision: np.ndarray | None = None
        self._embedding_mean: np.ndarray | None = None
        self._embedding_precision: np.ndarray | None = None
        self._component_location: np.ndarray | None = None
        self._component_scale: np.ndarray | None = None
        self._rarity: PixelRarity | None = None
        self._local_error: LocalError | None = None
        self._decoder_dtype = torch.float32
        self._report_reference: Features | None = None
        self._batch_test: _BatchTest | None = None

    # ------------------------------------------------------------------------------------------- hooks
    def _fit(self, reference: torch.Tensor) -> None:
        self._batch_test = None
        self.components = self._requested_components or default_components(reference.shape[1])
        self._decoder_dtype = _decoder_dtype(self.reconstruction_precision)
        encoded = self._encode(reference)
        covariance = LedoitWolf().fit(encoded[0].numpy().astype(np.float64))
        self._latent_mean = covariance.location_
        self._latent_precision = covariance.precision_
        pixel_covariance = LedoitWolf().fit(_pixel_shape_features(self._pixel_statistics(reference)))
        self._pixel_mean, self._pixel_precision = pixel_covariance.location_, pixel_covariance.precision_
        self._rarity = PixelRarity.fit(reference)
        if "local_error" in self.components:
            self._local_error = LocalError.fit(encoded[2])
        if "embedding" in self.components:
            embedding = LedoitWolf().fit(self._embedding(reference))
            self._embedding_mean, self._embedding_precision = embedding.location_, embedding.precision_
        _, raw, _ = self._raw_components(reference, encoded=encoded)
        self._component_location, self._component_scale = _robust_location_scale(raw)
        rows = np.sort(np.random.default_rng(self.seed).permutation(len(reference))[:REPORT_REFERENCE_ROWS])
        self._report_reference = self.report_features(reference[rows])

    def _features(self, images: torch.Tensor, probabilities: np.ndarray | None = None) -> Features:
        if probabilities is None and (self.prediction_shift or "uncertainty" in self.components):
            probabilities = self.classifier.predict_proba(images).numpy()  # once, for both uses
        predicting = self.prediction_shift and np.shape(probabilities)[1] <= MAX_PREDICTION_CLASSES
        latent, raw, pixels = self._raw_components(images, probabilities)
        standardised = (raw - self._component_location) / self._component_scale
        two_sided = [i for i, c in enumerate(self.components) if c in self.two_sided]
        standardised[:, two_sided] = np.abs(standardised[:, two_sided])
        features = {
            "latent": latent,
            "components": standardised,
            "signals": np.concatenate([raw, pixels], axis=1),
            "sample_scores": standardised.mean(axis=1),
        }
        if predicting:
            features["prediction"] = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _PROBABILITY_FLOOR, 1.0))
        return features

    def _statistic(self, features: Features, clean: CleanReference | None = None) -> float:
        """`clean`: what the batch is compared with; default the calibration images' (`_null_statistic` passes a
        bootstrap resample's)."""
        test = self._batch_test_model()
        clean = clean or test.reference
        scores = features["sample_scores"]
        n = len(scores)
        shift = (_mean_shift_signals(features).mean(axis=0) - clean.signal_mean) / test.signal_scale
        chi_square = n * float(shift @ test.signal_precision @ shift)
        mean_shift = chi_square_z(chi_square, len(shift))
        score_shift = (scores.mean() - clean.score_mean) / (test.score_scale / np.sqrt(n) + _EPS)
        q = self.sample_fpr
        views = np.column_stack([scores, features["components"]])
        exceed = np.sum(views > clean.view_thresholds, axis=0)
        excess = (float(exceed.max()) - n * q) / np.sqrt(n * q * (1 - q))
        return float(max(mean_shift, score_shift, excess) + TIE_BREAK * stats.norm.cdf(score_shift))

    def _null_statistic(self, window: Features, rng: np.random.Generator) -> float:
        """The statistic against a bootstrap resample of the calibration images. Every production batch is compared
        with the same calibration estimates (means, per-view quantiles), whose own error (variance 1/N of an
        image's, N calibration images) adds to the batch's (1/n); windows drawn from those very images lack it,
        and the mean-shift view, summing 20-30 squared shifts, turned that into false alarms: 12 % at n = 200 on
        MNIST (N = 1,000) with the plain null, against alpha = 5 %."""
        test = self._batch_test_model()
        rows = rng.integers(0, len(test.signals), len(test.signals))
        return self._statistic(window, CleanReference.of(test.signals[rows], test.views[rows], self.sample_fpr))

    def _batch_test_model(self) -> _BatchTest:
        """`_BatchTest` of the calibration features; computed on first use (also after `load`), reset by `fit`."""
        if self._batch_test is None:
            calibration = self._require_fitted()
            signals = _mean_shift_signals(calibration)
            views = np.column_stack([calibration["sample_scores"], calibration["components"]])
            scale = signals.std(axis=0) + _EPS
            precision = LedoitWolf().fit((signals - signals.mean(axis=0)) / scale).precision_
            reference = CleanReference.of(signals, views, self.sample_fpr)
            self._batch_test = _BatchTest(signals, views, scale, precision, float(views[:, 0].std()), reference)
        return self._batch_test

    def _details(self, features: Features) -> dict[str, Any]:
        """Component means, and per component that tells a kind of change (KIND_COMPONENTS) the share of images
        it is the largest of those for (`scanflow.human.policy_action` votes with it)."""
        components = features["components"]
        kinds = self._kind_columns()
        strongest = np.asarray(kinds)[components[:, kinds].argmax(axis=1)] if kinds else np.array([], dtype=int)
        return {
            "components": list(self.components),
            "component_means": {c: float(components[:, i].mean()) for i, c in enumerate(self.components)},
            "strongest_component_share": {self.components[i]: float(np.mean(strongest == i)) for i in kinds},
        }

    def _kind_columns(self) -> list[int]:
        """Positions of the KIND_COMPONENTS among this detector's components."""
        return [i for i, c in enumerate(self.components) if c in KIND_COMPONENTS]

    def signature_of(self, features: Features) -> np.ndarray:
        """The log-scale scores of the KIND_COMPONENTS and the raw pixel statistics, each in clean standard
        deviations from its clean calibration mean, float [N, F]. Rarity and local error are left out: they add no
        kind of change, only noise to the comparison (see `scanflow.drift.known`)."""
        columns = self._kind_columns() + list(range(len(self.components), features["signals"].shape[1]))
        clean = self._require_fitted()["signals"][:, columns]
        return (features["signals"][:, columns] - clean.mean(axis=0)) / (clean.std(axis=0) + _EPS)

    def report_features(self, images: torch.Tensor) -> Features:
        """Latent vectors "z" [N, D] and softmax outputs "p" [N, K]: the columns of the human-facing report."""
        return {
            "z": self.autoencoder.embed(images).numpy().astype(np.float64),
            "p": self.classifier.predict_proba(images).numpy().astype(np.float64),
        }

    def reference_report_features(self) -> Features:
        """`report_features` of a seeded sample of the reference images (kept from `fit`)."""
        self._require_fitted()
        return self._report_reference

    def _state(self) -> dict[str, Any]:
        return {
            "report_reference": self._report_reference,
            # A model Scanflow did not train (`scanflow.adopt`) is not stored: its registry entry loads it.
            "classifier": self.classifier if isinstance(self.classifier, Classifier) else None,
            "autoencoder": self.autoencoder,
            "components": self.components,
            "two_sided": self.two_sided,
            "prediction_shift": self.prediction_shift,
            "extended_pixels": self.extended_pixels,
            "latent_mean": self._latent_mean,
            "latent_precision": self._latent_precision,
            "pixel_mean": self._pixel_mean,
            "pixel_precision": self._pixel_precision,
            "component_location": self._component_location,
            "component_scale": self._component_scale,
            "pixel_rarity": None if self._rarity is None else self._rarity.bin_surprise,
            "local_error": None if self._local_error is None else (self._local_error.location, self._local_error.scale),
            "embedding_mean": self._embedding_mean,
            "embedding_precision": self._embedding_precision,
            "decoder_dtype": str(self._decoder_dtype).removeprefix("torch."),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self._batch_test = None
        self._report_reference = state["report_reference"]
        self.classifier = None if state["classifier"] is None else state["classifier"].eval()
        self.autoencoder = state["autoencoder"].eval()
        self.components = self._requested_components = tuple(state["components"])
        self.two_sided = tuple(state.get("two_sided", TWO_SIDED_COMPONENTS))  # absent before the choice existed
        self.prediction_shift = bool(state.get("prediction_shift", False))  # detectors saved before it lack it
        self.extended_pixels = bool(state.get("extended_pixels", False))  # as do those saved before these statistics
        self._latent_mean = state["latent_mean"]
        self._latent_precision = state["latent_precision"]
        self._pixel_mean = state["pixel_mean"]
        self._pixel_precision = state["pixel_precision"]
        self._component_location = state["component_location"]
        self._component_scale = state["component_scale"]
        rarity = state.get("pixel_rarity")  # absent from detectors saved before the component existed
        self._rarity = None if rarity is None else PixelRarity(rarity)
        local_error = state.get("local_error")  # absent from detectors saved before the component existed
        self._local_error = None if local_error is None else LocalError(*local_error)
        self._embedding_mean = state.get("embedding_mean")
        self._embedding_precision = state.get("embedding_precision")
        # Detectors saved before the choice existed computed their errors in float32.
        self.reconstruction_precision = state.get("decoder_dtype", "float32")
        self._decoder_dtype = getattr(torch, self.reconstruction_precision)

    # --------------------------------------------------------------------------------------- internals
    def _raw_components(
        self,
        images: torch.Tensor,
        probabilities: np.ndarray | None = None,
        encoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Latent vectors [N, D]; log-scale component scores [N, len(components)] before standardisation; raw
        pixel statistics [N, 4] (or [N, 7] with `extended_pixels`). `encoded` is `_encode`'s output when already
        computed."""
        if encoded is None:
            encoded = self._encode(images)
        latent_tensor, error, error_maps = encoded
        latent = latent_tensor.numpy().astype(np.float64)
        pixels = self._pixel_statistics(images)
        columns = {
            "reconstruction": lambda: np.log(error.numpy().astype(np.float64) + _EPS),
            "latent": lambda: np.log(_mahalanobis_squared(latent, self._latent_mean, self._latent_precision) + _EPS),
            "uncertainty": lambda: np.log(-np.log(np.clip(self._top_probability(images, probabilities), _EPS, 1.0)) + 1e-6),
            "pixels": lambda: np.log(_mahalanobis_squared(_pixel_shape_features(pixels), self._pixel_mean, self._pixel_precision) + 1e-6),
            "rarity": lambda: self._rarity.score(images),
            "local_error": lambda: self._local_error.score(error_maps),
            "embedding": lambda: np.log(_mahalanobis_squared(self._embedding(images), self._embedding_mean, self._embedding_precision) + _EPS),
        }
        return latent, np.stack([columns[c]() for c in self.components], axis=1), pixels

    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The autoencoder's latent vectors, errors and, when `local_error` is a component, error maps."""
        if "local_error" in self.components:
            return self.autoencoder.embed_with_error_maps(images, decoder_dtype=self._decoder_dtype)
        return (*self.autoencoder.embed_with_error(images, decoder_dtype=self._decoder_dtype), None)

    def _pixel_statistics(self, images: torch.Tensor) -> np.ndarray:
        """`pixel_statistics`, with their detail when the detector has `extended_pixels`, float [N, 4 or 7]."""
        return pixel_statistics(images, detail=self.extended_pixels)

    def _embedding(self, images: torch.Tensor) -> np.ndarray:
        """The classifier's hidden features of `images`, float64 [N, D]."""
        return self.classifier.embed_and_predict_proba(images)[0].numpy().astype(np.float64)

    def _top_probability(self, images: torch.Tensor, probabilities: np.ndarray | None) -> np.ndarray:
        if probabilities is None:
            probabilities = self.classifier.predict_proba(images).numpy()
        return probabilities.max(axis=1).astype(np.float64)


#: Reference images the detector is fitted on, at most: the latent covariance and robust scales are stable well
#: before this, and fitting stays a few seconds.
MAX_REFERENCE = 10_000


def fit_detector(
    classifier: Classifier,
    autoencoder: Autoencoder,
    reference: LabeledImages,
    calibration: LabeledImages,
    seed: int = 0,
    **kwargs: Any,
) -> AutoencoderDetector:
    """Fit Scanflow's detector for freshly trained models: reference = (a seeded subset of) their training
    images, calibration = clean images they never saw."""
    rows = np.random.default_rng(seed).permutation(len(reference))[:MAX_REFERENCE]
    detector = AutoencoderDetector(classifier, autoencoder, seed=seed, **kwargs)
    return detector.fit(reference.images[np.sort(rows)], calibration=calibration.images, info=reference.info)

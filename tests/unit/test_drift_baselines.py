"""Behavioural tests of the published drift baselines on real data (scikit-learn's 8x8 digits).

The models are trained on 1,000 training images; the detectors are fitted on the other 438 (images the models
never saw, as in deployment), calibrated on 180 test images and judged on windows of the remaining 179.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.stats import ks_2samp, kstwobign

from scanflow.corruptions import corrupt
from scanflow.data import LabeledImages
from scanflow.drift.base import Detector
from scanflow.drift.baselines import (
    MAX_PERMUTATIONS,
    BBSDDetector,
    MMDDetector,
    PixelStatsDetector,
    QuotaDetector,
    ks_pvalues,
    pixel_statistics,
    published_quota_flags,
)
from scanflow.errors import InvalidBatchError
from scanflow.models import Autoencoder, Classifier
from scanflow.train import TrainConfig, train_autoencoder, train_classifier

MODEL_IMAGES = 1000
CALIBRATION_IMAGES = 180
WINDOW = 50
DETECTORS = ("quota", "bbsd", "mmd", "pixel_stats")


@dataclass(frozen=True)
class Split:
    models: LabeledImages
    reference: torch.Tensor
    calibration: torch.Tensor
    pool: torch.Tensor


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these models are tiny, and thread hand-offs dominate on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def split(digits) -> Split:
    train, test = digits
    return Split(
        models=train.subset(range(MODEL_IMAGES)),
        reference=train.images[MODEL_IMAGES:],
        calibration=test.images[:CALIBRATION_IMAGES],
        pool=test.images[CALIBRATION_IMAGES:],
    )


@pytest.fixture(scope="module")
def models(split) -> tuple[Classifier, Autoencoder]:
    config = TrainConfig(epochs=8, batch_size=64, learning_rate=5e-3, max_shift_px=0, threads=1)
    classifier, _ = train_classifier(split.models, config, progress=False)
    autoencoder, _ = train_autoencoder(split.models, TrainConfig(epochs=6, threads=1), latent_dim=8, progress=False)
    return classifier, autoencoder


def build(name: str, models: tuple[Classifier, Autoencoder], **kwargs) -> Detector:
    classifier, autoencoder = models
    if name == "quota":
        kwargs.pop("max_reference", None)
        return QuotaDetector(autoencoder, **kwargs)
    if name == "bbsd":
        return BBSDDetector(classifier, **kwargs)
    if name == "mmd":
        spec = classifier.spec
        return MMDDetector.untrained_autoencoder((spec.channels, spec.height, spec.width), **kwargs)
    return PixelStatsDetector(**kwargs)


@pytest.fixture(scope="module")
def fitted(split, models) -> dict[str, Detector]:
    return {name: build(name, models).fit(split.reference, calibration=split.calibration) for name in DETECTORS}


def window(images: torch.Tensor, seed: int, n: int = WINDOW) -> torch.Tensor:
    rows = np.random.default_rng(seed).choice(len(images), n, replace=False)
    return images[torch.from_numpy(rows)]


@pytest.mark.parametrize("name", DETECTORS)
def test_clean_windows_pass_and_strongly_corrupted_windows_drift(fitted, split, name):
    detector = fitted[name]
    clean = [detector.predict(window(split.pool, seed)) for seed in range(10)]
    assert sum(result.is_drift for result in clean) <= 2
    assert np.median([result.p_value for result in clean]) > 0.1
    for corruption in ("impulse_noise", "brightness"):
        result = detector.predict(corrupt(window(split.pool, 0), corruption, severity=5, seed=0))
        assert result.is_drift, corruption
        assert result.p_value <= 0.05
        assert result.statistic > result.threshold
        assert result.detector == name and result.n == WINDOW


@pytest.mark.parametrize("name", DETECTORS)
def test_sample_scores_are_higher_on_corrupted_images(fitted, split, name):
    detector = fitted[name]
    clean = window(split.pool, 1)
    noisy = corrupt(clean, "impulse_noise", severity=5, seed=0)
    clean_scores, noisy_scores = detector.score(clean), detector.score(noisy)
    assert clean_scores.shape == noisy_scores.shape == (WINDOW,)
    assert noisy_scores.mean() > clean_scores.mean()
    result = detector.predict(noisy)
    ranked = result.sample_scores[list(result.critical_indices)]
    assert np.all(np.diff(ranked) <= 0) and np.all(ranked > result.sample_threshold)


def test_published_quota_rule_flags_a_tenth_of_any_batch(fitted, split, models):
    _, autoencoder = models
    clean = window(split.pool, 2, n=100)
    for batch in (clean, corrupt(clean, "impulse_noise", severity=5, seed=0), corrupt(clean, "brightness", 5, 0)):
        flags = published_quota_flags(autoencoder.reconstruction_error(batch))
        assert flags.dtype == bool and flags.shape == (100,)
        assert flags.mean() == pytest.approx(0.10)
    assert published_quota_flags(np.linspace(0.0, 1.0, 50)).mean() == pytest.approx(0.12)
    assert not published_quota_flags(np.full(30, 0.2)).any()

    detector = fitted["quota"]
    clean_result = detector.predict(window(split.pool, 3))
    drift_result = detector.predict(corrupt(window(split.pool, 3), "impulse_noise", severity=5, seed=0))
    published_shares = [r.details["published_flagged_share"] for r in (clean_result, drift_result)]
    assert published_shares == [pytest.approx(0.12)] * 2
    assert drift_result.statistic > 3 * clean_result.statistic


@pytest.mark.parametrize("name", DETECTORS)
def test_save_and_load_round_trip_gives_identical_predictions(fitted, split, name, tmp_path):
    detector = fitted[name]
    loaded = Detector.load(detector.save(tmp_path / f"{name}.pt"))
    assert type(loaded) is type(detector)
    for batch in (window(split.pool, 4, n=40), corrupt(window(split.pool, 4, n=40), "rotate", severity=5, seed=0)):
        expected, actual = detector.predict(batch), loaded.predict(batch)
        np.testing.assert_array_equal(actual.sample_scores, expected.sample_scores)
        assert actual.to_dict() == expected.to_dict()


@pytest.mark.parametrize("name", DETECTORS)
def test_same_seed_gives_the_same_detector(split, models, name):
    results = []
    for _ in range(2):
        detector = build(name, models, max_reference=200, calibration_windows=100, seed=3)
        detector.fit(split.reference, calibration=split.calibration)
        results.append(detector.predict(window(split.pool, 5)).to_dict())
    assert results[0] == results[1]


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (1, 30, 30), (3, 9, 13)])
def test_any_image_size_of_at_least_8x8_and_1_or_3_channels(shape):
    generator = torch.Generator().manual_seed(0)
    reference = torch.randint(0, 200, (60, *shape), dtype=torch.uint8, generator=generator)
    batch = torch.randint(0, 256, (7, *shape), dtype=torch.uint8, generator=generator)
    detectors = [
        QuotaDetector(Autoencoder(*shape, latent_dim=4), calibration_windows=50),
        BBSDDetector(Classifier(*shape, n_classes=3), calibration_windows=50),
        MMDDetector.untrained_autoencoder(shape, latent_dim=4, calibration_windows=50),
        PixelStatsDetector(calibration_windows=50),
    ]
    for detector in detectors:
        result = detector.fit(reference).predict(batch)
        assert result.n == 7 and result.sample_scores.shape == (7,)
        assert np.isfinite(result.statistic) and 0 < result.p_value <= 1


def test_a_batch_of_another_image_size_is_rejected_by_the_model(models):
    classifier, _ = models
    with pytest.raises(InvalidBatchError, match=r"built for images of shape \[1, 8, 8\]"):
        BBSDDetector(classifier).fit(torch.zeros(60, 1, 16, 16, dtype=torch.uint8))


def test_ks_pvalues_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    batch, reference = rng.random((40, 3)), rng.random((300, 3))
    batch[:, 0], reference[:, 0] = np.round(batch[:, 0], 1), np.round(reference[:, 0], 1)
    reference[:, 2] += 0.2
    effective = np.sqrt(40 * 300 / 340)
    expected = [kstwobign.sf(effective * ks_2samp(batch[:, k], reference[:, k]).statistic) for k in range(3)]
    np.testing.assert_allclose(ks_pvalues(batch, reference), expected, rtol=1e-12)


def test_bbsd_statistic_is_minus_log10_of_bonferroni_corrected_per_class_ks(fitted, split, models):
    classifier, _ = models
    detector = fitted["bbsd"]
    batch = corrupt(window(split.pool, 6), "shear", severity=3, seed=0)
    softmax = classifier.predict_proba(batch).double().numpy()
    reference = detector.reference
    effective = np.sqrt(WINDOW * len(reference) / (WINDOW + len(reference)))
    pvalues = [kstwobign.sf(effective * ks_2samp(softmax[:, k], reference[:, k]).statistic) for k in range(10)]
    corrected = min(1.0, 10 * min(pvalues))
    result = detector.predict(batch)
    assert result.statistic == pytest.approx(-np.log10(corrected), rel=1e-9, abs=1e-12)
    assert result.details["bonferroni_p"] == pytest.approx(corrected, rel=1e-9)
    np.testing.assert_allclose(result.sample_scores, 1.0 - softmax.max(axis=1), rtol=1e-12)


def test_pixel_statistics_are_on_the_unit_pixel_scale():
    checkerboard = ((np.indices((8, 8)).sum(axis=0) % 2) * 255).astype(np.uint8)
    images = torch.from_numpy(np.stack([checkerboard, np.zeros((8, 8), np.uint8)]))[:, None]
    np.testing.assert_allclose(pixel_statistics(images), [[0.5, 0.5, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]])


def test_mmd_statistic_is_the_unbiased_mmd2_with_the_median_bandwidth(fitted, split):
    detector = fitted["mmd"]
    batch = window(split.pool, 7)
    x = detector.encoder(batch).double().numpy()
    y = detector.reference
    d2_yy = cdist(y, y, "sqeuclidean")
    assert detector.bandwidth == pytest.approx(np.median(d2_yy[~np.eye(len(y), dtype=bool)]), rel=1e-9)
    kxx, kyy = np.exp(-cdist(x, x, "sqeuclidean") / detector.bandwidth), np.exp(-d2_yy / detector.bandwidth)
    kxy = np.exp(-cdist(x, y, "sqeuclidean") / detector.bandwidth)
    n, m = len(x), len(y)
    expected = (kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1)) - 2 * kxy.mean()
    result = detector.predict(batch)
    assert result.statistic == pytest.approx(expected, rel=1e-7, abs=1e-10)
    np.testing.assert_allclose(result.sample_scores, 1 - kxy.mean(axis=1), rtol=1e-9)


def test_mmd_permutation_test_is_small_on_a_shifted_batch(fitted, split):
    detector = fitted["mmd"]
    clean = window(split.pool, 8)
    assert detector.permutation_p_value(corrupt(clean, "impulse_noise", severity=5, seed=0)) <= 1 / 100
    assert detector.permutation_p_value(clean) > 0.05
    assert detector.permutation_p_value(clean, n_permutations=50) == detector.permutation_p_value(clean, 50)
    with pytest.raises(ValueError, match="n_permutations"):
        detector.permutation_p_value(clean, n_permutations=MAX_PERMUTATIONS + 1)


def test_untrained_autoencoder_is_seeded_and_leaves_the_global_rng_alone(digits):
    _, test = digits
    state = torch.random.get_rng_state()
    first = MMDDetector.untrained_autoencoder(test.info, latent_dim=16, seed=1)
    second = MMDDetector.untrained_autoencoder((1, 8, 8), latent_dim=16, seed=1)
    other = MMDDetector.untrained_autoencoder((1, 8, 8), latent_dim=16, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    embedding = first.encoder(test.images[:20])
    assert embedding.shape == (20, 16)
    assert torch.equal(embedding, second.encoder(test.images[:20]))
    assert not torch.equal(embedding, other.encoder(test.images[:20]))
    assert first.seed == 1

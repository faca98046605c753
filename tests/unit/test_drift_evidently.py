"""Behavioural tests of the Evidently domain-classifier detector on real data (scikit-learn digits).

The models are trained on the first 1,000 training images only: the detector's reference must be images the
classifier did not see, or its softmax would look more confident on the reference than on any new clean batch.
"""

from __future__ import annotations

import importlib.metadata
import json

import numpy as np
import pytest

from scanflow.corruptions import corrupt
from scanflow.drift.base import Detector
from scanflow.drift.evidently import (
    EVIDENTLY_VERSION,
    EvidentlyDetector,
    check_evidently_version,
    domain_classifier_auc,
    domain_classifier_auc_with_method,
    drift_report,
    features_frame,
    latent_frame,
    report_dict,
    save_drift_report,
    softmax_frame,
)
from scanflow.train import TrainConfig, train_autoencoder, train_classifier

MODEL_TRAIN_IMAGES = 1000
CALIBRATION_IMAGES = 259
WINDOWS = 50


@pytest.fixture(scope="module")
def setup(digits):
    """A fitted detector, a clean window of 100 test images and the same window corrupted (impulse noise 5)."""
    train, test = digits
    model_part = train.subset(range(MODEL_TRAIN_IMAGES))
    classifier, _ = train_classifier(model_part, TrainConfig(epochs=15), progress=False)
    autoencoder, _ = train_autoencoder(model_part, TrainConfig(epochs=10), latent_dim=8, progress=False)
    detector = EvidentlyDetector(classifier, autoencoder, calibration_windows=WINDOWS, seed=0)
    detector.fit(train.images[MODEL_TRAIN_IMAGES:], calibration=test.images[:CALIBRATION_IMAGES], info=train.info)
    clean = test.images[CALIBRATION_IMAGES : CALIBRATION_IMAGES + 100]
    return detector, clean, corrupt(clean, "impulse_noise", 5, seed=0)


def _rows(features):
    return np.hstack([features["z"], features["p"]])


def test_clean_window_is_not_drift_and_a_corrupted_window_is(setup):
    detector, clean, corrupted = setup
    clean_result = detector.predict(clean)
    drift_result = detector.predict(corrupted)
    assert not clean_result.is_drift
    assert drift_result.is_drift and drift_result.p_value <= 0.05
    assert drift_result.statistic > clean_result.statistic
    assert drift_result.details["auc"] == drift_result.statistic
    assert drift_result.details["auc_method"] == "evidently-model"
    assert drift_result.details["embedding_dim"] == 8 and drift_result.details["n_classes"] == 10
    assert drift_result.detector == "evidently-domain-classifier"


def test_domain_classifier_auc_is_near_half_on_clean_rows_and_high_on_corrupted(setup, digits):
    detector, _, corrupted = setup
    reference = _rows(detector.reference_features())
    clean_auc = domain_classifier_auc(_rows(detector.features(digits[1].images)), reference)
    corrupted_auc = domain_classifier_auc(_rows(detector.features(corrupted)), reference)
    assert abs(clean_auc - 0.5) < 0.1
    assert corrupted_auc > 0.8


def test_domain_classifier_auc_is_deterministic_and_leaves_inputs_alone(setup):
    detector, _, corrupted = setup
    current, reference = _rows(detector.features(corrupted)), _rows(detector.reference_features())
    before = current.copy(), reference.copy()
    first = domain_classifier_auc(current, reference, seed=3)
    assert domain_classifier_auc(current, reference, seed=3) == first
    assert np.array_equal(current, before[0]) and np.array_equal(reference, before[1])
    assert detector.predict(corrupted).statistic == detector.predict(corrupted).statistic


def test_small_batches_get_a_calibrated_verdict(setup):
    detector, clean, _ = setup
    brightened = corrupt(clean, "brightness", 5, seed=0)
    clean_result = detector.predict(clean[:10])
    assert clean_result.n == 10 and clean_result.sample_scores.shape == (10,)
    assert 0 < clean_result.p_value <= 1 and not clean_result.is_drift
    assert clean_result.details["auc_method"] == "evidently-model"
    assert detector.predict(brightened[:10]).is_drift
    single = detector.predict(clean[:1])
    assert single.details["auc_method"] == "distance-rank" and np.isfinite(single.statistic)


def test_evidently_cannot_score_a_single_row_so_the_fallback_does(setup):
    detector, clean, _ = setup
    reference = _rows(detector.reference_features())
    auc, method = domain_classifier_auc_with_method(_rows(detector.features(clean[:1])), reference)
    assert method == "distance-rank" and 0 <= auc <= 1
    with pytest.raises(ValueError, match="same number of columns"):
        domain_classifier_auc(reference[:5, :3], reference)


def test_sample_scores_are_higher_for_strongly_shifted_images(setup):
    detector, clean, _ = setup
    brightened = corrupt(clean, "brightness", 5, seed=0)
    assert np.median(detector.score(brightened)) > np.median(detector.score(clean))
    assert np.all(detector.score(clean) >= 0)


def test_save_and_load_round_trip_gives_identical_predictions(setup, tmp_path):
    detector, clean, corrupted = setup
    loaded = Detector.load(detector.save(tmp_path / "evidently.pt"))
    assert isinstance(loaded, EvidentlyDetector)
    for batch in (clean, corrupted, clean[:10]):
        expected, actual = detector.predict(batch), loaded.predict(batch)
        assert actual.statistic == expected.statistic and actual.p_value == expected.p_value
        assert np.array_equal(actual.sample_scores, expected.sample_scores)
        assert actual.critical_indices == expected.critical_indices


def test_html_report_is_written(setup, tmp_path):
    detector, _, corrupted = setup
    target = tmp_path / "reports" / "drift.html"
    path = save_drift_report(detector.features(corrupted), detector.reference_features(), target, max_latent_columns=2)
    assert "<html" in path.read_text(encoding="utf-8")[:2000].lower()


def test_report_json_is_plain_and_names_the_drifted_columns(setup):
    detector, _, corrupted = setup
    current = features_frame(detector.features(corrupted))[["p0", "p1", "z0"]]
    reference = features_frame(detector.reference_features())[["p0", "p1", "z0"]]
    values = report_dict(drift_report(current, reference))
    json.dumps(values)
    names = [metric["metric_name"] for metric in values["metrics"]]
    assert names[0].startswith("DriftedColumnsCount")
    assert all(any(f"ValueDrift(column={column}," in name for name in names) for column in ("p0", "p1", "z0"))


def test_frames_name_latent_and_softmax_columns():
    z, p = np.zeros((3, 2)), np.full((3, 4), 0.25)
    assert list(latent_frame(z).columns) == ["z0", "z1"]
    assert list(softmax_frame(p).columns) == ["p0", "p1", "p2", "p3"]
    assert list(features_frame({"z": z, "p": p}).columns) == ["z0", "z1", "p0", "p1", "p2", "p3"]


def test_the_evidently_version_is_pinned():
    assert importlib.metadata.version("evidently") == EVIDENTLY_VERSION
    check_evidently_version(EVIDENTLY_VERSION)
    with pytest.raises(ImportError, match=r"evidently==0\.7\.23, found 0\.7\.22"):
        check_evidently_version("0.7.22")

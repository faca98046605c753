"""The one contract every drift detector passes: fit -> self, score, predict -> frozen DriftResult, calibration,
clear errors, save/load. A new detector is covered by adding its factory to DETECTOR_FACTORIES."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from scanflow.corruptions import corrupt
from scanflow.drift.autoencoder import AutoencoderDetector
from scanflow.drift.base import Detector, DriftResult
from scanflow.errors import InvalidBatchError, NotFittedError, ScanflowError
from scanflow.train import TrainConfig, train_autoencoder, train_classifier


def _baselines():
    from scanflow.drift import baselines

    return baselines


DETECTOR_FACTORIES = {
    "autoencoder": lambda clf, ae, info: AutoencoderDetector(clf, ae, calibration_windows=200),
    "evidently": lambda clf, ae, info: __import__("scanflow.drift.evidently", fromlist=["x"]).EvidentlyDetector(
        clf, ae, calibration_windows=50
    ),
    "quota": lambda clf, ae, info: _baselines().QuotaDetector(ae, calibration_windows=200),
    "bbsd": lambda clf, ae, info: _baselines().BBSDDetector(clf, calibration_windows=100),
    "mmd": lambda clf, ae, info: _baselines().MMDDetector.untrained_autoencoder(info, latent_dim=8, calibration_windows=100),
    "pixel-stats": lambda clf, ae, info: _baselines().PixelStatsDetector(calibration_windows=100),
}


@pytest.fixture(scope="module")
def models(digits):
    train, _ = digits
    classifier, _ = train_classifier(train, TrainConfig(epochs=15, seed=0), progress=False)
    autoencoder, _ = train_autoencoder(train, TrainConfig(epochs=10, seed=0), latent_dim=8, progress=False)
    return classifier, autoencoder


@pytest.fixture(scope="module", params=sorted(DETECTOR_FACTORIES))
def fitted(request, models, digits):
    train, test = digits
    classifier, autoencoder = models
    detector = DETECTOR_FACTORIES[request.param](classifier, autoencoder, train.info)
    assert detector.fit(train.images, calibration=test.images[:180], info=train.info) is detector
    return detector


@pytest.fixture()
def window(digits):
    _, test = digits
    return test.images[180:280]


def test_predict_before_fit_raises_not_fitted(models, digits):
    train, test = digits
    for name, factory in DETECTOR_FACTORIES.items():
        detector = factory(*models, train.info)
        with pytest.raises(NotFittedError, match=r"is not fitted: call fit\(reference_images\) before score/predict"):
            detector.predict(test.images[:10])
        with pytest.raises(NotFittedError):
            detector.score(test.images[:10])


def test_score_is_one_finite_float_per_image(fitted, window):
    scores = fitted.score(window)
    assert scores.shape == (len(window),) and np.isfinite(scores).all()
    assert np.array_equal(scores, fitted.score(window)), "scores must be deterministic"


def test_predict_returns_a_frozen_consistent_result(fitted, window):
    result = fitted.predict(window)
    assert isinstance(result, DriftResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.is_drift = True  # type: ignore[misc]
    assert result.n == len(window) and result.sample_scores.shape == (len(window),)
    assert 0 < result.p_value <= 1 and result.is_drift == (result.p_value <= result.alpha)
    critical = np.array(result.critical_indices, dtype=int)
    assert (result.sample_scores[critical] > result.sample_threshold).all()
    assert (np.diff(result.sample_scores[critical]) <= 0).all(), "critical samples are ranked, strangest first"
    assert int(np.sum(result.sample_scores > result.sample_threshold)) == len(critical)
    assert isinstance(result.to_dict()["sample_scores"], list)
    assessed, features = fitted.assess(window)
    assert np.array_equal(assessed.sample_scores, result.sample_scores) and assessed.statistic == result.statistic
    assert all(len(values) == len(window) for values in features.values())


def test_clean_windows_rarely_alarm_and_corrupted_ones_do(fitted, digits):
    _, test = digits
    rng = np.random.default_rng(1)
    pool = test.images[180:]
    alarms = [fitted.predict(pool[rng.choice(len(pool), 50, replace=False)]).is_drift for _ in range(20)]
    assert sum(alarms) <= 4, f"{sum(alarms)} false alarms in 20 clean windows at alpha 0.05"
    corrupted = corrupt(pool[:100], "impulse_noise", severity=5, seed=0)
    result = fitted.predict(corrupted)
    assert result.is_drift and result.p_value <= 0.05


def test_bad_batches_get_clear_errors(fitted, window):
    with pytest.raises(InvalidBatchError, match="expects images of shape"):
        fitted.predict(torch.zeros(4, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(InvalidBatchError, match="NaN"):
        fitted.predict(np.full((4, 1, 8, 8), np.nan, dtype=np.float32))
    with pytest.raises(InvalidBatchError, match="empty"):
        fitted.predict(torch.zeros(0, 1, 8, 8, dtype=torch.uint8))


def test_save_and_load_round_trip(fitted, window, tmp_path):
    loaded = Detector.load(fitted.save(tmp_path / "detector.pt"))
    assert type(loaded) is type(fitted)
    before, after = fitted.predict(window), loaded.predict(window)
    assert np.array_equal(before.sample_scores, after.sample_scores)
    assert (before.statistic, before.p_value, before.critical_indices) == (after.statistic, after.p_value, after.critical_indices)


def test_loads_of_one_file_share_their_nulls_and_a_refit_does_not(fitted, window, digits, tmp_path):
    """What makes a loop fast that loads its champion's detector for every batch: the second load of the same file
    finds the null for this batch size already drawn, and answers exactly what the first load did."""
    train, test = digits
    path = fitted.save(tmp_path / "detector.pt")
    first, second = Detector.load(path), Detector.load(path)
    batch = torch.cat([window, window[:3]])  # a window size no other test draws a null for
    assert len(batch) not in first._null
    verdict = first.predict(batch)
    assert second._null[len(batch)] is first._null[len(batch)]
    again = second.predict(batch)
    assert (again.statistic, again.p_value, again.threshold) == (verdict.statistic, verdict.p_value, verdict.threshold)
    refit = Detector.load(path).fit(train.images, calibration=test.images[:180], info=train.info)
    assert len(batch) not in refit._null and len(batch) in first._null


class _Planted:
    """What an attacker plants: unpickling it runs code (here, writes a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_is_refused_without_running_its_code(tmp_path):
    import pickle

    path, marker = tmp_path / "detector.pt", tmp_path / "planted-code-ran"
    path.write_bytes(pickle.dumps({"format_version": 3, "class": "x.Y", "state": _Planted(marker)}))
    with pytest.raises(ScanflowError, match="not a Scanflow state file.*never loaded"):
        Detector.load(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"class": "os.system"}, "not a Scanflow detector"),
        ({"class": "scanflow.drift.nowhere.Detector"}, "not a Detector"),
        ({"class": "scanflow.drift.base.DriftResult"}, "not a Detector"),
        ({"format_version": 2}, "detector format 2"),
    ],
)
def test_a_saved_detector_names_only_scanflow_detectors(fitted, tmp_path, change, message):
    from scanflow.artifacts import load_state, save_state

    path = fitted.save(tmp_path / "detector.pt")
    save_state({**load_state(path), **change}, path)
    with pytest.raises(ScanflowError, match=message):
        Detector.load(path)


def test_given_probabilities_replace_the_classifier_pass_exactly(fitted, models, window):
    classifier, _ = models
    probabilities = classifier.predict_proba(window).numpy()
    with_given, computed = fitted.predict(window, probabilities=probabilities), fitted.predict(window)
    assert np.allclose(with_given.sample_scores, computed.sample_scores)
    assert with_given.statistic == pytest.approx(computed.statistic) and with_given.is_drift == computed.is_drift
    with pytest.raises(InvalidBatchError, match=r"probabilities must be the classifier's softmax for the batch, shape \[100, K\]"):
        fitted.predict(window, probabilities=probabilities[:5])


def test_what_the_flows_use_works_for_every_detector(fitted, window, tmp_path):
    """Detection, known shifts and the Evidently report depend on the contract, not on one detector."""
    from scanflow.detect import detect_batch
    from scanflow.drift.evidently import save_drift_report

    signature = fitted.shift_signature(window)
    assert signature.ndim == 2 and len(signature) == len(window) and np.isfinite(signature).all()
    detection = detect_batch(fitted, window, "b-1", "1", budget=5)
    assert len(detection.selection.indices) <= 5
    assert [row["batch_index"] for row in detection.critical_rows()] == list(detection.selection.indices)
    assert detection.signature.shape[0] == len(window)
    # What the detect step returns survives a deployment's JSON result storage as the same typed report.
    from prefect.serializers import JSONSerializer

    from scanflow.detect import DetectionReport

    step_report = DetectionReport.of(detection, "run-1", grid_png=b"png", thumbnails=[b"a", b"b"])
    serializer = JSONSerializer()
    assert serializer.loads(serializer.dumps(step_report)) == step_report
    assert step_report.selected_indices == detection.selection.indices and step_report.n == len(window)
    assert step_report.recommended_action in step_report.actions and step_report.thumbnails_b64 == ("YQ==", "Yg==")
    assert "thumbnails_b64" not in step_report.brief() and json.loads(json.dumps(step_report.brief()))["batch_id"] == "b-1"
    report = save_drift_report(fitted.report_features(window), fitted.reference_report_features(), tmp_path / "r.html")
    assert report.stat().st_size > 10_000

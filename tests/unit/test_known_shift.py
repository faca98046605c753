"""Known shifts: the energy two-sample test (level and power), the stored record, and recognising a repeated
corruption with a real detector (digits models) while a different corruption stays a new question."""

from __future__ import annotations

import numpy as np
import pytest

from scanflow.corruptions import corrupt
from scanflow.drift.autoencoder import AutoencoderDetector
from scanflow.drift.known import KnownShift, closest_known_shift, energy_test, match_known_shift, recognise
from scanflow.errors import ScanflowError
from scanflow.train import TrainConfig, train_autoencoder, train_classifier


def test_the_energy_test_holds_its_level_and_sees_a_shift():
    rng = np.random.default_rng(0)
    same = [energy_test(rng.normal(size=(60, 5)), rng.normal(size=(60, 5)), permutations=199, seed=i) for i in range(40)]
    shifted = [energy_test(rng.normal(size=(60, 5)), rng.normal(0.6, 1.0, size=(60, 5)), permutations=199, seed=i) for i in range(10)]
    assert np.mean(np.array(same) <= 0.05) <= 0.15, same
    assert max(shifted) <= 0.01, shifted


def test_the_energy_test_names_bad_input():
    with pytest.raises(ScanflowError, match=r"the energy test needs two \[N, F\] arrays with the same F and N >= 2, got \(10, 3\) and \(10, 4\)"):
        energy_test(np.zeros((10, 3)), np.zeros((10, 4)))


def test_a_known_shift_round_trips_and_refuses_a_broken_signature():
    shift = KnownShift("batch-003", "3", "filter", "run-1", np.arange(12, dtype=float).reshape(4, 3))
    again = KnownShift.from_bytes(shift.to_bytes())
    assert (again.batch_id, again.model_version, again.decision, again.mlflow_run_id) == ("batch-003", "3", "filter", "run-1")
    assert np.array_equal(again.signature, shift.signature)
    with pytest.raises(ScanflowError, match=r"a known shift needs a finite \[N, F\] signature with N >= 2, got shape \(3,\)"):
        KnownShift("b", "1", "ignore", "r", np.zeros(3))
    with pytest.raises(ScanflowError, match="got shape"):
        KnownShift("b", "1", "ignore", "r", np.full((4, 2), np.nan))


@pytest.fixture(scope="module")
def detector(digits):
    train, test = digits
    classifier, _ = train_classifier(train, TrainConfig(epochs=15, seed=0), progress=False)
    autoencoder, _ = train_autoencoder(train, TrainConfig(epochs=10, seed=0), latent_dim=8, progress=False)
    return AutoencoderDetector(classifier, autoencoder).fit(train.images, calibration=test.images[:180], info=train.info)


def test_the_same_corruption_is_recognised_and_another_is_a_new_question(detector, digits):
    _, test = digits
    first, second = test.images[180:269], test.images[269:358]
    known = [KnownShift("batch-003", "1", "filter", "run-1", detector.shift_signature(corrupt(first, "shot_noise", 3, seed=0)))]
    assert detector.shift_signature(first).shape == (89, 11)

    repeated = match_known_shift(detector.shift_signature(corrupt(second, "shot_noise", 3, seed=1)), known, alpha=0.05)
    assert repeated is not None and repeated.shift.batch_id == "batch-003" and repeated.p_value > 0.05
    for other in ("rotate", "fog", "impulse_noise"):
        assert match_known_shift(detector.shift_signature(corrupt(second, other, 3, seed=1)), known, alpha=0.05) is None, other
    assert match_known_shift(detector.shift_signature(corrupt(second, "shot_noise", 5, seed=1)), known, alpha=0.05) is None
    assert match_known_shift(detector.shift_signature(second), known, alpha=0.05) is None
    assert match_known_shift(detector.shift_signature(second), [], alpha=0.05) is None
    closest = closest_known_shift(detector.shift_signature(corrupt(second, "fog", 3, seed=1)), known)
    assert closest is not None and closest.shift.batch_id == "batch-003" and closest.p_value <= 0.05
    assert closest_known_shift(detector.shift_signature(second), []) is None


def test_the_log_says_which_known_shift_a_batch_is_or_how_close_the_nearest_came(detector, digits):
    _, test = digits
    first, second = test.images[180:269], test.images[269:358]
    known = [KnownShift("batch-003", "1", "filter", "run-1", detector.shift_signature(corrupt(first, "shot_noise", 3, seed=0)))]
    match, message = recognise(detector.shift_signature(corrupt(second, "shot_noise", 3, seed=1)), known, 0.05, "1")
    assert match is not None and message == (f"the drift is the known shift of batch batch-003 (decided: filter; "
                                             f"p = {match.p_value:.3f} that they differ); no new question")
    fog = detector.shift_signature(corrupt(second, "fog", 3, seed=1))
    match, message = recognise(fog, known, 0.05, "1")
    p_value = closest_known_shift(fog, known).p_value
    assert match is None and message == (f"the drift differs from all 1 known shift(s) of v1 (closest: batch batch-003, "
                                         f"p = {p_value:.3f} <= alpha 0.05): a new question")
    assert recognise(fog, [], 0.05, "1") == (None, "")
    with pytest.raises(ScanflowError, match=r"^alpha must be in \(0, 1\), got 1.5$"):
        recognise(fog, known, 1.5, "1")


def test_the_signature_from_detect_features_equals_a_fresh_one(detector, digits):
    """The detect flow takes the batch's signature from the features it tested, without a second model pass."""
    _, test = digits
    images = corrupt(test.images[180:269], "shot_noise", 3, seed=0)
    _, features = detector.assess(images)
    assert np.allclose(detector.signature_of(features), detector.shift_signature(images))

"""Scanflow's own detector beyond the shared contract: the batch test uses its full alpha on small windows, the
rarity and local-error components see small local marks, the reconstruction precision is fitted state, the prediction shift sees
the classifier's answers move, the extended pixel statistics see mild blur."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from scanflow.corruptions import corrupt
from scanflow.drift.autoencoder import COMPONENTS, TIE_BREAK, AutoencoderDetector, chi_square_z
from scanflow.models import native_bfloat16
from scanflow.train import TrainConfig, train_autoencoder, train_classifier

WINDOWS = 400


@pytest.fixture(scope="module")
def detector(digits):
    train, test = digits
    classifier, _ = train_classifier(train, TrainConfig(epochs=15, seed=0), progress=False)
    autoencoder, _ = train_autoencoder(train, TrainConfig(epochs=10, seed=0), latent_dim=8, progress=False)
    fitted = AutoencoderDetector(classifier, autoencoder, calibration_windows=WINDOWS)
    return fitted.fit(train.images, calibration=test.images, info=train.info)


def _windows(detector: AutoencoderDetector, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    calibration = detector._calibration
    rng = np.random.default_rng(seed)
    rows = [rng.choice(len(calibration["sample_scores"]), n, replace=True) for _ in range(WINDOWS)]
    return [{key: values[r] for key, values in calibration.items()} for r in rows]


def test_small_clean_windows_have_no_ties_so_the_test_rejects_its_full_alpha(detector):
    """Without the tie-break the excess count made atoms in the null: at n = 10 on these digits a large share of
    clean windows shared one value and the p-value rule rejected well under alpha."""
    null = detector.null_distribution(10)
    assert len(np.unique(null)) >= 0.99 * len(null)
    own_p = (null[None, :] >= null[:, None]).sum(axis=1) / len(null)  # each window counts itself: the +1 rule
    assert detector.alpha - 0.01 <= np.mean(own_p <= detector.alpha) <= detector.alpha


def test_the_tie_break_orders_only_within_a_tie_by_the_mean_sample_score(detector):
    windows = _windows(detector, 10, seed=1)
    tied = np.array([detector._statistic(w) for w in windows])
    clean_scores = detector._calibration["sample_scores"]
    shift = np.array([(w["sample_scores"].mean() - clean_scores.mean()) / (clean_scores.std() / np.sqrt(10)) for w in windows])
    untied = tied - TIE_BREAK * stats.norm.cdf(shift)
    assert len(np.unique(np.round(untied, 9))) < 0.8 * len(untied), "the digits' count view should tie at n = 10"
    for i, j in zip(*np.triu_indices(len(windows), 1)):
        if abs(untied[i] - untied[j]) > 1e-9:
            assert (tied[i] > tied[j]) == (untied[i] > untied[j])
        elif not np.isclose(shift[i], shift[j]):
            assert (tied[i] > tied[j]) == (shift[i] > shift[j])


def test_the_null_carries_the_calibration_error_so_clean_batches_alarm_at_about_alpha(detector, digits):
    """A production batch is compared with means and quantiles estimated from N calibration images; null windows
    drawn from those same images do not see that error, and with n a third of N the plain null alarms more often
    than alpha (here 8.6 % against 2.5 % with the bootstrap null). Simulated: a population of clean images (the
    digits' test split), calibration sets of N = 120 drawn from it, clean batches of n = 40 drawn from it; the
    false-alarm rate averaged over calibration draws, with the bootstrap null (`_null_statistic`) and the plain one."""
    train, test = digits
    bootstrap_alarms, plain_alarms = [], []
    for draw in range(8):
        rng = np.random.default_rng(draw)
        calibrated = AutoencoderDetector(detector.classifier, detector.autoencoder, calibration_windows=200, seed=draw)
        calibrated.fit(train.images, calibration=test.images[np.sort(rng.permutation(len(test))[:120])], info=train.info)
        population = calibrated._features(test.images)
        batches = [{k: v[rows] for k, v in population.items()} for rows in rng.choice(len(test), (100, 40))]
        statistics = np.array([calibrated._statistic(batch) for batch in batches])
        calibration = calibrated._calibration
        plain = np.array([calibrated._statistic({k: v[rows] for k, v in calibration.items()}) for rows in rng.choice(120, (200, 40))])
        for null, alarms in ((calibrated.null_distribution(40), bootstrap_alarms), (plain, plain_alarms)):
            alarms.extend((1 + np.sum(null[None, :] >= statistics[:, None], axis=1)) / (1 + len(null)) <= calibrated.alpha)
    print(f"false alarms: bootstrap null {np.mean(bootstrap_alarms):.3f}, plain null {np.mean(plain_alarms):.3f}")
    assert np.mean(bootstrap_alarms) <= detector.alpha < np.mean(plain_alarms)


def test_the_mean_shift_z_keeps_growing_where_its_p_value_underflows():
    """Above a p-value of 1e-300 the mapping is the normal quantile exactly; below it the z-score goes on growing
    (a floored p-value made every strong shift 37.05), without a jump where scipy's log survival function gives out."""
    for chi_square, df in ((3.0, 20), (100.0, 20), (1_000.0, 60)):
        assert chi_square_z(chi_square, df) == float(stats.norm.isf(stats.chi2.sf(chi_square, df)))
    past_the_floor = [chi_square_z(x, 20) for x in (1_600.0, 3_000.0, 1e5)]
    assert past_the_floor[0] > 37.05 and np.all(np.diff(past_the_floor) > 0) and past_the_floor[-1] > 300
    steps = np.diff([chi_square_z(float(x), 20) for x in range(1_300, 1_900)])  # across both switches: no jump
    assert np.all(steps > 0) and steps.max() < 2 * steps.min()


def test_a_stronger_shift_gets_a_larger_statistic_beyond_every_floor(detector, digits):
    """Filters are judged by how much of the statistic's excess they remove: that needs the statistic to keep
    ordering strong shifts, past the count view's ceiling (every image strange) and the mean shift's p-value floor."""
    _, test = digits
    batch = test.images[:150]
    ceiling = (150 - 150 * detector.sample_fpr) / np.sqrt(150 * detector.sample_fpr * (1 - detector.sample_fpr))
    statistics = [detector.predict(corrupt(batch, "brightness", level, seed=3)).statistic for level in (2, 4)]
    assert ceiling + 1 < statistics[0] < statistics[1], (ceiling, statistics)


def _with_faint_marks(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Each image with two grey (64 / 255) pixels, one above the other, in its leftmost column, which clean
    digits leave almost always black: a mark too small to move an image's global statistics."""
    marked = images.clone()
    rows = rng.integers(0, images.shape[-2] - 1, len(images))
    for image, row in zip(marked, rows):
        image[..., row : row + 2, 0] = 64
    return marked


def test_rarity_sees_a_faint_local_mark_that_reconstruction_error_misses(detector, digits):
    """Why the `rarity` component exists: small marks (MNIST-C spatter at severity 1 changes ~1 % of the pixels) that
    the autoencoder reconstructs around and global pixel statistics average away."""
    _, test = digits
    marked = _with_faint_marks(test.images, np.random.default_rng(0))
    labels = np.r_[np.zeros(len(test)), np.ones(len(test))]
    clean, corrupted = detector._features(test.images), detector._features(marked)
    auroc = {
        name: roc_auc_score(labels, np.r_[clean["components"][:, i], corrupted["components"][:, i]])
        for i, name in enumerate(detector.components)
    }
    print({name: round(value, 3) for name, value in auroc.items()})
    assert auroc["rarity"] >= 0.95
    assert auroc["reconstruction"] < 0.75


def test_rarity_of_an_image_of_another_size_is_refused(detector):
    with pytest.raises(ValueError, match="images have 16 pixels, the rarity histograms 64"):
        detector._rarity.score(torch.zeros(3, 1, 4, 4, dtype=torch.uint8))


@pytest.fixture(scope="module")
def without_rarity(detector, digits):
    """The module's detector as it was before the rarity component: the four other components."""
    train, test = digits
    old = AutoencoderDetector(detector.classifier, detector.autoencoder, components=COMPONENTS[:4], calibration_windows=50)
    return old.fit(train.images, calibration=test.images, info=train.info)


def test_the_remedy_vote_leaves_rarity_out(detector, without_rarity, digits):
    """Rarity fires on moved shapes (retrain) as on marks (filter); in the vote of `policy_action` it turned
    sheared digits into "filter". The vote's shares are those of the detector without it."""
    _, test = digits
    for corruption in ("shear", "translate", "spatter", "shot_noise"):
        batch = corrupt(test.images[:120], corruption, 3, seed=0)
        assert "rarity" not in detector.predict(batch).details["strongest_component_share"]
        assert (
            detector.predict(batch).details["strongest_component_share"]
            == without_rarity.predict(batch).details["strongest_component_share"]
        ), corruption


def _saved_and_loaded_without(detector: AutoencoderDetector, state_key: str, tmp_path) -> AutoencoderDetector:
    """`detector` saved as an older version wrote it: without `state_key` in its state."""
    from scanflow.artifacts import load_state, save_state

    path = detector.save(tmp_path / "old.pt")
    payload = load_state(path)
    del payload["state"][state_key]
    save_state(payload, path)
    return AutoencoderDetector.load(path)


def test_a_detector_saved_before_the_rarity_component_still_loads_and_predicts_the_same(without_rarity, digits, tmp_path):
    """Detectors saved before `rarity` existed have four components and no histograms in their state."""
    _, test = digits
    expected = without_rarity.predict(test.images[:30])
    loaded = _saved_and_loaded_without(without_rarity, "pixel_rarity", tmp_path)
    result = loaded.predict(test.images[:30])
    assert loaded.components == COMPONENTS[:4]
    assert result.p_value == expected.p_value and np.array_equal(result.sample_scores, expected.sample_scores)


def test_grey_detectors_leave_local_error_out_and_colour_ones_score_it(detector, rgb_detector, digits, tmp_path):
    """On grey images `rarity` sees small marks and `local_error` only dilutes the sample score, so the default
    components follow the reference's channels. A grey detector's state holds no error maps, as a detector saved
    before the component existed; both load and predict alike."""
    assert detector.components == tuple(c for c in COMPONENTS if c != "local_error") and detector._local_error is None
    assert "local_error" in rgb_detector[0].components and rgb_detector[0]._local_error is not None
    expected = detector.predict(digits[1].images[:30])
    for loaded in (AutoencoderDetector.load(detector.save(tmp_path / "grey.pt")),
                   _saved_and_loaded_without(detector, "local_error", tmp_path)):
        assert loaded.components == detector.components and loaded._local_error is None
        assert np.array_equal(loaded.predict(digits[1].images[:30]).sample_scores, expected.sample_scores)


def test_local_error_of_an_error_map_of_another_size_is_refused(rgb_detector):
    with pytest.raises(ValueError, match=r"error maps are \(4, 4\), the clean local errors \(32, 32\)"):
        rgb_detector[0]._local_error.score(torch.zeros(3, 4, 4))


def test_an_unknown_reconstruction_precision_is_refused(detector):
    with pytest.raises(ValueError, match=r"reconstruction_precision must be one of \('auto', 'float32', 'bfloat16'\), got 'float16'"):
        AutoencoderDetector(detector.classifier, detector.autoencoder, reconstruction_precision="float16")


@pytest.fixture(scope="module")
def float32_detector(detector, digits):
    train, test = digits
    fitted = AutoencoderDetector(detector.classifier, detector.autoencoder, reconstruction_precision="float32", calibration_windows=50)
    return fitted.fit(train.images, calibration=test.images, info=train.info)


def test_the_precision_is_decided_at_fit_and_kept_by_the_saved_detector(detector, float32_detector, digits, tmp_path):
    """"auto" is bfloat16 only where the CPU has it; a loaded detector computes in the precision it was fitted
    with, whatever machine loads it, so its scores stay comparable with its calibration."""
    _, test = digits
    assert detector._decoder_dtype == (torch.bfloat16 if native_bfloat16() else torch.float32)
    bfloat16 = AutoencoderDetector(detector.classifier, detector.autoencoder, reconstruction_precision="bfloat16", calibration_windows=50)
    bfloat16.fit(digits[0].images, calibration=test.images, info=digits[0].info)
    batch = corrupt(test.images[:60], "fog", 1, seed=0)
    expected = bfloat16.predict(batch)
    loaded = AutoencoderDetector.load(bfloat16.save(tmp_path / "bf16.pt"))
    assert loaded.reconstruction_precision == "bfloat16"
    assert np.array_equal(loaded.predict(batch).sample_scores, expected.sample_scores)
    in_float32 = float32_detector.predict(batch).sample_scores
    assert not np.array_equal(in_float32, expected.sample_scores), "the precision must reach the decoder"
    assert np.corrcoef(in_float32, expected.sample_scores)[0, 1] > 0.999


def test_a_detector_saved_before_the_precision_choice_loads_as_float32(float32_detector, digits, tmp_path):
    _, test = digits
    expected = float32_detector.predict(test.images[:30])
    loaded = _saved_and_loaded_without(float32_detector, "decoder_dtype", tmp_path)
    assert loaded.reconstruction_precision == "float32"
    assert np.array_equal(loaded.predict(test.images[:30]).sample_scores, expected.sample_scores)


@pytest.fixture(scope="module")
def rgb_detector(fashion_mnist_dir):
    """The detector of models trained on 1,000 fashion-rgb images (32x32 RGB), calibrated on 600 others."""
    from scanflow.data import load_dataset

    test = load_dataset("fashion-rgb", "test")
    fit_part = test.subset(range(1000), split="test[0:1000]")
    classifier, _ = train_classifier(fit_part, TrainConfig(epochs=2, seed=0), progress=False)
    autoencoder, _ = train_autoencoder(fit_part, TrainConfig(epochs=3, seed=0), progress=False)
    detector = AutoencoderDetector(classifier, autoencoder, calibration_windows=200)
    return detector.fit(fit_part.images, calibration=test.images[1000:1600], info=test.info), test


def test_the_detector_fits_and_tells_clean_from_corrupted_32x32_rgb_batches(rgb_detector, tmp_path):
    """Colour is part of clean fashion-rgb: clean windows pass, impulse noise is seen per batch and per image."""
    detector, test = rgb_detector
    clean, pool = test.images[1600:1700], test.images[1700:1800]
    corrupted = corrupt(pool, "impulse_noise", 3, seed=0)
    clean_result, corrupted_result = detector.predict(clean), detector.predict(corrupted)
    assert detector.info.image_shape == (3, 32, 32) and detector._rarity.bin_surprise.shape == (8, 3 * 32 * 32)
    assert not clean_result.is_drift and corrupted_result.is_drift
    auroc = roc_auc_score(np.r_[np.zeros(100), np.ones(100)], np.r_[clean_result.sample_scores, corrupted_result.sample_scores])
    assert auroc >= 0.9, auroc
    loaded = AutoencoderDetector.load(detector.save(tmp_path / "rgb.pt"))
    assert np.array_equal(loaded.predict(corrupted).sample_scores, corrupted_result.sample_scores)


@pytest.fixture(scope="module")
def rgb_marks_detector(rgb_detector):
    """`rgb_detector`'s classifier with an autoencoder that has seen 20,000 images (2,000 for 10 epochs): one that
    reconstructs too coarsely (the fixture's 3,000) misses marks wherever they are."""
    from scanflow.data import load_dataset

    classifier, test = rgb_detector[0].classifier, rgb_detector[1]
    fit_part = load_dataset("fashion-rgb", "test").subset(range(2000), split="test[0:2000]")
    autoencoder, _ = train_autoencoder(fit_part, TrainConfig(epochs=10, seed=0), progress=False)
    detector = AutoencoderDetector(classifier, autoencoder, calibration_windows=200)
    return detector.fit(fit_part.images, calibration=test.images[2000:2600], info=test.info), test


def test_local_error_sees_grey_marks_on_colour_images_where_rarity_cannot(rgb_marks_detector):
    """Why the `local_error` component exists: on colour images every value is common at every position, so
    `rarity` does not see spatter's grey blobs; where the autoencoder fails to reproduce them does. Batches of 20
    spattered images are flagged; clean ones pass."""
    detector, test = rgb_marks_detector
    clean, pool = test.images[2600:2800], test.images[2800:3000]
    spattered = corrupt(pool, "spatter", 3, seed=0)
    changed = (spattered != pool).flatten(1).any(dim=1).numpy()
    features = {"clean": detector._features(clean), "spatter": detector._features(spattered[torch.from_numpy(changed)])}
    labels = np.r_[np.zeros(len(clean)), np.ones(int(changed.sum()))]
    auroc = {
        name: roc_auc_score(labels, np.r_[features["clean"]["components"][:, i], features["spatter"]["components"][:, i]])
        for i, name in enumerate(detector.components)
    }
    print({name: round(value, 3) for name, value in auroc.items()})
    assert auroc["local_error"] >= 0.75 and auroc["rarity"] < 0.65
    windows = [spattered[20 * k: 20 * (k + 1)] for k in range(5)]
    assert [detector.predict(images).is_drift for images in windows] == [True] * 5
    assert sum(detector.predict(clean[20 * k: 20 * (k + 1)]).is_drift for k in range(10)) <= 2


def test_the_optional_embedding_component_scores_distance_in_the_classifiers_own_features(detector, digits, tmp_path):
    """Asked for, the embedding component measures how far an image's hidden features (the classifier's view) sit
    from the reference's; it is fitted state kept by a saved detector, and off by default."""
    train, test = digits
    assert "embedding" not in detector.components
    with_embedding = AutoencoderDetector(detector.classifier, detector.autoencoder, components=COMPONENTS + ("embedding",),
                                         calibration_windows=100)
    with_embedding.fit(train.images, calibration=test.images, info=train.info)
    rotated = corrupt(test.images[:200], "rotate", 4, seed=0)
    column = with_embedding.components.index("embedding")
    clean_scores = with_embedding._features(test.images[:200])["components"][:, column]
    shifted_scores = with_embedding._features(rotated)["components"][:, column]
    auroc = roc_auc_score(np.r_[np.zeros(200), np.ones(200)], np.r_[clean_scores, shifted_scores])
    assert auroc > 0.75, auroc
    assert with_embedding.predict(rotated).is_drift and not with_embedding.predict(test.images[200:300]).is_drift
    loaded = AutoencoderDetector.load(with_embedding.save(tmp_path / "detector.pt"))
    assert loaded.predict(rotated).statistic == pytest.approx(with_embedding.predict(rotated).statistic)
    with pytest.raises(ValueError, match=r"components must be a non-empty subset of \('reconstruction', .*'embedding'\), got \('embeding',\)"):
        AutoencoderDetector(detector.classifier, detector.autoencoder, components=("embeding",))
    with pytest.raises(ValueError, match=r"components must be a non-empty subset of .*, got \[\]"):
        AutoencoderDetector(detector.classifier, detector.autoencoder, components=[])


def test_a_two_sided_reconstruction_score_counts_too_good_a_reconstruction_and_is_kept_by_a_saved_detector(detector, digits, tmp_path):
    """Blurred images reconstruct better than clean ones: one-sided, their reconstruction component sits below clean;
    two-sided (`two_sided=`), it is their distance from clean, so never negative. The choice is fitted state."""
    train, test = digits
    two_sided = AutoencoderDetector(detector.classifier, detector.autoencoder, two_sided=("reconstruction",),
                                    calibration_windows=100)
    two_sided.fit(train.images, calibration=test.images, info=train.info)
    blurred = corrupt(test.images[:200], "glass_blur", 3, seed=0)
    column = COMPONENTS.index("reconstruction")
    one = detector._features(blurred)["components"][:, column]
    both = two_sided._features(blurred)["components"][:, column]
    assert np.all(both >= 0) and np.allclose(both, np.abs(one), atol=1e-9)
    loaded = AutoencoderDetector.load(two_sided.save(tmp_path / "detector.pt"))
    assert loaded.two_sided == ("reconstruction",) and detector.two_sided == ("embedding",)
    assert loaded.predict(blurred).statistic == pytest.approx(two_sided.predict(blurred).statistic)
    with pytest.raises(ValueError, match=r"two_sided must name components of \('reconstruction', .*\), got \('recon',\)"):
        AutoencoderDetector(detector.classifier, detector.autoencoder, two_sided=("recon",))


def test_the_prediction_shift_sees_the_models_answers_move_where_the_pixels_look_clean(detector, digits, tmp_path, monkeypatch):
    """Clean images, but answered as a model answers a batch of threes (the served model's probabilities are what
    the flows pass): with `prediction_shift` (the default) the batch mean of the log class probabilities flags it;
    without, the pixels and the autoencoder see clean images. Older saved detectors lack it and load without it;
    models with more than MAX_PREDICTION_CLASSES classes go without it."""
    from scanflow.drift import autoencoder
    from scanflow.artifacts import load_state, save_state

    train, test = digits
    without = AutoencoderDetector(detector.classifier, detector.autoencoder, prediction_shift=False, calibration_windows=100)
    without.fit(train.images, calibration=test.images, info=train.info)
    answers_of_threes = detector.classifier.predict_proba(test.images[test.labels == 3][:30]).numpy()
    rows = [torch.from_numpy(np.random.default_rng(seed).choice(len(test), 30, replace=False)) for seed in range(3)]
    assert detector.prediction_shift and not without.prediction_shift
    assert [detector.predict(test.images[r], answers_of_threes).is_drift for r in rows] == [True] * 3
    assert [without.predict(test.images[r], answers_of_threes).is_drift for r in rows] == [False] * 3
    assert [detector.predict(test.images[r]).is_drift for r in rows] == [False] * 3
    features = detector._features(test.images[:20])
    expected = np.log(np.clip(detector.classifier.predict_proba(test.images[:20]).numpy().astype(np.float64), 1e-6, 1.0))
    assert np.allclose(features["prediction"], expected) and "prediction" not in without._features(test.images[:20])
    path = detector.save(tmp_path / "detector.pt")
    assert AutoencoderDetector.load(path).prediction_shift
    payload = load_state(path)
    del payload["state"]["prediction_shift"]
    save_state(payload, path)
    assert not AutoencoderDetector.load(path).prediction_shift
    monkeypatch.setattr(autoencoder, "MAX_PREDICTION_CLASSES", 9)
    assert "prediction" not in detector._features(test.images[:20])


def test_the_extended_pixel_statistics_see_mild_blur_and_brightening_of_colour_images(rgb_detector, tmp_path):
    """The mildest glass and motion blur of 32x32 colour images reconstruct about as well as clean, so without
    `extended_pixels` batches of 20 pass; with them (the default) the sharpness ratio flags every batch. The
    mildest brightening clips pixels, which the clipped share sees. Clean batches still pass at about alpha.
    Detectors saved before these statistics load without them and predict as they did."""
    from scanflow.artifacts import load_state, save_state
    from scanflow.drift.autoencoder import pixel_statistics

    detector, test = rgb_detector
    without = AutoencoderDetector(detector.classifier, detector.autoencoder, extended_pixels=False, calibration_windows=200)
    without.fit(test.images[:1000], calibration=test.images[1000:1600], info=test.info)
    assert detector.extended_pixels and not without.extended_pixels
    windows = [test.images[1600 + 20 * k: 1620 + 20 * k] for k in range(10)]
    for name in ("glass_blur", "motion_blur", "brightness"):
        shifted = [corrupt(images, name, 1, seed=k) for k, images in enumerate(windows[:3])]
        assert [detector.predict(images).is_drift for images in shifted] == [True] * 3, name
        if name != "brightness":
            assert [without.predict(images).is_drift for images in shifted] == [False] * 3, name
    brightened = corrupt(test.images[1600:1800], "brightness", 1, seed=0)
    clipped = [pixel_statistics(images, detail=True)[:, 6].mean() for images in (brightened, test.images[1600:1800])]
    assert clipped[0] > 5 * clipped[1], clipped
    assert sum(detector.predict(images).is_drift for images in windows) <= 2
    path = without.save(tmp_path / "detector.pt")
    payload = load_state(path)
    del payload["state"]["extended_pixels"]
    save_state(payload, path)
    loaded = AutoencoderDetector.load(path)
    assert not loaded.extended_pixels
    assert loaded.predict(windows[0]).statistic == pytest.approx(without.predict(windows[0]).statistic)

"""Improvers on real data (scikit-learn's 8x8 digits): the plan/apply contract, retraining that learns a shift
without forgetting, a denoiser that leaves clean inputs alone, rejection, and bad decisions refused up front."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from scanflow.config import DENOISER_STEPS, RETRAIN_STEPS
from scanflow.corruptions import corrupt
from scanflow.drift.autoencoder import fit_detector
from scanflow.drift.known import KnownShift, match_known_shift
from scanflow.errors import ScanflowError, UnknownCorruptionError
from scanflow.human import Decision, InvalidDecisionError
from scanflow.improve import (
    DenoiserConfig,
    FilteredClassifier,
    FilterImprover,
    ImprovementContext,
    RetrainConfig,
    RetrainImprover,
    fine_tune,
    holdout_scores,
    improver_for,
    train_denoiser,
)
from scanflow.improve.base import seconds_at_area, split_positions
from scanflow.improve.filter import (
    DENOISER_PREPARATION_SECONDS_PER_1000,
    DENOISER_STEP_SECONDS,
    calibrate_gate,
    corrupted_pairs,
    denoiser_key,
    expected_denoiser_seconds,
    reusable_denoiser,
)
from scanflow.improve.retrain import FINE_TUNE_STEP_SECONDS, expected_fine_tune_seconds
from scanflow.models import Denoiser
from scanflow.models import REJECTED_LABEL
from scanflow.train import TrainConfig, train_autoencoder, train_classifier

FAST_RETRAIN = RetrainConfig(steps=150, batch_size=64)
FAST_DENOISER = DenoiserConfig(steps=150, batch_size=64, training_images=1000)


@pytest.fixture(scope="module")
def champion(digits):
    train, _ = digits
    classifier, _ = train_classifier(train, TrainConfig(epochs=15, seed=0), progress=False)
    autoencoder, _ = train_autoencoder(train, TrainConfig(epochs=10, seed=0), latent_dim=8, progress=False)
    return classifier, autoencoder


@pytest.fixture(scope="module")
def shifted(digits):
    """The digits test split rotated (severity 5): first half is the production batch, second half the holdout."""
    _, test = digits
    rotated = corrupt(test.images, "rotate", 5, seed=1)
    half = len(test) // 2
    return rotated[:half], test.labels[:half], rotated[half:], test.labels[half:]


@pytest.fixture(scope="module")
def context(digits, champion, shifted):
    train, test = digits
    classifier, autoencoder = champion
    batch, _, _, _ = shifted
    detector = fit_detector(classifier, autoencoder, train, test)
    return ImprovementContext(
        classifier=classifier, autoencoder=autoencoder, batch=batch, shown_indices=tuple(range(0, 60, 2)),
        replay=train, clean_holdout=test, calibration=test, detector=detector, champion_version="1", batch_id="b1",
    )


def _accuracy(model, images, labels) -> float:
    return float((model.predict(images) == labels).float().mean())


def _weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.state_dict().values()]


def test_fine_tuning_learns_the_shift_without_forgetting_and_leaves_the_champion_alone(digits, champion, shifted):
    train, test = digits
    classifier, _ = champion
    batch, batch_labels, holdout, holdout_labels = shifted
    before = _weights(classifier)
    labelled = type(train)(batch[:100], batch_labels[:100], train.info, "rotated[0:100]")
    result = fine_tune(classifier, labelled, train, FAST_RETRAIN, unlabelled=batch)
    assert _accuracy(result.classifier, holdout, holdout_labels) > _accuracy(classifier, holdout, holdout_labels) + 0.1
    assert _accuracy(result.classifier, test.images, test.labels) > _accuracy(classifier, test.images, test.labels) - 0.03
    assert result.n_labelled == 100 and 0 < result.n_pseudo_labelled <= len(batch)
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(classifier)))


def test_fine_tuning_refuses_labels_outside_the_classes(digits, champion):
    train, _ = digits
    bad = type(train)(train.images[:3], torch.tensor([1, 2, 12]), train.info, "bad")
    with pytest.raises(ScanflowError, match=r"bad: labels must be class indices 0\.\.9, found 1\.\.12"):
        fine_tune(champion[0], bad, train, FAST_RETRAIN)


def test_retrain_config_keeps_room_for_replay():
    with pytest.raises(ValueError, match="leave room for clean replay"):
        RetrainConfig(labelled_share=0.6, pseudo_share=0.5)


def test_denoiser_training_never_sees_excluded_corruptions():
    config = DenoiserConfig(exclude=("noise", "rotate"))
    assert not {"shot_noise", "impulse_noise", "rotate"} & set(config.training_corruptions)
    assert "glass_blur" in config.training_corruptions and "scale" in config.training_corruptions
    with pytest.raises(UnknownCorruptionError, match="cannot exclude 'gauss'"):
        DenoiserConfig(exclude=("gauss",))


def test_corrupted_pairs_keep_a_clean_share_and_shape(digits):
    train, _ = digits
    clean = train.images[:400]
    pairs = corrupted_pairs(clean, DenoiserConfig(clean_share=0.25))
    unchanged = (pairs == clean).flatten(1).all(dim=1).float().mean().item()
    assert pairs.shape == clean.shape and pairs.dtype == torch.uint8
    assert 0.15 < unchanged < 0.4


def test_filter_keeps_clean_accuracy_and_removes_noise(digits, champion):
    train, test = digits
    classifier, _ = champion
    result = train_denoiser(classifier, train, DenoiserConfig(steps=400, batch_size=64, training_images=1200, exclude=("noise",)))
    filtered = FilteredClassifier(classifier, result.denoiser)
    noisy = corrupt(test.images, "impulse_noise", 3, seed=3)
    assert _accuracy(filtered, test.images, test.labels) >= _accuracy(classifier, test.images, test.labels) - 0.03
    assert _accuracy(filtered, noisy, test.labels) > _accuracy(classifier, noisy, test.labels)


def test_denoiser_round_trips_and_outputs_uint8(tmp_path, digits):
    train, _ = digits
    denoiser = Denoiser(1, 8, 8)
    loaded = Denoiser.load(denoiser.save(tmp_path / "d.pt"))
    cleaned = loaded.clean(train.images[:5])
    assert cleaned.dtype == torch.uint8 and cleaned.shape == (5, 1, 8, 8)
    assert torch.equal(cleaned, denoiser.clean(train.images[:5]))


def test_rejection_answers_minus_one_beyond_the_threshold(digits, champion, context):
    _, test = digits
    classifier, _ = champion
    always = FilteredClassifier(classifier, Denoiser(1, 8, 8), context.detector, reject_threshold=-np.inf)
    never = FilteredClassifier(classifier, Denoiser(1, 8, 8), context.detector, reject_threshold=np.inf)
    assert (always.predict(test.images[:10]) == REJECTED_LABEL).all()
    assert (never.predict(test.images[:10]) != REJECTED_LABEL).all()
    with pytest.raises(ValueError, match="rejection needs both a scorer"):
        FilteredClassifier(classifier, Denoiser(1, 8, 8), reject_threshold=1.0)


def test_plan_is_json_and_has_no_side_effects(context):
    before = _weights(context.classifier)
    plan = RetrainImprover(FAST_RETRAIN).plan(None, context)
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["action"] == "retrain" and data["n_shown"] == 30
    assert len(data["holdout_positions"]) == 9 and len(data["training_positions"]) == 21
    assert not set(data["holdout_positions"]) & set(data["training_positions"])
    assert data["expected_seconds"] > 0 and "fine-tune classifier v1" in data["description"]
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(context.classifier)))
    filter_plan = FilterImprover(FAST_DENOISER).plan(None, context)
    assert filter_plan.training_positions == () and len(filter_plan.holdout_positions) == 30


def test_cost_estimates_follow_the_measured_step_costs_at_both_sizes():
    """The plan's seconds interpolate per-step costs measured at 8x8 and 28x28 (benchmarks/improve_cost.py): an
    8x8 step costs its own measurement, not a 28x28 step scaled down by area (which predicted 9 s for the digits
    filter)."""
    assert seconds_at_area({64: 1.0, 784: 10.0}, 64) == 1.0
    assert seconds_at_area({64: 1.0, 784: 10.0}, 784) == 10.0
    assert seconds_at_area({64: 1.0, 784: 10.0}, 424) == pytest.approx(5.5)
    assert seconds_at_area({64: 1.0, 784: 10.0}, 16) == 1.0
    assert seconds_at_area({784: 10.0, 64: 1.0}, 1504) == pytest.approx(19.0)
    config = DenoiserConfig()
    digits_step = DENOISER_STEP_SECONDS[64] * config.steps
    assert expected_denoiser_seconds(config, 1_000, 8, 8) == pytest.approx(digits_step + DENOISER_PREPARATION_SECONDS_PER_1000[64])
    assert expected_fine_tune_seconds(RetrainConfig(), 8, 8, rounds=2) == pytest.approx(2 * RetrainConfig().steps * FINE_TUNE_STEP_SECONDS[64])


def test_retrain_apply_scores_both_models_and_refits_the_detector(context, shifted):
    _, batch_labels, _, _ = shifted
    plan = RetrainImprover(FAST_RETRAIN).plan(None, context)
    labels = [int(batch_labels[i]) for i in context.shown_indices]
    outcome = RetrainImprover(FAST_RETRAIN).apply(plan, Decision("retrain", tuple(labels), decided_by="oracle"))
    assert outcome.n_labels_used == 21 and outcome.decided_by == "oracle"
    assert outcome.champion_scores.n_shifted == outcome.candidate_scores.n_shifted == 9
    assert outcome.candidate_scores.shifted_accuracy >= outcome.champion_scores.shifted_accuracy
    assert outcome.detector is not None and outcome.detector.is_fitted
    assert outcome.detector.classifier is outcome.candidate
    json.dumps(outcome.to_dict())


def test_a_retrain_leaves_half_the_unshown_rows_unseen_and_remembers_the_shift_from_them(digits, context, shifted):
    """The refitted detector is fitted on clean images only (clean batches do not alarm after a retrain), and the
    rows the retrain did not learn from show the new champion a repeat of the shift like a fresh batch does."""
    _, test = digits
    _, batch_labels, repeat, _ = shifted
    improver = RetrainImprover(FAST_RETRAIN)
    plan = improver.plan(None, context)
    unshown = set(range(len(context.batch))) - set(context.shown_indices)
    judging = {context.shown_indices[p] for p in split_positions(context.labelled_positions, context.holdout_fraction, context.seed)[1]}
    assert judging and len(set(plan.unseen_rows) & unshown) == len(unshown) // 2 and set(plan.unseen_rows) == (set(plan.unseen_rows) & unshown) | judging
    assert f"pseudo-labels of {len(context.batch) - len(plan.unseen_rows)} of the batch's {len(context.batch)} images" in plan.description
    labels = tuple(int(batch_labels[i]) for i in context.shown_indices)
    outcome = improver.apply(plan, Decision("retrain", labels, decided_by="oracle"))
    assert outcome.unseen_rows == plan.unseen_rows and outcome.to_dict()["unseen_rows"] == list(plan.unseen_rows)
    assert outcome.n_pseudo_labelled <= len(context.batch) - len(plan.unseen_rows)
    assert not outcome.detector.predict(test.images[:150]).is_drift
    unseen = context.batch[torch.tensor(plan.unseen_rows)]
    known = [KnownShift("b1", "2", "retrain", "run", outcome.detector.shift_signature(unseen))]
    assert match_known_shift(outcome.detector.shift_signature(repeat[:100]), known, alpha=0.05) is not None
    assert match_known_shift(outcome.detector.shift_signature(corrupt(test.images[:100], "fog", 5, seed=2)), known, alpha=0.05) is None


def test_only_the_labels_a_person_gave_train_and_judge(context, shifted):
    """Samples left at their untouched guess (None) neither train the challenger nor sit in its holdout."""
    from dataclasses import replace

    _, batch_labels, _, _ = shifted
    given = tuple(int(batch_labels[i]) if k % 3 == 0 else None for k, i in enumerate(context.shown_indices))
    decision = Decision("retrain", given, decided_by="human")
    assert decision.labelled_positions == tuple(range(0, 30, 3))
    partial = replace(context, labelled_positions=decision.labelled_positions)
    plan = RetrainImprover(FAST_RETRAIN).plan(None, partial)
    assert set(plan.training_positions) | set(plan.holdout_positions) == set(range(0, 30, 3))
    assert (len(plan.training_positions), len(plan.holdout_positions)) == (7, 3)
    outcome = RetrainImprover(FAST_RETRAIN).apply(plan, decision)
    assert outcome.n_labels_used == 7 and outcome.candidate_scores.n_shifted == 3 == len(outcome.candidate_scores.shifted_correct)
    assert outcome.holdout_share == context.holdout_fraction
    filter_plan = FilterImprover(FAST_DENOISER).plan(None, partial)
    assert filter_plan.holdout_positions == tuple(range(0, 30, 3)) and filter_plan.training_positions == ()


def test_filter_apply_needs_no_labels(context):
    improver = FilterImprover(FAST_DENOISER)
    outcome = improver.apply(improver.plan(None, context), Decision("filter"))
    evidence = outcome.drift_evidence
    assert evidence is not None and evidence.raw_statistic > evidence.threshold and np.isfinite(evidence.filtered_statistic)
    assert evidence.raw_statistic == pytest.approx(context.detector.predict(context.batch).statistic)
    assert outcome.verdict().evidence in ("drift statistic", "clean accuracy") and outcome.holdout_share == 1.0
    assert isinstance(outcome.candidate, FilteredClassifier) and outcome.candidate.classifier is context.classifier
    assert outcome.candidate_scores.shifted_accuracy is None and outcome.n_labels_used == 0
    assert outcome.detector.classifier is context.classifier and outcome.detector is not context.detector
    assert not outcome.detector.predict(outcome.candidate.clean(context.clean_holdout.images[:150])).is_drift
    assert outcome.candidate.gate_scorer is context.detector
    assert outcome.candidate.gate_score_threshold == context.detector.sample_threshold


def test_a_second_filter_for_the_same_champion_reuses_its_denoiser_and_it_is_the_one_training_again_gives(digits, champion, context):
    """Training is seeded: the reused denoiser equals a fresh training's, and anything it depends on (the guide's
    weights, the images, the config) changing trains a new one. The plan and the outcome say which happened."""
    train, _ = digits
    classifier, _ = champion
    config = DenoiserConfig(steps=20, batch_size=32, training_images=300, seed=5)
    first, first_reused = reusable_denoiser(classifier, train, config)
    again, again_reused = reusable_denoiser(classifier, train, config)
    fresh = train_denoiser(classifier, train, config)
    assert (first_reused, again_reused) == (False, True) and again.denoiser is not first.denoiser
    for name, tensor in fresh.denoiser.state_dict().items():
        assert torch.equal(again.denoiser.state_dict()[name], tensor), name
    nudged = copy.deepcopy(classifier)
    with torch.no_grad():
        next(nudged.parameters()).add_(1e-3)
    assert denoiser_key(nudged, train, config) != denoiser_key(classifier, train, config)
    assert denoiser_key(classifier, train, replace(config, seed=6)) != denoiser_key(classifier, train, config)
    assert denoiser_key(classifier, train.subset(range(len(train) - 1)), config) != denoiser_key(classifier, train, config)
    assert denoiser_key(None, train, config) is None  # a model without gradients: never reused

    improver = FilterImprover(replace(FAST_DENOISER, seed=11))
    first_plan = improver.plan(None, context)
    first_outcome = improver.apply(first_plan, Decision("filter"))
    second_plan = improver.plan(None, context)
    second_outcome = improver.apply(second_plan, Decision("filter"))
    assert first_plan.params["denoiser_reused"] is False and first_plan.expected_seconds > 0
    assert first_plan.description.startswith("train a denoiser on 1,000 clean training images corrupted by")
    assert first_outcome.summary.startswith("denoiser (trained on")
    assert second_plan.params["denoiser_reused"] is True and second_plan.expected_seconds == 0
    assert second_plan.description.startswith("reuse the denoiser this process already trained for this classifier on the same 1,000")
    assert second_outcome.summary.startswith("denoiser reused (trained earlier in this process on")
    assert torch.equal(first_outcome.candidate.clean(context.batch), second_outcome.candidate.clean(context.batch))


def test_a_filter_rejects_about_its_false_rejection_rate_of_clean_images_and_more_of_shifted_ones(context):
    improver = FilterImprover(FAST_DENOISER, reject_fpr=0.1)
    outcome = improver.apply(improver.plan(None, context), Decision("filter"))
    assert outcome.candidate.scorer is outcome.detector
    clean_rejected = float((outcome.candidate.predict(context.calibration.images) == REJECTED_LABEL).float().mean())
    shifted_rejected = float((outcome.candidate.predict(context.batch) == REJECTED_LABEL).float().mean())
    assert 0.05 <= clean_rejected <= 0.15 and shifted_rejected > clean_rejected, (clean_rejected, shifted_rejected)


def test_bad_decisions_are_refused_before_any_training(context):
    improver = RetrainImprover(FAST_RETRAIN)
    plan = improver.plan(None, context)
    with pytest.raises(InvalidDecisionError, match=r"^got 3 labels for 30 critical samples"):
        improver.apply(plan, Decision("retrain", (1, 2, 3)))
    with pytest.raises(InvalidDecisionError, match=r"^retrain needs labels: none of the 30 samples shown was labelled for training \(untouched guesses are not labels\)$"):
        improver.apply(plan, Decision("retrain"))
    with pytest.raises(InvalidDecisionError, match=r"^retrain needs labels: none of the 30 samples shown"):
        improver.apply(plan, Decision("retrain", (None,) * 30))
    with pytest.raises(InvalidDecisionError, match=r"^the decision is 'filter' but the plan is 'retrain'"):
        improver.apply(plan, Decision("filter"))
    with pytest.raises(InvalidDecisionError, match=r"no improver for 'ignore'"):
        improver_for("ignore")


def test_a_decision_sets_the_improvers_steps_or_is_refused_before_anything_trains():
    assert improver_for("retrain").config.steps == RETRAIN_STEPS and improver_for("filter").config.steps == DENOISER_STEPS
    assert improver_for("retrain", 7).config.steps == 7 and improver_for("filter", 9).config.steps == 9
    for bad in (0, -3, 2.5, True, "100"):
        with pytest.raises(InvalidDecisionError) as refused:
            improver_for("filter", bad)
        assert str(refused.value) == (f"steps must be a whole number of optimisation steps, at least 1, got {bad!r}: leave it unset "
                                      f"for the defaults ({RETRAIN_STEPS} per retraining round, {DENOISER_STEPS} for a filter's denoiser)")


def test_context_refuses_indices_outside_the_batch(context):
    with pytest.raises(ScanflowError, match=r"shown sample indices \[999\] are outside the batch of \d+ images"):
        ImprovementContext(context.classifier, context.autoencoder, context.batch, (0, 999), context.replay, context.clean_holdout)
    with pytest.raises(ScanflowError, match="shown sample indices repeat"):
        ImprovementContext(context.classifier, context.autoencoder, context.batch, (1, 1), context.replay, context.clean_holdout)


def test_holdout_scores_count_rejections_as_wrong(digits, champion, context):
    _, test = digits
    always = FilteredClassifier(champion[0], Denoiser(1, 8, 8), context.detector, reject_threshold=-np.inf)
    assert holdout_scores(always, test, None).clean_accuracy == 0.0


def test_the_gate_passes_clean_images_through_untouched(digits, champion):
    train, test = digits
    classifier, _ = champion
    denoiser = train_denoiser(classifier, train, FAST_DENOISER).denoiser
    gate = calibrate_gate(denoiser, test.images, 0.9)
    filtered = FilteredClassifier(classifier, denoiser, gate_threshold=gate)
    unchanged = (filtered.clean(test.images) == test.images).flatten(1).all(dim=1).float().mean().item()
    assert 0.85 <= unchanged <= 0.95
    noisy = corrupt(test.images, "impulse_noise", 5, seed=4)
    assert (filtered.clean(noisy) != noisy).flatten(1).any(dim=1).float().mean().item() > 0.5
    with pytest.raises(ValueError, match=r"gate quantile must be in \(0, 1\)"):
        calibrate_gate(denoiser, test.images, 1.0)


def test_the_score_gate_cleans_what_the_detector_flags_even_when_the_correction_is_small(digits, champion, context):
    """Deblurring changes an image about as little as cleaning a clean one: a size gate alone passes blurred images
    on unchanged; the detector's score sends the ones it flags to the denoiser."""
    train, test = digits
    classifier, _ = champion
    detector = context.detector
    denoiser = train_denoiser(classifier, train, FAST_DENOISER).denoiser
    gate = calibrate_gate(denoiser, test.images, 0.9)
    blurred = corrupt(test.images, "motion_blur", 3, seed=2)
    by_size = FilteredClassifier(classifier, denoiser, gate_threshold=gate)
    by_both = FilteredClassifier(classifier, denoiser, gate_threshold=gate, gate_scorer=detector,
                                 gate_score_threshold=detector.sample_threshold)
    flagged = torch.from_numpy(detector.score(blurred) > detector.sample_threshold)
    size_passed = (by_size.clean(blurred) == blurred).flatten(1).all(dim=1)
    both_passed = (by_both.clean(blurred) == blurred).flatten(1).all(dim=1)
    assert flagged.float().mean() > 0.5
    assert not both_passed[flagged & (denoiser.clean(blurred) != blurred).flatten(1).any(dim=1)].any()
    assert torch.equal(both_passed, size_passed & ~flagged)
    assert both_passed.float().mean() < size_passed.float().mean()
    clean_passed = (by_both.clean(test.images) == test.images).flatten(1).all(dim=1).float().mean().item()
    assert clean_passed >= 0.7  # clean images: each gate cleans about a tenth
    with pytest.raises(ValueError, match="a score gate needs both a gate_scorer"):
        FilteredClassifier(classifier, denoiser, gate_score_threshold=1.0)


def test_a_filtered_champion_is_judged_as_it_serves(context):
    from dataclasses import replace

    perfect = type("Oracle", (), {"predict": lambda self, images: torch.full((len(images),), -2)})()
    improver = FilterImprover(FAST_DENOISER)
    judged = replace(context, served_champion=perfect)
    outcome = improver.apply(improver.plan(None, judged), Decision("filter", tuple(range(10)) * 3))
    assert outcome.champion_scores.clean_accuracy == 0.0 and outcome.champion_scores.shifted_accuracy == 0.0
    assert outcome.candidate.gate_scorer is None  # the champion's detector watches filtered images, not raw ones

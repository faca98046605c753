"""The promotion rule: clean accuracy within the margin, then a paired test on labels, then drift for a filter."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from scanflow.improve.promotion import (
    DEFAULT_PROMOTION_ALPHA,
    DRIFT_REDUCTION,
    OUTCOMES,
    DriftEvidence,
    HoldoutScores,
    PairedTest,
    decide,
    more_labels_needed,
    paired_test,
)


def pair(challenger_only: int, champion_only: int, both_right: int = 0, both_wrong: int = 0,
         champion_clean: float = 0.90, challenger_clean: float = 0.897) -> tuple[HoldoutScores, HoldoutScores]:
    """Champion and challenger scored on the same labelled shifted holdout with the given discordant counts."""
    old = (False,) * challenger_only + (True,) * champion_only + (True,) * both_right + (False,) * both_wrong
    new = (True,) * challenger_only + (False,) * champion_only + (True,) * both_right + (False,) * both_wrong

    def scores(clean: float, correct: tuple[bool, ...]) -> HoldoutScores:
        return HoldoutScores(clean, sum(correct) / len(correct), 1000, len(correct), correct)

    return scores(champion_clean, old), scores(challenger_clean, new)


def test_six_labels_going_from_0_to_0_5_are_not_enough_to_promote():
    champion, challenger = pair(challenger_only=3, champion_only=0, both_wrong=3)
    assert (champion.shifted_accuracy, challenger.shifted_accuracy) == (0.0, 0.5)
    verdict = decide(champion, challenger)
    assert not verdict.promote and verdict.outcome == "not enough labels" and verdict.evidence == "labels"
    # p = P[Bin(3, 1/2) >= 3] = 1/8. At rates 3/6 vs 0/6, a total of N images gives floor(N/2) challenger-only pairs;
    # 2**-5 = 0.03125 <= 0.05 < 2**-4 needs 5 of them, so N = 10: 4 more holdout images.
    assert verdict.p_value == 0.125 and verdict.more_labels_needed == 4
    assert verdict.reason == (
        "not enough labels to decide: on 6 labelled holdout images the challenger alone was right on 3 and the champion "
        "alone on 0 (paired exact test p = 0.125 > alpha 0.05); about 4 more labelled samples would decide if these "
        "rates hold")


def test_the_labels_asked_for_are_scaled_by_the_holdout_share():
    champion, challenger = pair(challenger_only=3, champion_only=0, both_wrong=3)
    # 4 holdout images when 30 % of the labels land in the holdout: ceil(4 / 0.3) = ceil(13.3) = 14.
    assert decide(champion, challenger, holdout_share=0.3).more_labels_needed == 14
    champion, challenger = pair(challenger_only=2, champion_only=0, both_wrong=4)
    # 9 holdout images (see test_more_labels_needed): 9 / 0.3 is 30.000000000000004 in floats, still 30 labels.
    verdict = decide(champion, challenger, holdout_share=0.3)
    assert verdict.more_labels_needed == 30 and "about 30 more labelled samples" in verdict.reason


def test_a_clear_win_on_the_labels_is_promoted():
    champion, challenger = pair(challenger_only=12, champion_only=0, both_right=5, both_wrong=3)
    verdict = decide(champion, challenger)
    assert verdict.promote and verdict.outcome == "promoted" and verdict.evidence == "labels"
    assert verdict.p_value == 2**-12 and verdict.p_value < 0.05 and verdict.more_labels_needed is None
    assert verdict.reason == (
        "the challenger is better on the labelled holdout: on 20 labelled holdout images the challenger alone was right "
        "on 12 and the champion alone on 0 (paired exact test p = 2.4e-04 <= alpha 0.05); clean accuracy 0.9000 -> 0.8970 "
        "on 1000 images, within the margin 0.0050")


def test_a_significantly_worse_challenger_is_rejected_on_the_labels():
    champion, challenger = pair(challenger_only=1, champion_only=9, both_right=10)
    verdict = decide(champion, challenger)
    # p_worse = P[Bin(10, 1/2) >= 9] = (10 + 1) / 1024; p_better = P[Bin(10, 1/2) >= 1] = 1023 / 1024.
    assert not verdict.promote and verdict.outcome == "rejected" and verdict.evidence == "labels"
    assert verdict.p_value == 1023 / 1024
    assert verdict.reason == (
        "the challenger is worse on the labelled holdout: on 20 labelled holdout images the challenger alone was right "
        "on 1 and the champion alone on 9 (paired exact test p = 0.011 <= alpha 0.05)")


def test_a_challenger_not_ahead_keeps_the_champion_without_asking_for_labels():
    champion, challenger = pair(challenger_only=1, champion_only=1, both_right=4)
    verdict = decide(champion, challenger)
    assert not verdict.promote and verdict.outcome == "not enough labels" and verdict.evidence == "labels"
    assert verdict.more_labels_needed is None and verdict.p_value == 0.75
    assert verdict.reason == (
        "not enough labels: the challenger is not ahead on the labelled holdout, the champion is kept: on 6 labelled "
        "holdout images the challenger alone was right on 1 and the champion alone on 1 (paired exact test p = 0.750 > "
        "alpha 0.05)")


def test_a_clean_loss_beyond_the_margin_is_shown_at_the_precision_of_the_rule():
    verdict = decide(HoldoutScores(0.900, None, 1000, 0), HoldoutScores(0.894, None, 1000, 0), margin=0.005)
    assert not verdict.promote and verdict.outcome == "rejected" and verdict.evidence == "clean accuracy"
    assert verdict.reason == ("the challenger loses 0.0060 clean accuracy (6 of 1000 images), more than the margin 0.0050")


def test_no_rounding_makes_a_failing_comparison_look_like_a_pass():
    # A loss of 0.00504 shows as 0.0050 at 4 decimals, equal to the margin: one more decimal keeps it visibly larger.
    verdict = decide(HoldoutScores(0.9, None, 100_000, 0), HoldoutScores(0.89496, None, 100_000, 0), margin=0.005)
    assert verdict.reason == "the challenger loses 0.00504 clean accuracy (504 of 100000 images), more than the margin 0.00500"
    # p = 2**-5 = 0.03125 shows as 0.031 at 3 decimals, equal to alpha 0.031 although it fails it.
    champion, challenger = pair(challenger_only=5, champion_only=0)
    verdict = decide(champion, challenger, alpha=0.031)
    assert verdict.outcome == "not enough labels" and "(paired exact test p = 0.0312 > alpha 0.0310)" in verdict.reason
    # 2**-6 <= 0.031 at the same all-discordant rate: 1 more image.
    assert verdict.more_labels_needed == 1 and "about 1 more labelled sample would decide" in verdict.reason


def test_a_loss_equal_to_the_margin_is_allowed():
    champion, challenger = pair(challenger_only=5, champion_only=0, champion_clean=0.9, challenger_clean=0.895)
    assert decide(champion, challenger, margin=0.005).promote


def test_a_filter_that_removes_the_drift_is_promoted_without_labels():
    drift = DriftEvidence(raw_statistic=56.8, filtered_statistic=3.0, threshold=2.0)
    verdict = decide(HoldoutScores(0.90, None, 1000, 0), HoldoutScores(0.897, None, 1000, 0), drift=drift)
    assert verdict.promote and verdict.outcome == "promoted" and verdict.evidence == "drift statistic"
    assert verdict.p_value is None and verdict.more_labels_needed is None
    # Allowed filtered statistic: 2.0 + (1 - 0.3) * (56.8 - 2.0) = 40.36.
    assert verdict.reason == (
        "the filter removes the drift: statistic 56.80 -> 3.00, threshold 2.00 (a filter must bring it to at most 40.36, "
        "the threshold plus 70% of the raw excess); clean accuracy 0.9000 -> 0.8970 on 1000 images, within the margin "
        "0.0050")


def test_a_filter_that_leaves_the_drift_is_rejected():
    drift = DriftEvidence(raw_statistic=56.8, filtered_statistic=45.0, threshold=2.0)
    verdict = decide(HoldoutScores(0.90, None, 1000, 0), HoldoutScores(0.90, None, 1000, 0), drift=drift)
    assert not verdict.promote and verdict.outcome == "rejected" and verdict.evidence == "drift statistic"
    assert verdict.reason == (
        "the filter leaves the drift: statistic 56.80 -> 45.00, threshold 2.00 (a filter must bring it to at most 40.36, "
        "the threshold plus 70% of the raw excess)")


def test_undecided_labels_are_named_when_the_drift_statistic_decides():
    champion, challenger = pair(challenger_only=2, champion_only=0, both_wrong=4)
    verdict = decide(champion, challenger, drift=DriftEvidence(56.8, 3.0, 2.0), holdout_share=1.0)
    assert verdict.promote and verdict.evidence == "drift statistic" and verdict.p_value == 0.25
    assert verdict.reason.endswith(
        "; the labels were undecided: on 6 labelled holdout images the challenger alone was right on 2 and the champion "
        "alone on 0 (paired exact test p = 0.250 > alpha 0.05)")


def test_labels_saying_worse_beat_a_drift_statistic_saying_better():
    champion, challenger = pair(challenger_only=0, champion_only=6, both_right=4)
    verdict = decide(champion, challenger, drift=DriftEvidence(56.8, 3.0, 2.0))
    assert not verdict.promote and verdict.outcome == "rejected" and verdict.evidence == "labels"
    assert verdict.reason.startswith("the challenger is worse on the labelled holdout")


def test_labels_pointing_against_a_filter_keep_the_drift_statistic_from_promoting_it():
    """Six labels cannot make a filter significantly worse, but a person's labels that favour the champion outweigh a
    drift statistic the filter may move without fixing the classes (stripes inverted back to the wrong side)."""
    champion, challenger = pair(challenger_only=0, champion_only=2, both_right=3, both_wrong=1)
    verdict = decide(champion, challenger, drift=DriftEvidence(56.8, 3.0, 2.0), holdout_share=0.3)
    assert not verdict.promote and verdict.outcome == "rejected" and verdict.evidence == "labels"
    assert verdict.p_value == 1.0 and verdict.more_labels_needed is None
    assert verdict.reason == (
        "the person's labels point against the filter, though not significantly: on 6 labelled holdout images the "
        "challenger alone was right on 0 and the champion alone on 2 (paired exact test p = 1.000 > alpha 0.05); the "
        "drift statistic promotes a filter only when the labels do not")
    tied, tied_challenger = pair(challenger_only=1, champion_only=1, both_right=4)
    assert decide(tied, tied_challenger, drift=DriftEvidence(56.8, 3.0, 2.0)).evidence == "drift statistic"


def test_the_clean_margin_is_checked_before_the_drift_statistic():
    verdict = decide(HoldoutScores(0.90, None, 1000, 0), HoldoutScores(0.80, None, 1000, 0),
                     drift=DriftEvidence(56.8, 3.0, 2.0))
    assert not verdict.promote and verdict.evidence == "clean accuracy"


def test_without_labels_or_drift_evidence_the_critical_samples_are_asked_for():
    verdict = decide(HoldoutScores(0.90, None, 1000, 0), HoldoutScores(0.95, None, 1000, 0))
    assert not verdict.promote and verdict.outcome == "not enough labels" and verdict.evidence == "none"
    # 5 all-discordant pairs are the fewest with 2**-k <= 0.05; at a holdout share of 0.3, ceil(5 / 0.3) = 17 labels.
    assert verdict.more_labels_needed == 5
    assert verdict.reason == (
        "not enough labels: no labelled holdout to judge the challenger on; label the critical samples (at least 5)")
    assert decide(HoldoutScores(0.90, None, 1000, 0), HoldoutScores(0.95, None, 1000, 0),
                  holdout_share=0.3).more_labels_needed == 17


def test_shifted_accuracies_without_per_image_results_decide_nothing():
    verdict = decide(HoldoutScores(0.90, 0.50, 1000, 30), HoldoutScores(0.897, 0.80, 1000, 30))
    assert not verdict.promote and verdict.outcome == "not enough labels" and verdict.evidence == "none"
    assert verdict.p_value is None and verdict.more_labels_needed is None
    assert verdict.reason == ("not enough labels: the shifted holdout scores (0.5000 -> 0.8000 on 30 images) carry no "
                              "per-image results, so no paired test can decide")


@pytest.mark.parametrize("b, c, p_better, p_worse", [
    (5, 0, 1 / 32, 1.0),                      # P[Bin(5) >= 5] = 1/32; P[Bin(5) >= 0] = 1
    (2, 3, (10 + 10 + 5 + 1) / 32, (10 + 5 + 1) / 32),  # P[Bin(5) >= 2] = 26/32; P[Bin(5) >= 3] = 16/32
    (8, 2, (45 + 10 + 1) / 1024, (45 + 120 + 210 + 252 + 210 + 120 + 45 + 10 + 1) / 1024),  # Bin(10): >= 8; >= 2
    (0, 0, 1.0, 1.0),
])
def test_paired_test_matches_hand_computed_binomial_tails(b, c, p_better, p_worse):
    test = paired_test([False] * b + [True] * c + [True, False], [True] * b + [False] * c + [True, False])
    assert test == PairedTest(b + c + 2, b, c, p_better, p_worse)


def test_paired_test_needs_the_same_images():
    with pytest.raises(ValueError, match="3 champion results, 2 challenger results"):
        paired_test([True, True, False], [True, False])


def test_more_labels_needed():
    # b=2, c=0 on 6: a total N gives floor(2N/6) challenger-only pairs; 5 are needed (2**-5 <= 0.05), so N = 15: 9 more.
    assert more_labels_needed(PairedTest(6, 2, 0, 0.25, 1.0)) == 9
    # b=4, c=1 on 10: N=20 gives 8 vs 2, P[Bin(10) >= 8] = 56/1024 = 0.055; N=23,24 give 9 vs 3, 299/4096 = 0.073;
    # N=25 gives 10 vs 3, P[Bin(13) >= 10] = 378/8192 = 0.046 <= 0.05: 15 more.
    assert more_labels_needed(paired_test([False] * 4 + [True] + [True] * 5, [True] * 4 + [False] + [True] * 5)) == 15
    assert more_labels_needed(PairedTest(6, 1, 1, 0.75, 0.75)) is None
    assert more_labels_needed(PairedTest(5, 5, 0, 1 / 32, 1.0)) == 0
    with pytest.raises(ValueError, match="got 0"):
        more_labels_needed(PairedTest(5, 5, 0, 1 / 32, 1.0), alpha=0)


def test_more_labels_needed_stays_fast_for_a_narrow_lead():
    # 101 vs 100 discordant on 201 images: the search must go far beyond the exact-tail range and still end.
    extra = more_labels_needed(PairedTest(201, 101, 100, 0.5, 0.5))
    assert extra is not None and extra > 100_000


def test_holdout_scores_reject_per_image_results_of_the_wrong_length():
    with pytest.raises(ValueError, match="shifted_correct has 2 entries but n_shifted is 3"):
        HoldoutScores(0.9, 0.5, 100, 3, (True, False))
    scores = HoldoutScores(0.9, 0.5, 100, 2, [1, 0])  # type: ignore[arg-type]
    assert scores.shifted_correct == (True, False) and asdict(scores)["shifted_correct"] == (True, False)


def test_drift_evidence_needs_the_raw_batch_over_the_threshold():
    assert DriftEvidence(10.0, 7.6, 2.0).removes_shift            # allowed 2 + 0.7 * 8 = 7.6
    assert not DriftEvidence(10.0, 7.61, 2.0).removes_shift
    assert not DriftEvidence(1.5, 0.1, 2.0).removes_shift
    assert DRIFT_REDUCTION == 0.3
    verdict = decide(HoldoutScores(0.9, None, 10, 0), HoldoutScores(0.9, None, 10, 0), drift=DriftEvidence(1.5, 0.1, 2.0))
    assert not verdict.promote and verdict.reason == (
        "the filter has no drift to remove: the raw batch's statistic 1.50 is not over the threshold 2.00")


def test_the_verdict_serialises_with_its_evidence():
    champion, challenger = pair(challenger_only=3, champion_only=0, both_wrong=3)
    record = decide(champion, challenger).to_dict()
    assert record["outcome"] in OUTCOMES and record["more_labels_needed"] == 4 and record["p_value"] == 0.125
    assert set(record) == {"promote", "reason", "margin", "outcome", "evidence", "p_value", "more_labels_needed"}


@pytest.mark.parametrize("kwargs, message", [
    ({"margin": 5}, "promotion margin must be a fraction in \\[0, 1\\), got 5"),
    ({"alpha": 1.5}, "promotion alpha must be a probability in \\(0, 1\\), got 1.5"),
    ({"holdout_share": 0}, "holdout share must be a fraction in \\(0, 1\\], got 0"),
])
def test_parameters_must_be_fractions(kwargs, message):
    scores = HoldoutScores(0.9, None, 10, 0)
    with pytest.raises(ValueError, match=message):
        decide(scores, scores, **kwargs)
    assert DEFAULT_PROMOTION_ALPHA == 0.05

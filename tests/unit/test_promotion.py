"""The promotion rule: beat the champion on the shifted holdout, lose at most the margin on the clean one."""

from __future__ import annotations

import pytest

from scanflow.improve.promotion import HoldoutScores, decide

CHAMPION = HoldoutScores(clean_accuracy=0.90, shifted_accuracy=0.50, n_clean=1000, n_shifted=30)


def test_a_better_challenger_within_the_margin_is_promoted():
    verdict = decide(CHAMPION, HoldoutScores(0.897, 0.80, 1000, 30), margin=0.005)
    assert verdict.promote
    assert verdict.reason.startswith("the challenger beats the champion: shifted holdout 0.500 -> 0.800 (n=30)")


def test_a_challenger_losing_clean_accuracy_beyond_the_margin_is_rejected():
    verdict = decide(CHAMPION, HoldoutScores(0.88, 0.95, 1000, 30), margin=0.005)
    assert not verdict.promote
    assert verdict.reason.startswith("the challenger loses 0.020 clean accuracy, more than the margin 0.005")


def test_no_gain_on_the_shifted_holdout_keeps_the_champion():
    verdict = decide(CHAMPION, HoldoutScores(0.91, 0.50, 1000, 30))
    assert not verdict.promote and "does not beat the champion on the shifted holdout" in verdict.reason


def test_without_a_shifted_holdout_nothing_is_promoted():
    verdict = decide(CHAMPION, HoldoutScores(0.95, None, 1000, 0))
    assert not verdict.promote
    assert verdict.reason == "no shifted holdout to judge the challenger on: label more critical samples"


def test_margin_must_be_a_fraction():
    with pytest.raises(ValueError, match="promotion margin must be a fraction"):
        decide(CHAMPION, CHAMPION, margin=5)

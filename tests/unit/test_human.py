"""The decision schema: label validation with exact messages, actions, simulated humans."""

from __future__ import annotations

import numpy as np
import pytest

from scanflow.drift.base import DriftResult
from scanflow.human import Decision, InvalidDecisionError, OracleHuman, PolicyHuman, policy_action, validate_labels


def _result(is_drift: bool, share: dict[str, float]) -> DriftResult:
    return DriftResult(
        detector="d", is_drift=is_drift, statistic=3.0, p_value=0.01 if is_drift else 0.5, threshold=2.0, alpha=0.05,
        n=4, sample_scores=np.zeros(4), sample_threshold=1.0, critical_indices=(), details={"strongest_component_share": share},
    )


def test_labels_are_checked_against_what_was_shown():
    assert validate_labels([3, "1", 0.0], 3, 10) == (3, 1, 0)
    assert validate_labels("3, 1,0", 3, 10) == (3, 1, 0)
    assert validate_labels("3, ?, -", 3, 10) == (3, None, None)
    assert validate_labels([None, 2, "not sure"], 3, 10) == (None, 2, None)
    with pytest.raises(InvalidDecisionError, match=r"^got 2 labels for 3 critical samples: give one label per sample shown, in the order shown \(\? for a sample you do not label\)$"):
        validate_labels([1, 2], 3, 10)
    with pytest.raises(InvalidDecisionError, match=r"^label 1 is 10: labels are class indices 0\.\.9, or \? for a sample you do not label$"):
        validate_labels([1, 10, 2], 3, 10)
    with pytest.raises(InvalidDecisionError, match=r"^label 0 is 'shoe': labels are class indices 0\.\.9, or \? for a sample you do not label$"):
        validate_labels(["shoe"], 1, 10)
    with pytest.raises(InvalidDecisionError, match=r"^label 0 is 1\.5"):
        validate_labels([1.5], 1, 10)
    with pytest.raises(InvalidDecisionError, match=r"^label 0 is -1"):
        validate_labels([-1], 1, 10)


def test_decisions_name_the_allowed_actions():
    with pytest.raises(InvalidDecisionError, match=r"^unknown action 'reboot': choose one of retrain, filter, ignore$"):
        Decision("reboot")
    with pytest.raises(InvalidDecisionError, match=r"^retrain needs labels: label at least one of the 2 samples shown \(untouched guesses are not labels\), or choose filter, which needs none$"):
        Decision.checked("retrain", [], 2, 10)
    with pytest.raises(InvalidDecisionError, match=r"^retrain needs labels"):
        Decision.checked("retrain", [None, "?"], 2, 10)
    partial = Decision.checked("retrain", [None, 3], 2, 10)
    assert partial.labels == (None, 3) and partial.labelled_positions == (1,)
    assert Decision.checked("filter", [None, None], 2, 10).labels == ()
    assert Decision.checked("filter", None, 2, 10).labels == ()
    assert Decision.checked("filter", [1, 2], 2, 10).labels == (1, 2)
    decision = Decision.checked("retrain", [4, 2], 2, 10, note="boots", decided_by="oracle")
    assert Decision.from_dict(decision.to_dict()) == decision


def test_policy_filters_pixel_damage_and_retrains_otherwise():
    assert policy_action(_result(True, {"reconstruction": 0.6, "latent": 0.4})) == "filter"
    assert policy_action(_result(True, {"reconstruction": 0.3, "pixels": 0.3, "latent": 0.4})) == "filter"
    assert policy_action(_result(True, {"reconstruction": 0.2, "latent": 0.8})) == "retrain"
    assert policy_action(_result(False, {"reconstruction": 0.9})) == "ignore"


def test_simulated_humans_answer_through_the_decision_schema():
    true_labels = np.array([5, 6, 7, 8])
    oracle = OracleHuman(true_labels, action="retrain").decide("filter", [3, 0])
    assert oracle == Decision("retrain", (8, 5), "simulated: true labels", "oracle")
    assert OracleHuman(true_labels).decide(policy_action(_result(True, {"pixels": 0.9})), [1]).action == "filter"
    policy = PolicyHuman().decide(policy_action(_result(True, {"latent": 1.0})), [3, 0])
    assert policy.action == "filter" and policy.labels == () and policy.decided_by == "policy"
    assert PolicyHuman().decide("retrain", [3, 0], offered=("retrain", "ignore")).action == "ignore"  # a filter champion


def test_only_a_standing_decision_makes_a_known_shift():
    from scanflow.human import Decision, makes_known_shift

    ignore, filter_, retrain = (Decision.checked(action, [1, 2] if action == "retrain" else None, 2, 10, "", "human")
                                for action in ("ignore", "filter", "retrain"))
    assert makes_known_shift(ignore, promoted=False) and makes_known_shift(filter_, promoted=True)
    assert makes_known_shift(retrain, promoted=True) and not makes_known_shift(retrain, promoted=False)
    assert not makes_known_shift(filter_, promoted=False)
    timed_out = Decision.checked("ignore", None, 2, 10, "pause timed out", "timeout")
    assert not makes_known_shift(timed_out, promoted=False)


def test_a_known_shift_is_made_of_every_row_after_an_ignore_and_of_the_unseen_rows_after_a_promotion():
    from scanflow.human import Decision, known_shift_rows

    ignore = Decision.checked("ignore", None, 2, 10, "", "human")
    retrain = Decision.checked("retrain", [1, 2], 2, 10, "", "oracle")
    assert known_shift_rows(ignore, False, (), 12) == list(range(12))
    assert known_shift_rows(retrain, True, range(3, 15), 20) == list(range(3, 15))
    assert known_shift_rows(retrain, False, range(3, 15), 20) == []
    assert known_shift_rows(retrain, True, range(3, 8), 20) == [] and known_shift_rows(ignore, False, (), 9) == []

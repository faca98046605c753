"""The decision form without a server: its schema (what the Prefect server validates against), and that labels
reach the improve flow only where a person gave them, from every door (the UI's submitted form, `scanflow answer`,
Python callers, the oracle, the policy, a timeout)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from pydantic import ValidationError

from flows.supervise import decision_form, form_answer, labels_of, sample_field
from scanflow.human import NOT_SURE, Decision, InvalidDecisionError, OracleHuman, PolicyHuman, guess_choice, validate_labels
from scanflow.supervision import DecisionRequest

CLASSES = ("T-shirt/top", "Trouser", "Pullover")


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("L", (96, 96), 128).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


REQUEST = DecisionRequest(
    batch_id="batch-002", model_version="3", statistic=56.8, threshold=2.1, p_value=0.001, n_critical=150, n=200,
    recommended="filter", classes=CLASSES, shown=(17, 4, 9), scores=(5.5, 4.25, 3.0), guesses=(1, 1, 0),
    thumbnails_b64=(_png(),) * 3, grid_png_b64=_png(), mlflow_run_id="run-1",
)


def test_the_form_offers_class_names_per_sample_with_the_guess_marked_and_preselected():
    schema = decision_form(REQUEST).model_json_schema()
    names = list(schema["properties"])
    assert names == ["action", "sample_01", "sample_02", "sample_03", "note"]
    first = schema["properties"]["sample_01"]
    assert first["enum"] == [guess_choice("Trouser"), *CLASSES, NOT_SURE] and first["default"] == guess_choice("Trouser")
    assert first["title"] == "Sample #1"
    assert first["description"].startswith("![sample #1](data:image/png;base64,")
    assert "**#1** · batch row 17 · score 5.50 · model's guess: Trouser" in first["description"]
    assert schema["properties"]["action"]["default"] == "filter"
    assert "Drift statistic **56.80** against the threshold 2.10" in schema["properties"]["action"]["description"]


def test_the_form_refuses_an_unknown_class_or_action():
    form = decision_form(REQUEST)
    with pytest.raises(ValidationError):
        form(**{**form_answer(REQUEST, "filter", None), "sample_02": "Sneaker"})
    with pytest.raises(ValidationError):
        form(**{**form_answer(REQUEST, "filter", None), "action": "reboot"})


def test_an_untouched_form_labels_nothing_and_picked_classes_are_labels():
    form = decision_form(REQUEST)
    untouched = form(**form_answer(REQUEST, "filter", None))
    assert labels_of(untouched, REQUEST) == [None, None, None]
    assert Decision.checked("filter", labels_of(untouched, REQUEST), 3, 3).labels == ()
    answered = form(**{"action": "retrain", sample_field(0): "Trouser", sample_field(1): NOT_SURE})
    assert labels_of(answered, REQUEST) == [1, None, None]  # confirmed guess, not sure, untouched guess
    with pytest.raises(InvalidDecisionError, match="retrain needs labels"):
        Decision.checked("retrain", labels_of(form(**form_answer(REQUEST, "retrain", None)), REQUEST), 3, 3)


def test_every_door_reaches_the_flow_with_only_the_labels_given():
    form = decision_form(REQUEST)
    through_form = lambda decision: labels_of(form(**form_answer(REQUEST, decision.action, decision.labels)), REQUEST)  # noqa: E731
    cli = validate_labels("2, ?, -", 3, 3)  # `scanflow answer --labels 2,?,-`
    assert through_form(Decision("retrain", cli)) == [2, None, None]
    assert through_form(Decision("filter")) == [None, None, None]  # Python caller without labels, a timeout
    policy = PolicyHuman().decide("retrain", REQUEST.shown)
    assert policy.labels == () and through_form(policy) == [None, None, None]
    oracle = OracleHuman(true_labels=[k % 3 for k in range(20)]).decide("filter", REQUEST.shown)
    assert through_form(oracle) == [17 % 3, 4 % 3, 9 % 3]

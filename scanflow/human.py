"""The decision a person takes on a drifted batch, shared by the Prefect form, the CLI and the simulated humans.

A decision is an action (retrain, filter or ignore), the labels of the critical samples in the order they were
shown, an optional note and who decided (a person, the oracle, the policy, or a timeout falling back to the
policy's default). Labels are checked against what was shown before anything is trained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from scanflow.drift.base import DriftResult
from scanflow.errors import ScanflowError

ACTIONS = ("retrain", "filter", "ignore")
DECIDERS = ("human", "oracle", "policy", "timeout")


class InvalidDecisionError(ScanflowError):
    """A decision that cannot be carried out as given (unknown action, wrong number of labels, unknown class)."""


#: What a person answers for a sample they cannot or do not want to label (the CLI also takes "?").
NOT_SURE = "not sure"
#: Tokens of a label list (CLI, JSON) that mean "not labelled": the sample neither trains nor judges a model.
UNLABELLED_TOKENS = ("?", "-", NOT_SURE)


def validate_labels(labels: Sequence[Any] | None, n_shown: int, n_classes: int) -> tuple[int | None, ...]:
    """One entry per shown sample: a class index the person gave, or None where they gave none (None, "?", "-" or
    "not sure"). Raises InvalidDecisionError naming the position and the fix when a count or a value is wrong."""
    if labels is None:
        labels = ()
    if isinstance(labels, str):
        labels = [part.strip() for part in labels.split(",") if part.strip()]
    values = list(labels)
    if len(values) != n_shown:
        raise _label_count_error(len(values), n_shown)
    return tuple(_checked_label(position, value, n_classes) for position, value in enumerate(values))


def parse_labels(text: str) -> list[int | None]:
    """A comma-separated label list as typed on a command line ("3,?,0"): class indices, None for "?" or "-".
    Raises InvalidDecisionError naming the first entry that is neither; ranges are checked against the model later."""
    labels: list[int | None] = []
    for position, part in enumerate(p.strip() for p in text.split(",") if p.strip()):
        if part.lower() in UNLABELLED_TOKENS:
            labels.append(None)
            continue
        try:
            labels.append(int(part))
        except ValueError:
            raise InvalidDecisionError(f"label {position} is {part!r}: labels are class indices, or ? for a sample you do not label") from None
    return labels


def _label_count_error(n_labels: int, n_shown: int) -> InvalidDecisionError:
    return InvalidDecisionError(f"got {n_labels} labels for {n_shown} critical samples: give one label per sample shown, "
                                "in the order shown (? for a sample you do not label)")


def _retrain_needs_labels_error(n_shown: int) -> InvalidDecisionError:
    return InvalidDecisionError(f"retrain needs labels: label at least one of the {n_shown} samples shown (untouched "
                                "guesses are not labels), or choose filter, which needs none")


def check_shown_rows(shown: Sequence[Any], n_images: int) -> tuple[int, ...]:
    """The batch rows shown to a person (`--shown`), checked against a batch of `n_images` images: each an integer
    row 0..n_images-1, none repeated, at least one. Raises InvalidDecisionError naming the first bad row and the fix;
    the CLI and the improve flow both call it before any model is loaded or any run opened."""
    if not shown:
        raise InvalidDecisionError("no rows shown (--shown): give the batch rows shown to the person, in order "
                                   "(the detect result's selected_indices)")
    rows: list[int] = []
    for value in shown:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InvalidDecisionError(f"shown row {value!r} (--shown) is not a batch row: rows are integers 0..{n_images - 1}")
        rows.append(int(value))
    repeated = sorted({row for row in rows if rows.count(row) > 1})
    if repeated:
        raise InvalidDecisionError(f"--shown repeats row {', '.join(map(str, repeated))}: list each critical sample once, "
                                   "in the order shown")
    outside = [row for row in rows if row >= n_images]
    if outside:
        raise InvalidDecisionError(f"--shown row {outside[0]} is outside the batch of {n_images} images: rows are "
                                   f"0..{n_images - 1}")
    return tuple(rows)


def check_decision_form(action: str, labels: Sequence[int | None] | None, n_shown: int) -> None:
    """What can be checked of a decision without the model (class ranges need it, see `Decision.checked`): a known
    action, one label per row shown, no negative label, and at least one label to retrain. Raises
    InvalidDecisionError naming the problem and the fix."""
    if action not in ACTIONS:
        raise InvalidDecisionError(f"unknown action {action!r}: choose one of {', '.join(ACTIONS)}")
    if labels is not None and len(labels) != n_shown:
        raise _label_count_error(len(labels), n_shown)
    negative = [(position, label) for position, label in enumerate(labels or ())
                if isinstance(label, (int, np.integer)) and label < 0]
    if negative:
        position, label = negative[0]
        raise InvalidDecisionError(f"label {position} is {label}: labels are class indices (0 and up), or ? for a sample "
                                   "you do not label")
    if action == "retrain" and not any(label is not None for label in labels or ()):
        raise _retrain_needs_labels_error(n_shown)


def _checked_label(position: int, value: Any, n_classes: int) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in UNLABELLED_TOKENS):
        return None
    hint = f"labels are class indices 0..{n_classes - 1}, or ? for a sample you do not label"
    try:
        label = int(value)
        if isinstance(value, float) and not float(value).is_integer():
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidDecisionError(f"label {position} is {value!r}: {hint}") from None
    if not 0 <= label < n_classes:
        raise InvalidDecisionError(f"label {position} is {label}: {hint}")
    return label


@dataclass(frozen=True)
class Decision:
    """What to do about one drifted batch. `labels` has one entry per shown sample, in the order shown: the class a
    person gave (set or confirmed), or None (not labelled: an untouched guess, "not sure"). Only given labels train
    or judge a model; `labels` is empty when nothing was labelled."""

    action: str
    labels: tuple[int | None, ...] = ()
    note: str = ""
    decided_by: str = "human"

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise InvalidDecisionError(f"unknown action {self.action!r}: choose one of {', '.join(ACTIONS)}")
        if self.decided_by not in DECIDERS:
            raise InvalidDecisionError(f"unknown decider {self.decided_by!r}: one of {', '.join(DECIDERS)}")
        if all(label is None for label in self.labels):
            object.__setattr__(self, "labels", ())

    @property
    def labelled_positions(self) -> tuple[int, ...]:
        """Positions (in the order shown) of the samples a person labelled."""
        return tuple(position for position, label in enumerate(self.labels) if label is not None)

    @classmethod
    def checked(cls, action: str, labels: Sequence[Any] | None, n_shown: int, n_classes: int, note: str = "", decided_by: str = "human") -> "Decision":
        """A decision whose labels were validated against the `n_shown` samples and `n_classes` classes.

        Retraining needs at least one given label; filtering and ignoring accept none (a filter is then judged on
        evidence that needs no labels). Raises InvalidDecisionError naming what is wrong.
        """
        given = validate_labels(labels, n_shown, n_classes) if labels else ()
        if action == "retrain" and not any(label is not None for label in given):
            raise _retrain_needs_labels_error(n_shown)
        return cls(action, given, note, decided_by)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Decision":
        return cls(data["action"], tuple(data.get("labels", ())), data.get("note", ""), data.get("decided_by", "human"))


def guess_choice(class_name: str) -> str:
    """The pre-selected choice of a sample in the decision form: the model's guess, marked as a guess. Submitting it
    untouched labels nothing; picking the class name itself confirms the guess."""
    return f"model's guess: {class_name} (not a label until you pick it)"


def sample_choices(classes: Sequence[str], guess: int) -> tuple[str, ...]:
    """What a person can answer for one sample: the untouched guess, every class name, or "not sure"."""
    return (guess_choice(classes[guess]), *classes, NOT_SURE)


def labels_from_choices(choices: Sequence[str], classes: Sequence[str]) -> tuple[int | None, ...]:
    """The labels a form answer gives: a class name is a label, an untouched guess or "not sure" is none."""
    index = {name: k for k, name in enumerate(classes)}
    return tuple(index.get(choice) for choice in choices)


def choices_for(labels: Sequence[int | None], classes: Sequence[str], guesses: Sequence[int]) -> list[str]:
    """The form answer that gives `labels` (None: leave the sample's guess untouched); the inverse of
    `labels_from_choices` for answers sent by the CLI and the simulated humans."""
    if len(labels) != len(guesses):
        raise InvalidDecisionError(f"got {len(labels)} labels for {len(guesses)} critical samples: give one per sample shown")
    return [guess_choice(classes[guess]) if label is None else classes[label] for label, guess in zip(labels, guesses)]


def check_class_names(classes: Sequence[str]) -> tuple[str, ...]:
    """Class names usable as form choices: unique, non-empty, none equal to "not sure"."""
    names = tuple(str(name) for name in classes)
    if len(set(names)) != len(names) or any(not name.strip() or name == NOT_SURE for name in names):
        raise InvalidDecisionError(f"class names must be unique, non-empty and not {NOT_SURE!r}: got {list(names)}")
    return names


#: Views of the autoencoder detector that see pixel-level damage (what a denoiser can undo).
PIXEL_LEVEL_VIEWS = ("reconstruction", "pixels")


def policy_action(result: DriftResult, offered: tuple[str, ...] = ACTIONS) -> str:
    """The action the policy recommends from the detector's evidence, among the `offered` ones (the first offered
    when the evidence points to one the model cannot carry out).

    When most critical samples are strangest in a pixel-level view (the autoencoder cannot reconstruct them, or
    their pixel statistics moved), the damage is what a denoiser removes: filter. Otherwise (shapes moved, scaled,
    rotated; the image is intact but different) the model has to learn it: retrain.
    """
    if not result.is_drift:
        return "ignore"
    evidence = _evidence_action(result)
    return evidence if evidence in offered else offered[0]


def _evidence_action(result: DriftResult) -> str:
    share = result.details.get("strongest_component_share", {})
    if share and sum(share.get(view, 0.0) for view in PIXEL_LEVEL_VIEWS) > 0.5:
        return "filter"
    return "retrain"


@dataclass(frozen=True)
class OracleHuman:
    """A simulated person who knows the true labels of the batch (kept beside the stream, never in the batch)."""

    true_labels: np.ndarray
    action: str | None = None

    def decide(self, recommended_action: str, shown_indices: Sequence[int], offered: Sequence[str] = ACTIONS) -> Decision:
        """The recommended action (`policy_action` of the drift result, or the fixed `action`) with the true labels
        of the shown samples. (`offered`: the decisions the champion can carry out; the recommendation is one.)"""
        labels = tuple(int(self.true_labels[i]) for i in shown_indices)
        return Decision(self.action or recommended_action, labels, note="simulated: true labels", decided_by="oracle")


@dataclass(frozen=True)
class PolicyHuman:
    """A simulated decider without labels: follows the recommended action; retraining falls back to filtering,
    since it cannot label anything, and to ignoring when the champion cannot be filtered (`offered`)."""

    def decide(self, recommended_action: str, shown_indices: Sequence[int], offered: Sequence[str] = ACTIONS) -> Decision:
        action = recommended_action
        if action == "retrain":
            action = "filter" if "filter" in offered else "ignore"
        return Decision(action, (), note="simulated: policy without labels", decided_by="policy")


def makes_known_shift(decision: Decision, promoted: bool) -> bool:
    """Whether a decision turns its batch into a known shift: a person's (or a simulated person's) ignore, or a
    promoted challenger (filter or retrain). Not a timed-out pause (nobody decided) and not a rejected challenger
    (the champion that failed to handle the shift still serves: the next batch like it deserves a question). A
    retrain's record is made of the batch rows it did not learn from (`ImprovementOutcome.unseen_rows`): rows it
    learned from look to it unlike a fresh batch of the same shift."""
    if decision.decided_by == "timeout":
        return False
    return decision.action == "ignore" or promoted


#: Fewer unseen rows than this make no known shift (too few to test a later batch against).
MIN_KNOWN_SHIFT_ROWS = 10


def known_shift_rows(decision: Decision, promoted: bool, unseen_rows: Sequence[int], n_rows: int) -> list[int]:
    """The batch rows a decision's known shift is made of: every row after an ignore, the rows the promoted
    challenger did not learn from (`unseen_rows`) otherwise; none when the decision makes no known shift or fewer
    than MIN_KNOWN_SHIFT_ROWS rows remain."""
    if not makes_known_shift(decision, promoted):
        return []
    rows = list(range(n_rows)) if decision.action == "ignore" else [int(row) for row in unseen_rows]
    return rows if len(rows) >= MIN_KNOWN_SHIFT_ROWS else []

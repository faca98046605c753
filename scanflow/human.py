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


def validate_labels(labels: Sequence[Any] | None, n_shown: int, n_classes: int) -> tuple[int, ...]:
    """The labels as a tuple of class indices, or an error naming what is wrong and how to fix it."""
    if labels is None:
        labels = ()
    if isinstance(labels, str):
        labels = [part for part in labels.replace(" ", ",").split(",") if part]
    values = list(labels)
    if len(values) != n_shown:
        raise InvalidDecisionError(
            f"got {len(values)} labels for {n_shown} critical samples: give one label per sample shown, in the order shown"
        )
    checked = []
    for position, value in enumerate(values):
        try:
            label = int(value)
            if isinstance(value, float) and not float(value).is_integer():
                raise ValueError
        except (TypeError, ValueError):
            raise InvalidDecisionError(f"label {position} is {value!r}: labels are class indices 0..{n_classes - 1}") from None
        if not 0 <= label < n_classes:
            raise InvalidDecisionError(f"label {position} is {label}: labels are class indices 0..{n_classes - 1}")
        checked.append(label)
    return tuple(checked)


@dataclass(frozen=True)
class Decision:
    """What to do about one drifted batch. `labels` are class indices of the shown samples, in the order shown."""

    action: str
    labels: tuple[int, ...] = ()
    note: str = ""
    decided_by: str = "human"

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise InvalidDecisionError(f"unknown action {self.action!r}: choose one of {', '.join(ACTIONS)}")
        if self.decided_by not in DECIDERS:
            raise InvalidDecisionError(f"unknown decider {self.decided_by!r}: one of {', '.join(DECIDERS)}")

    @classmethod
    def checked(cls, action: str, labels: Sequence[Any] | None, n_shown: int, n_classes: int, note: str = "", decided_by: str = "human") -> "Decision":
        """A decision whose labels were validated against the `n_shown` samples and `n_classes` classes.

        Retraining needs the labels; filtering and ignoring accept them when given (they become the shifted
        holdout that judges a filter) and accept none at all.
        """
        if action != "retrain" and not labels:
            return cls(action, (), note, decided_by)
        return cls(action, validate_labels(labels, n_shown, n_classes), note, decided_by)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Decision":
        return cls(data["action"], tuple(data.get("labels", ())), data.get("note", ""), data.get("decided_by", "human"))


#: Views of the autoencoder detector that see pixel-level damage (what a denoiser can undo).
PIXEL_LEVEL_VIEWS = ("reconstruction", "pixels")


def policy_action(result: DriftResult) -> str:
    """The action the policy recommends from the detector's evidence.

    When most critical samples are strangest in a pixel-level view (the autoencoder cannot reconstruct them, or
    their pixel statistics moved), the damage is what a denoiser removes: filter. Otherwise (shapes moved, scaled,
    rotated; the image is intact but different) the model has to learn it: retrain.
    """
    if not result.is_drift:
        return "ignore"
    share = result.details.get("strongest_component_share", {})
    if share and sum(share.get(view, 0.0) for view in PIXEL_LEVEL_VIEWS) > 0.5:
        return "filter"
    return "retrain"


@dataclass(frozen=True)
class OracleHuman:
    """A simulated person who knows the true labels of the batch (kept beside the stream, never in the batch)."""

    true_labels: np.ndarray
    action: str | None = None

    def decide(self, recommended_action: str, shown_indices: Sequence[int]) -> Decision:
        """The recommended action (`policy_action` of the drift result, or the fixed `action`) with the true labels
        of the shown samples."""
        labels = tuple(int(self.true_labels[i]) for i in shown_indices)
        return Decision(self.action or recommended_action, labels, note="simulated: true labels", decided_by="oracle")


@dataclass(frozen=True)
class PolicyHuman:
    """A simulated decider without labels: follows the recommended action; retraining falls back to filtering,
    since it cannot label anything."""

    def decide(self, recommended_action: str, shown_indices: Sequence[int]) -> Decision:
        action = "filter" if recommended_action == "retrain" else recommended_action
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

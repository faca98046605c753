"""Champion/challenger promotion: a new version replaces the champion only if it earns it.

The rule: the challenger must beat the champion on the shifted holdout (what the drift was about) and may lose at
most `margin` accuracy on the clean holdout (what the champion was trained for). Anything else keeps the champion,
and the verdict says which condition failed, with the numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: Clean-holdout accuracy a challenger may lose and still be promoted (fraction, 0.005 = half a point).
DEFAULT_PROMOTION_MARGIN = 0.005


@dataclass(frozen=True)
class HoldoutScores:
    """Accuracy (fraction 0..1) of one model on the clean and the shifted holdout, and their sizes."""

    clean_accuracy: float
    shifted_accuracy: float | None
    n_clean: int
    n_shifted: int


@dataclass(frozen=True)
class PromotionVerdict:
    promote: bool
    reason: str
    margin: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def decide(champion: HoldoutScores, challenger: HoldoutScores, margin: float = DEFAULT_PROMOTION_MARGIN) -> PromotionVerdict:
    """Promote `challenger` over `champion` or say why not (see the module docstring)."""
    if not 0 <= margin < 1:
        raise ValueError(f"promotion margin must be a fraction in [0, 1), got {margin}")
    if challenger.shifted_accuracy is None or champion.shifted_accuracy is None or challenger.n_shifted == 0:
        return PromotionVerdict(False, "no shifted holdout to judge the challenger on: label more critical samples", margin)
    clean_loss = champion.clean_accuracy - challenger.clean_accuracy
    shifted_gain = challenger.shifted_accuracy - champion.shifted_accuracy
    numbers = (
        f"shifted holdout {champion.shifted_accuracy:.3f} -> {challenger.shifted_accuracy:.3f} "
        f"(n={challenger.n_shifted}), clean holdout {champion.clean_accuracy:.3f} -> {challenger.clean_accuracy:.3f} "
        f"(n={challenger.n_clean})"
    )
    if shifted_gain <= 0:
        return PromotionVerdict(False, f"the challenger does not beat the champion on the shifted holdout: {numbers}", margin)
    if clean_loss > margin + 1e-12:
        return PromotionVerdict(
            False, f"the challenger loses {clean_loss:.3f} clean accuracy, more than the margin {margin:.3f}: {numbers}", margin
        )
    return PromotionVerdict(True, f"the challenger beats the champion: {numbers}", margin)

"""Improving a model after drift: retrain on labelled critical samples, or filter its inputs; promote or not."""

from scanflow.improve.base import (
    DEFAULT_HOLDOUT_FRACTION,
    ImprovementContext,
    ImprovementOutcome,
    ImprovementPlan,
    ImprovementReport,
    Improver,
    clean_data,
    holdout_scores,
    improvement_markdown,
)
from scanflow.improve.filter import DenoiserConfig, FilteredClassifier, FilterImprover, train_denoiser
from scanflow.improve.promotion import DEFAULT_PROMOTION_MARGIN, HoldoutScores, PromotionVerdict, check_promotion_margin, decide
from scanflow.improve.retrain import RetrainConfig, RetrainImprover, fine_tune
from scanflow.human import ACTIONS, InvalidDecisionError


def check_improve_steps(steps: int | None) -> int | None:
    """`steps` when it is None (each improver's default) or a whole count >= 1; checked before any work starts.
    Raises InvalidDecisionError naming the value and the defaults."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise InvalidDecisionError(
            f"steps must be a whole number of optimisation steps, at least 1, got {steps!r}: leave it unset for the "
            f"defaults ({RetrainConfig.steps} per retraining round, {DenoiserConfig.steps} for a filter's denoiser)")
    return steps


def improver_for(action: str, steps: int | None = None) -> Improver:
    """The improver that carries out `action` ("retrain" or "filter"), with its default settings, or with `steps`
    optimisation steps (per retraining round, or the denoiser's) in place of the default: fewer steps train faster
    and fit the shift less. Raises InvalidDecisionError for another action or a bad step count."""
    improvers = {"retrain": RetrainImprover, "filter": FilterImprover}
    if action not in improvers:
        raise InvalidDecisionError(f"no improver for {action!r}: choose retrain or filter ('ignore' changes nothing)")
    if check_improve_steps(steps) is None:
        return improvers[action]()
    if action == "retrain":
        return RetrainImprover(RetrainConfig(steps=steps))
    return FilterImprover(DenoiserConfig(steps=steps))


__all__ = [
    "ACTIONS", "DEFAULT_HOLDOUT_FRACTION", "DEFAULT_PROMOTION_MARGIN", "DenoiserConfig", "FilterImprover",
    "FilteredClassifier", "HoldoutScores", "ImprovementContext", "ImprovementOutcome", "ImprovementPlan", "ImprovementReport", "Improver",
    "PromotionVerdict", "RetrainConfig", "check_improve_steps", "check_promotion_margin", "clean_data", "RetrainImprover", "decide", "fine_tune", "holdout_scores", "improvement_markdown", "improver_for",
    "train_denoiser",
]

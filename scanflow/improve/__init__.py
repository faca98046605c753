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


def improver_for(action: str) -> Improver:
    """The improver that carries out `action` ("retrain" or "filter"), with its default settings."""
    improvers = {"retrain": RetrainImprover, "filter": FilterImprover}
    if action not in improvers:
        raise InvalidDecisionError(f"no improver for {action!r}: choose retrain or filter ('ignore' changes nothing)")
    return improvers[action]()


__all__ = [
    "ACTIONS", "DEFAULT_HOLDOUT_FRACTION", "DEFAULT_PROMOTION_MARGIN", "DenoiserConfig", "FilterImprover",
    "FilteredClassifier", "HoldoutScores", "ImprovementContext", "ImprovementOutcome", "ImprovementPlan", "ImprovementReport", "Improver",
    "PromotionVerdict", "RetrainConfig", "check_promotion_margin", "clean_data", "RetrainImprover", "decide", "fine_tune", "holdout_scores", "improvement_markdown", "improver_for",
    "train_denoiser",
]

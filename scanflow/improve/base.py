"""The improver contract: `plan` says what would be done, a person decides, `apply` does it and measures it.

`plan(drift_result, context)` has no side effects and returns an `ImprovementPlan` that serialises to JSON (what
will be done, with what data, an expected duration): the flow shows it before pausing for the person.
`apply(plan, decision)` builds the candidate (a retrained classifier or a filtered one), scores champion and
candidate on the clean holdout and on the shifted holdout (the share of the person's labelled samples the
candidate never trained on) and returns an `ImprovementOutcome`. Registering and promoting the candidate is the
caller's job (`scanflow.tracking`, `scanflow.improve.promotion`), so nothing here touches a server.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields, replace
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from scanflow.data import DatasetInfo, LabeledImages, hold_out_calibration, load_train_test, validate_batch
from scanflow.drift.autoencoder import AutoencoderDetector
from scanflow.drift.base import Detector, DriftResult
from scanflow.errors import ScanflowError
from scanflow.human import Decision, InvalidDecisionError, validate_labels
from scanflow.improve.promotion import (
    DEFAULT_PROMOTION_ALPHA,
    DEFAULT_PROMOTION_MARGIN,
    DriftEvidence,
    HoldoutScores,
    PromotionVerdict,
    decide,
)
from scanflow.models import Autoencoder, Classifier

#: Clean replay images a refitted detector is fitted on, at most.
DETECTOR_REFERENCE_IMAGES = 8_000

#: Share of the person's labels held back to judge a retrained challenger (the shifted holdout).
DEFAULT_HOLDOUT_FRACTION = 0.3


class Predictor(Protocol):
    def predict(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class ImprovementContext:
    """Everything an improvement may use: the champion, the drifted batch and which of its samples a person was
    shown (in order), clean training images to replay, a clean holdout, clean calibration images and
    the champion's fitted detector (both optional). `served_champion` is the champion as it serves when that differs
    from its classifier (a filter-wrapped champion): it is what a challenger has to beat. `labelled_positions`: the
    positions (in the order shown) a person labelled (default: all); only they train or judge."""

    classifier: Classifier
    autoencoder: Autoencoder
    batch: torch.Tensor
    shown_indices: tuple[int, ...]
    replay: LabeledImages
    clean_holdout: LabeledImages
    calibration: LabeledImages | None = None
    detector: Detector | None = None
    served_champion: Predictor | None = None
    champion_version: str = ""
    batch_id: str = ""
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
    seed: int = 0
    labelled_positions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch", validate_batch(self.batch, self.replay.info))
        object.__setattr__(self, "shown_indices", tuple(int(i) for i in self.shown_indices))
        if self.labelled_positions is None:
            object.__setattr__(self, "labelled_positions", tuple(range(len(self.shown_indices))))
        object.__setattr__(self, "labelled_positions", tuple(int(p) for p in self.labelled_positions))
        outside = [p for p in self.labelled_positions if not 0 <= p < len(self.shown_indices)]
        if outside:
            raise ScanflowError(f"labelled positions {outside[:5]} are outside the {len(self.shown_indices)} samples shown")
        bad = [i for i in self.shown_indices if not 0 <= i < len(self.batch)]
        if bad:
            raise ScanflowError(f"shown sample indices {bad[:5]} are outside the batch of {len(self.batch)} images")
        if len(set(self.shown_indices)) != len(self.shown_indices):
            raise ScanflowError("shown sample indices repeat: each critical sample is shown (and labelled) once")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")

    @property
    def n_classes(self) -> int:
        return self.replay.info.n_classes


@dataclass(frozen=True)
class ImprovementPlan:
    """What `apply` will do; JSON-able through `to_dict` (the in-memory `context` is not part of it).

    `expected_seconds`: the training's wall time on 2 idle cores, from measured per-step costs; a busy machine or
    a container sharing the CPU takes longer."""

    action: str
    batch_id: str
    champion_version: str
    n_shown: int
    training_positions: tuple[int, ...]
    holdout_positions: tuple[int, ...]
    n_unlabelled: int
    n_replay: int
    n_clean_holdout: int
    expected_seconds: float
    description: str
    drift: dict[str, Any]
    params: dict[str, Any]
    unseen_rows: tuple[int, ...] = ()
    context: ImprovementContext | None = field(default=None, repr=False, compare=False)

    def with_drift(self, drift: dict[str, Any]) -> "ImprovementPlan":
        """This plan with the drift verdict it answers (as logged by the detect flow)."""
        return replace(self, drift=dict(drift))

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "context"}
        data["training_positions"] = list(self.training_positions)
        data["holdout_positions"] = list(self.holdout_positions)
        data["unseen_rows"] = list(self.unseen_rows)
        return data


@dataclass(frozen=True)
class ImprovementOutcome:
    """What an improvement produced and how champion and candidate score on the holdouts (accuracy 0..1).

    `candidate` is what would serve (a `Classifier` or a `FilteredClassifier`), `detector` the refitted detector
    for it (None: the champion's detector keeps watching). Both stay out of `to_dict`. `unseen_rows`: the batch rows
    neither the candidate nor its detector learned from; they show the candidate a fresh sample of the shift (what
    a known-shift record is made of). `drift_evidence`: what the candidate does to the drift statistic (filters;
    judges without labels); `holdout_share`: the share of a person's labels that judged it.
    """

    action: str
    decided_by: str
    batch_id: str
    champion_version: str
    champion_scores: HoldoutScores | None
    candidate_scores: HoldoutScores | None
    n_labels_used: int
    n_pseudo_labelled: int
    seconds: float
    summary: str
    candidate: Any = field(default=None, repr=False, compare=False)
    detector: Detector | None = field(default=None, repr=False, compare=False)
    unseen_rows: tuple[int, ...] = ()
    drift_evidence: DriftEvidence | None = None
    holdout_share: float = 1.0

    def verdict(self, margin: float = DEFAULT_PROMOTION_MARGIN, alpha: float = DEFAULT_PROMOTION_ALPHA) -> PromotionVerdict:
        """Whether the candidate earns promotion over the champion (`scanflow.improve.promotion.decide`)."""
        if self.champion_scores is None or self.candidate_scores is None:
            raise ScanflowError("this outcome has no holdout scores to judge the candidate on")
        return decide(self.champion_scores, self.candidate_scores, margin, alpha, self.drift_evidence, self.holdout_share)

    def as_metrics(self) -> dict[str, float]:
        """Flat metrics for tracking: labels used, time, and each model's holdout accuracies."""
        metrics = {"n_labels_used": self.n_labels_used, "n_pseudo_labelled": self.n_pseudo_labelled, "improve_seconds": self.seconds}
        for who, scores in (("champion", self.champion_scores), ("challenger", self.candidate_scores)):
            if scores is not None:
                metrics[f"{who}_clean_accuracy"] = scores.clean_accuracy
                if scores.shifted_accuracy is not None:
                    metrics[f"{who}_shifted_accuracy"] = scores.shifted_accuracy
        return metrics

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "decided_by": self.decided_by,
            "batch_id": self.batch_id,
            "champion_version": self.champion_version,
            "champion_scores": asdict(self.champion_scores) if self.champion_scores else None,
            "candidate_scores": asdict(self.candidate_scores) if self.candidate_scores else None,
            "n_labels_used": self.n_labels_used,
            "n_pseudo_labelled": self.n_pseudo_labelled,
            "seconds": round(self.seconds, 3),
            "summary": self.summary,
            "unseen_rows": list(self.unseen_rows),
            "drift_evidence": asdict(self.drift_evidence) if self.drift_evidence else None,
            "holdout_share": self.holdout_share,
        }


def holdout_scores(model: Predictor, clean: LabeledImages, shifted: LabeledImages | None) -> HoldoutScores:
    """Accuracy of `model` on both holdouts, and whether it was right on each shifted-holdout image (in order, for
    the paired test); a rejected prediction (-1) counts as wrong."""
    clean_accuracy = float((model.predict(clean.images) == clean.labels).float().mean())
    if shifted is None or len(shifted) == 0:
        return HoldoutScores(clean_accuracy, None, len(clean), 0)
    correct = (model.predict(shifted.images) == shifted.labels).tolist()
    return HoldoutScores(clean_accuracy, sum(correct) / len(correct), len(clean), len(shifted), tuple(bool(c) for c in correct))


def refit_detector(
    classifier: Classifier, context: ImprovementContext, seen: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> AutoencoderDetector:
    """The champion's kind of detector for a candidate, fitted on clean replay as the candidate sees it (`seen`: the
    candidate's view of an image batch, e.g. a filter's cleaning; default as is) and calibrated on clean images it
    was not fitted on. A detector must be fitted on what it will watch: the champion's detector judging filtered
    clean batches, or a reference mixing the drifted batch in, raised false alarms on clean batches. Not on the
    drifted batch either: a repeat of the shift is recognised as a known shift instead. It scores the components the
    champion's detector does (a model that answers labels only has no uncertainty component)."""
    view = seen or (lambda images: images)
    rows = np.sort(np.random.default_rng(context.seed).permutation(len(context.replay))[:DETECTOR_REFERENCE_IMAGES])
    reference = view(context.replay.images[torch.from_numpy(rows)])
    calibration = view(context.calibration.images) if context.calibration is not None else None
    components = getattr(context.detector, "components", None)  # None: the default for the images' channels
    detector = AutoencoderDetector(classifier, context.autoencoder, components=components, seed=context.seed)
    return detector.fit(reference, calibration=calibration, info=context.replay.info)


def clean_data(dataset: str, tags: Mapping[str, str], info: DatasetInfo, data_dir: str | None, seed: int,
               store: Any = None) -> tuple[LabeledImages, LabeledImages, LabeledImages]:
    """The champion's clean images as (replay, calibration, clean holdout), from its version `tags`: for a model
    Scanflow trained, its dataset's training split without the calibration hold-out, that hold-out and the test split,
    rebuilt with the train flow's seed; for an adopted one, its adoption's reference (`scanflow.adopt.reference_data`,
    sha256-checked): the fit part is replayed, the calibration part calibrates and judges."""
    from scanflow.adopt import CONTRACT_TAG, REFERENCE_TAG, InputContract, ReferenceRecord, reference_data

    if REFERENCE_TAG in tags:
        record = ReferenceRecord.from_json(tags[REFERENCE_TAG])
        fit, calibration = reference_data(record, InputContract.from_json(tags[CONTRACT_TAG]), info, store, seed)
        return fit, calibration, calibration
    train, test = load_train_test(dataset, data_dir=data_dir, seed=seed)
    replay, calibration = hold_out_calibration(train, seed=seed)
    return replay, calibration, test


def seconds_at_area(measured: Mapping[int, float], area: int) -> float:
    """Seconds of one unit of work (a training step, a batch of preparation) at an image area (height x width
    pixels), from measurements at two areas: linear in area through both, never below the smaller one. Work on
    small images does not shrink in proportion to their area (the optimiser, Python and small kernels cost the
    same), so scaling one 28x28 measurement by area alone predicts far too little for 8x8 images."""
    (small, at_small), (large, at_large) = sorted(measured.items())
    slope = (at_large - at_small) / (large - small)
    return max(at_small, at_small + slope * (area - small))


def split_positions(positions: Sequence[int], holdout_fraction: float, seed: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The labelled `positions` split into those to train on and those to hold back (a seeded `holdout_fraction`);
    with fewer than 4 labelled samples nothing is held back."""
    positions = [int(p) for p in positions]
    if len(positions) < 4 or holdout_fraction == 0:
        return tuple(positions), ()
    order = np.random.default_rng(seed).permutation(len(positions))
    n_holdout = max(1, int(round(holdout_fraction * len(positions))))
    return tuple(sorted(positions[i] for i in order[n_holdout:])), tuple(sorted(positions[i] for i in order[:n_holdout]))


def _drift_summary(result: DriftResult | None) -> dict[str, Any]:
    if result is None:
        return {}
    return {"is_drift": result.is_drift, "statistic": result.statistic, "p_value": result.p_value, "n": result.n,
            "n_critical": len(result.critical_indices), "detector": result.detector}


class Improver(ABC):
    """Base class of the improvements. Subclasses fill `_describe` (plan details) and `_build` (the candidate)."""

    action: ClassVar[str]
    needs_labels: ClassVar[bool] = False

    def plan(self, drift_result: DriftResult | None, context: ImprovementContext) -> ImprovementPlan:
        """What `apply` will do for this batch; no side effects."""
        training, holdout = self._positions(context)
        description, expected_seconds, params = self._describe(context, len(training))
        return ImprovementPlan(
            action=self.action,
            batch_id=context.batch_id,
            champion_version=context.champion_version,
            n_shown=len(context.shown_indices),
            training_positions=training,
            holdout_positions=holdout,
            n_unlabelled=len(context.batch),
            n_replay=len(context.replay),
            n_clean_holdout=len(context.clean_holdout),
            expected_seconds=round(expected_seconds, 1),
            description=description,
            drift=_drift_summary(drift_result),
            params=params,
            unseen_rows=self._unseen_rows(context),
            context=context,
        )

    def apply(self, plan: ImprovementPlan, decision: Decision) -> ImprovementOutcome:
        """Carry out `plan` as `decision` says; the champion's models are never modified."""
        context = plan.context
        if context is None:
            raise ScanflowError("this plan carries no context (it was rebuilt from JSON): call plan() again with the context")
        if decision.action != plan.action:
            raise InvalidDecisionError(f"the decision is {decision.action!r} but the plan is {plan.action!r}: plan the chosen action")
        started = time.perf_counter()
        labels = validate_labels(decision.labels, plan.n_shown, context.n_classes) if decision.labels else ()
        given = {position: label for position, label in enumerate(labels) if label is not None}
        training = [p for p in plan.training_positions if p in given]
        holdout = [p for p in plan.holdout_positions if p in given]
        if self.needs_labels and not training:
            raise InvalidDecisionError(
                f"{plan.action} needs labels: none of the {plan.n_shown} samples shown was labelled for training "
                "(untouched guesses are not labels)"
            )
        training_set = self._labelled(context, training, given, "training")
        holdout_set = self._labelled(context, holdout, given, "holdout")
        candidate, detector, n_pseudo, summary = self._build(context, training_set)
        champion_scores = holdout_scores(context.served_champion or context.classifier, context.clean_holdout, holdout_set)
        candidate_scores = holdout_scores(candidate, context.clean_holdout, holdout_set)
        return ImprovementOutcome(
            action=plan.action,
            decided_by=decision.decided_by,
            batch_id=plan.batch_id,
            champion_version=plan.champion_version,
            champion_scores=champion_scores,
            candidate_scores=candidate_scores,
            n_labels_used=len(training) if self.needs_labels else 0,
            n_pseudo_labelled=n_pseudo,
            seconds=time.perf_counter() - started,
            summary=summary,
            candidate=candidate,
            detector=detector,
            unseen_rows=plan.unseen_rows,
            drift_evidence=self._drift_evidence(context, candidate),
            holdout_share=self._holdout_share(context),
        )

    @staticmethod
    def _labelled(context: ImprovementContext, positions: list[int], given: Mapping[int, int], part: str) -> LabeledImages | None:
        """The shown samples at `positions` with the labels a person gave them, or None when there are none."""
        if not positions:
            return None
        rows = torch.tensor([context.shown_indices[p] for p in positions], dtype=torch.int64)
        labels = torch.tensor([given[p] for p in positions], dtype=torch.int64)
        return LabeledImages(context.batch[rows], labels, context.replay.info, f"{context.batch_id}[labelled, {part}]")

    def _drift_evidence(self, context: ImprovementContext, candidate: Predictor) -> DriftEvidence | None:
        """Evidence that needs no labels (see `DriftEvidence`); by default none."""
        return None

    def _holdout_share(self, context: ImprovementContext) -> float:
        """The share of a person's labels that judges the candidate; by default all of them."""
        return 1.0

    def _positions(self, context: ImprovementContext) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Training and holdout positions among the labelled samples; by default all labels judge, none train."""
        return (), tuple(context.labelled_positions or ())

    def _unseen_rows(self, context: ImprovementContext) -> tuple[int, ...]:
        """Batch rows the candidate will not learn from; by default all (the candidate never trains on the batch)."""
        return tuple(range(len(context.batch)))

    @abstractmethod
    def _describe(self, context: ImprovementContext, n_training_labels: int) -> tuple[str, float, dict[str, Any]]:
        """A sentence for the person, the expected duration (s), the parameters to log."""

    @abstractmethod
    def _build(self, context: ImprovementContext, labelled: LabeledImages | None) -> tuple[Predictor, Detector | None, int, str]:
        """The candidate model, its refitted detector (or None), how many stream images it pseudo-labelled, a summary."""


class ImprovementReport(BaseModel):
    """What the improve step returns: the decision carried out on one batch, the challenger it registered (None
    when the drift was ignored) and whether it was promoted, and why. `verdict` and `outcome` are
    `PromotionVerdict.to_dict()` and `ImprovementOutcome.to_dict()` (None when nothing was built);
    `previous_champion`: the version a promotion replaced; `known_shift_of`: the champion version the batch became
    a known shift of (None: not remembered). Prefect's JSON result storage round-trips it."""

    model_config = ConfigDict(frozen=True)

    batch_id: str
    action: str
    decided_by: str
    champion_version: str
    mlflow_run_id: str = ""
    challenger_version: str | None = None
    promoted: bool = False
    reason: str = ""
    verdict: dict[str, Any] | None = None
    previous_champion: str | None = None
    outcome: dict[str, Any] | None = None
    known_shift_of: str | None = None

    @property
    def verdict_outcome(self) -> str:
        """The verdict's outcome ("promoted", "kept", "not enough labels", ...), "" when nothing was judged."""
        return str((self.verdict or {}).get("outcome", ""))

    @property
    def n_labels_used(self) -> int:
        """The person's labels the challenger trained on (0 for a filter or an ignored drift)."""
        return int((self.outcome or {}).get("n_labels_used", 0))


def improvement_markdown(report: ImprovementReport) -> str:
    """The improve step's report (decision, holdout scores of champion and challenger, the drift evidence, the
    verdict with what decided it) as Markdown."""
    lines = [f"# Decision on batch {report.batch_id}: {report.action} ({report.decided_by})", ""]
    outcome = report.outcome
    if outcome:
        lines += ["| model | clean holdout | shifted holdout (labelled by a person) |", "|---|---|---|"]
        for who, key in ((f"champion v{report.champion_version}", "champion_scores"), (f"challenger v{report.challenger_version}", "candidate_scores")):
            scores = outcome[key]
            shifted = "no labels" if scores["shifted_accuracy"] is None else f"{scores['shifted_accuracy']:.4f} (n={scores['n_shifted']})"
            lines.append(f"| {who} | {scores['clean_accuracy']:.4f} (n={scores['n_clean']}) | {shifted} |")
        drift = outcome.get("drift_evidence")
        if drift:
            lines += ["", f"Drift statistic of the batch as the champion sees it {drift['raw_statistic']:.2f}, through the "
                          f"filter {drift['filtered_statistic']:.2f} (threshold {drift['threshold']:.2f})."]
        lines.append("")
    verdict = report.verdict or {}
    headline = {"promoted": "Promoted", "not enough labels": "Not enough labels: champion kept"}.get(verdict.get("outcome"), "Champion kept")
    if not verdict:
        headline = "Promoted" if report.promoted else "Champion kept"
    evidence = f" (decided by: {verdict['evidence']})" if verdict.get("evidence", "none") != "none" else ""
    lines.append(f"**{headline}**{evidence}: {report.reason}")
    lines.append(f"\nMLflow run: `{report.mlflow_run_id}`")
    return "\n".join(lines)

"""The improve flow: check the decision, plan, apply, register the challenger, promote or keep the champion.

Run it as `python flows/improve.py BATCH.npy --shown 3,17,... --action retrain --labels 4,0,...`, from the
supervise flow after a person answered, or as the `improve` deployment. Every decision is audited in MLflow (an
`improve-<batch>` run with the decision, plan and outcome as JSON); a promotion or a rejection is announced as
a Prefect event.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run

from flows.retries import IO_RETRIES
from flows.settings import read_batch, storage_store, tracking_config
from scanflow import tracking as scanflow_tracking
from scanflow.errors import ScanflowError
from scanflow.adopt import improvable_actions
from scanflow.config import TrackingConfig
from scanflow.data import DatasetInfo, LabeledImages
from scanflow.drift.base import Detector
from scanflow.drift.known import KnownShift
from scanflow.human import Decision, check_decision_form, check_shown_rows, known_shift_rows
from scanflow.improve import (
    DEFAULT_HOLDOUT_FRACTION,
    DEFAULT_PROMOTION_MARGIN,
    ImprovementContext,
    ImprovementOutcome,
    ImprovementPlan,
    PromotionVerdict,
    check_improve_steps,
    check_promotion_margin,
    clean_data,
    ImprovementReport,
    improvement_markdown,
    improver_for,
)
from scanflow.tags import (
    ACTION_TAG, BATCH_ID_TAG, CHAMPION_VERSION_TAG, DECIDED_BY_TAG, KIND_TAG, PROMOTED_TAG, VERDICT_EVIDENCE_TAG, VERDICT_TAG,
)

PROMOTED_EVENT = "scanflow.model.promoted"
REJECTED_EVENT = "scanflow.model.rejected"


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def load_champion(config: TrackingConfig) -> tuple[scanflow_tracking.LoadedModels, Detector]:
    return scanflow_tracking.load_models(config), scanflow_tracking.load_detector(config)[0]


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def load_clean_data(models: scanflow_tracking.LoadedModels, info: DatasetInfo, data_dir: str | None, seed: int,
                    storage: str | None) -> tuple[LabeledImages, LabeledImages, LabeledImages]:
    """The champion's replay, calibration and clean holdout (`scanflow.improve.clean_data`)."""
    return clean_data(models.dataset, models.tags, info, data_dir, seed, storage_store(storage))


@task(cache_policy=NO_CACHE)
def plan_improvement(action: str, context: ImprovementContext, drift: dict | None, steps: int | None) -> ImprovementPlan:
    plan = improver_for(action, steps).plan(None, context)
    if drift:
        plan = plan.with_drift(drift)
    print(f"plan: {plan.description} (training about {plan.expected_seconds:.0f} s on 2 idle cores)")
    return plan


@task(cache_policy=NO_CACHE)
def apply_improvement(plan: ImprovementPlan, decision: Decision, steps: int | None) -> ImprovementOutcome:
    outcome = improver_for(plan.action, steps).apply(plan, decision)
    print(f"{plan.action}: {outcome.summary}")
    return outcome


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def register_challenger(config: TrackingConfig, run_id: str, outcome: ImprovementOutcome, context: ImprovementContext) -> str:
    tags = {BATCH_ID_TAG: context.batch_id, DECIDED_BY_TAG: outcome.decided_by}
    return scanflow_tracking.register_candidate(
        run_id, config, outcome.candidate, context.replay.info, context.champion_version, outcome.detector, tags
    )


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def promote_or_keep(config: TrackingConfig, version: str, verdict: PromotionVerdict) -> str | None:
    """Record the verdict on the challenger version (what makes it a version `rollback --to` accepts), then promote
    it if the verdict says so; returns the champion it replaced, None when kept."""
    scanflow_tracking.record_verdict(config, version, verdict.outcome)
    if not verdict.promote:
        print(f"champion kept: {verdict.reason}")
        return None
    previous = scanflow_tracking.promote(config, version, verdict.reason)
    print(f"v{version} promoted to champion (was v{previous}): {verdict.reason}")
    return previous


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def remember_known_shift(config: TrackingConfig, run_id: str, batch_id: str, action: str, images: torch.Tensor) -> str:
    """Keep the decided batch as the champion now serving sees it (through its filter, by its detector), so later
    batches with the same shift are recognised instead of asked about again. Returns the champion version."""
    detector, version = scanflow_tracking.load_detector(config)
    input_filter = scanflow_tracking.load_input_filter(config)
    seen = input_filter.clean(images) if input_filter is not None else images
    scanflow_tracking.log_known_shift(config, KnownShift(batch_id, version, action, run_id, detector.shift_signature(seen)))
    print(f"the shift of batch {batch_id} is now known to v{version}: batches like it will not be asked about again")
    return version


def _announce(config: TrackingConfig, promoted: bool, payload: dict) -> None:
    emit_event(
        event=PROMOTED_EVENT if promoted else REJECTED_EVENT,
        resource={"prefect.resource.id": f"scanflow.model.{config.classifier_name}", "prefect.resource.name": config.classifier_name},
        payload=payload,
    )


@flow(name="improve", log_prints=True, persist_result=True, result_serializer="json")
def improve_flow(
    batch_path: str,
    shown_indices: list[int],
    action: str,
    labels: list[int | None] | None = None,
    note: str = "",
    decided_by: str = "human",
    batch_id: str | None = None,
    drift: dict | None = None,
    promotion_margin: float = DEFAULT_PROMOTION_MARGIN,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    data_dir: str | None = None,
    seed: int = 0,
    remember_shift: bool = True,
    tracking: str | None = None,
    storage: str | None = None,
    model: str | None = None,
    steps: int | None = None,
) -> ImprovementReport:
    """Carry out a person's decision on a drifted batch (a .npy of uint8 images).

    `shown_indices`: the batch rows the person was shown, in order; `labels`: their classes in that order, None
    for a sample the person did not label (at least one is needed to retrain; a filter is judged on the drift
    statistic when it has none, and on its labels too when it has them). The challenger is registered with the
    `challenger` alias and promoted to `champion` only if it beats it on the shifted holdout without losing more
    than `promotion_margin` clean accuracy. When the decision stands (the drift ignored, or a challenger promoted;
    see `scanflow.human.known_shift_rows`) and `remember_shift`, the batch becomes a known shift of the champion:
    the detect flow recognises batches like it and does not ask again (one drift, one question).
    `tracking` names an MLflowTracking block, `storage` a ScanflowStorage block (default: the environment; needed
    when `batch_path` is s3://bucket/key). `model`: the registered classifier's name (default: the tracking settings').
    `steps`: optimisation steps per retraining round, or of the filter's denoiser (default: the improver's own,
    `scanflow.improve.improver_for`); fewer train faster and fit the shift less.

    Checked first, before the champion is loaded or any run opened (InvalidMarginError, InvalidDecisionError,
    InvalidBatchError naming the fix): the margin, the action and the label count; the batch (in the champion's
    contract), the shown rows (integers inside the batch, none repeated, for every action) and the label classes
    once the champion is loaded; and the champion's clean data before the decision's run opens.
    """
    check_promotion_margin(promotion_margin)
    check_decision_form(action, labels or None, len(shown_indices))
    check_improve_steps(steps)
    config = tracking_config(tracking)
    config = config.for_model(model) if model else config
    batch_id = batch_id or Path(batch_path).stem
    models, detector = load_champion(config)
    images = read_batch(batch_path, detector.info, storage_store(storage))
    shown_indices = list(check_shown_rows(shown_indices, len(images)))
    decision = Decision.checked(action, labels, len(shown_indices), detector.info.n_classes, note, decided_by)
    check_improvable(models, decision.action, config.classifier_name)
    clean = load_clean_data(models, detector.info, data_dir, seed, storage) if decision.action != "ignore" else None
    run_tags = {
        KIND_TAG: "improve", BATCH_ID_TAG: batch_id, ACTION_TAG: decision.action,
        DECIDED_BY_TAG: decision.decided_by, CHAMPION_VERSION_TAG: models.classifier_version,
        "prefect.flow_run_id": str(flow_run.id or ""),
    }
    with scanflow_tracking.tracked_run(config, f"improve-{batch_id}", run_tags) as run_id:
        summary = {"batch_id": batch_id, "action": decision.action, "decided_by": decision.decided_by,
                   "champion_version": models.classifier_version, "mlflow_run_id": run_id, "challenger_version": None,
                   "promoted": False, "reason": ""}
        scanflow_tracking.log_json(run_id, {**decision.to_dict(), "shown_indices": list(shown_indices), "drift": drift or {}}, "decision.json")
        if decision.action == "ignore":
            summary["reason"] = "the decision was to ignore this drift"
        else:
            summary.update(_improve(config, run_id, decision, models, detector, images, shown_indices, batch_id,
                                    drift, promotion_margin, holdout_fraction, clean, seed, steps))
        rows = known_shift_rows(decision, summary["promoted"], summary.get("outcome", {}).get("unseen_rows", ()), len(images))
        if remember_shift and rows:
            summary["known_shift_of"] = remember_known_shift(config, run_id, batch_id, decision.action, images[rows])
        scanflow_tracking.set_tags(run_id, {PROMOTED_TAG: str(summary["promoted"]).lower()})
    report = ImprovementReport(**summary)
    create_markdown_artifact(improvement_markdown(report), key="improvement", description=f"decision on batch {batch_id}")
    return report


def check_improvable(models: scanflow_tracking.LoadedModels, action: str, name: str) -> None:
    """Refuse, before any run, a decision the champion cannot carry out (`scanflow.adopt.improvable_actions`): an
    adopted model is improved only with a labelled reference, and retrained only as a pytorch module."""
    actions, why = improvable_actions(models.tags)
    if action not in actions:
        raise ScanflowError(f"{name} v{models.classifier_version} cannot {action}: {why}; decide {' or '.join(actions)}")


def _improve(
    config: TrackingConfig, run_id: str, decision: Decision, models: scanflow_tracking.LoadedModels, detector: Detector,
    images: torch.Tensor, shown_indices: list[int], batch_id: str, drift: dict | None,
    promotion_margin: float, holdout_fraction: float, clean: tuple[LabeledImages, LabeledImages, LabeledImages], seed: int,
    steps: int | None,
) -> dict:
    replay, calibration, clean_holdout = clean
    context = ImprovementContext(
        classifier=models.classifier, autoencoder=models.autoencoder, batch=images, shown_indices=tuple(shown_indices),
        replay=replay, clean_holdout=clean_holdout, calibration=calibration, detector=detector,
        served_champion=models.input_filter,
        champion_version=models.classifier_version, batch_id=batch_id, holdout_fraction=holdout_fraction, seed=seed,
        labelled_positions=decision.labelled_positions,
    )
    plan = plan_improvement(decision.action, context, drift, steps)
    scanflow_tracking.log_json(run_id, plan.to_dict(), "plan.json")
    scanflow_tracking.log_params(run_id, plan.params)
    outcome = apply_improvement(plan, decision, steps)
    version = register_challenger(config, run_id, outcome, context)
    verdict = outcome.verdict(promotion_margin)
    previous = promote_or_keep(config, version, verdict)
    scanflow_tracking.log_json(run_id, {**outcome.to_dict(), "challenger_version": version, "verdict": verdict.to_dict()}, "outcome.json")
    scanflow_tracking.log_metrics(run_id, outcome.as_metrics())
    scanflow_tracking.set_tags(run_id, {VERDICT_TAG: verdict.outcome, VERDICT_EVIDENCE_TAG: verdict.evidence})
    result = {"challenger_version": version, "promoted": verdict.promote, "reason": verdict.reason,
              "verdict": verdict.to_dict(), "previous_champion": previous, "outcome": outcome.to_dict()}
    _announce(config, verdict.promote, {"batch_id": batch_id, "version": version, "action": decision.action,
                                        "previous_champion": previous, "reason": verdict.reason})
    return result


if __name__ == "__main__":
    from scanflow.cli import main

    sys.exit(main(["improve", "--batch", *sys.argv[1:]]))

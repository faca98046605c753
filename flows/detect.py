"""The detect flow: load batch, load champion detector, detect, log to MLflow, publish, announce drift, report.

Run it as `python flows/detect.py BATCH.npy`, `scanflow detect --batch BATCH.npy`, or as the `detect` deployment.
"""

from __future__ import annotations

import base64
import sys
import tempfile
from pathlib import Path
from typing import Literal

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run

from flows.retries import IO_RETRIES
from flows.settings import read_batch, storage_store, tracking_config
from scanflow import tracking as scanflow_tracking
from scanflow.config import CHAMPION_ALIAS, TrackingConfig
from scanflow.detect import (
    DEFAULT_LABEL_BUDGET,
    DRIFT_EVENT,
    Detection,
    DetectionReport,
    critical_samples_png,
    detect_batch,
    sample_thumbnails,
    save_evidently_report,
    summary_markdown,
)
from scanflow.drift.base import Detector
from scanflow.drift.known import ShiftMatch, recognise
from scanflow.adopt import improvable_actions
from scanflow.human import ACTIONS
from scanflow.storage import S3Store, absolute_location
from scanflow.tags import KNOWN_SHIFT_OF_TAG


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def load_champion_detector(config: TrackingConfig, alias: str) -> tuple[Detector, str]:
    return scanflow_tracking.load_detector(config, alias)


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def improvable(config: TrackingConfig, version: str) -> tuple[tuple[str, ...], str]:
    """The decisions champion `version` can carry out, and why not the others (`scanflow.adopt.improvable_actions`)."""
    return improvable_actions(scanflow_tracking.version_tags(config, version))


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def load_input_filter(config: TrackingConfig, alias: str):
    return scanflow_tracking.load_input_filter(config, alias)


@task(cache_policy=NO_CACHE)
def load_batch(path: str, detector: Detector, store: S3Store | None) -> torch.Tensor:
    return read_batch(path, detector.info, store)


@task(cache_policy=NO_CACHE)
def detect(detector: Detector, images: torch.Tensor, batch_id: str, model_version: str, budget: int) -> Detection:
    detection = detect_batch(detector, images, batch_id, model_version, budget, classes=detector.info.classes if detector.info else None)
    print(f"batch {batch_id}: drift={detection.result.is_drift} statistic={detection.result.statistic:.3f} p={detection.result.p_value:.4f}")
    return detection


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def recognise_known_shift(config: TrackingConfig, detector: Detector, detection: Detection) -> ShiftMatch | None:
    """The shift a person already decided about for this champion that the drifted batch cannot be told apart from
    (energy two-sample test at the detector's alpha), or None: a new drift."""
    known = scanflow_tracking.known_shifts(config, detection.model_version)
    match, message = recognise(detection.signature, known, detector.alpha, detection.model_version, seed=detector.seed)
    if message:
        print(message)
    return match


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def log_detection(config: TrackingConfig, detection: Detection, grid_png: bytes, tags: dict[str, str]) -> str:
    return scanflow_tracking.log_detection(config, detection.summary(), grid_png, {"prefect.flow_run_id": str(flow_run.id or ""), **tags})


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def store_detection(store: S3Store, detection: Detection, batch_path: str, mlflow_run_id: str) -> str:
    """The verdict and the critical samples as `detections/<batch_id>.json` in the bucket."""
    record = {**detection.summary(), "batch": batch_path, "mlflow_run_id": mlflow_run_id, "critical_rows": detection.critical_rows()}
    return store.put_json(store.key("detections", f"{detection.batch_id}.json"), record)


@task(cache_policy=NO_CACHE)
def publish(detection: Detection, grid_png: bytes, mlflow_run_id: str, known: ShiftMatch | None = None) -> None:
    grid = base64.b64encode(grid_png).decode("ascii")
    known_line = (f"\n\n**Known shift**: indistinguishable from batch {known.shift.batch_id} (decided: {known.shift.decision}, "
                  f"energy test p = {known.p_value:.3f}); not asked again." if known is not None else "")
    create_markdown_artifact(
        summary_markdown(detection) + known_line + f"\n\nMLflow run: `{mlflow_run_id}`\n\n![critical samples](data:image/png;base64,{grid})",
        key="drift-summary",
        description=f"drift verdict for batch {detection.batch_id}",
    )
    create_table_artifact(detection.critical_rows(), key="critical-samples", description="samples selected for labelling, in order")


@task(cache_policy=NO_CACHE)
def announce_drift(detection: Detection, model_name: str, batch_path: str, responder: str) -> None:
    """The `scanflow.drift.detected` event: its payload carries what an automation needs to start the
    respond-to-drift deployment on the same batch; the `scanflow.responder` resource label says who acts on it
    (the automation matches only 'automation', so a supervise loop that handles its own drift is not doubled)."""
    summary = detection.summary()
    emit_event(
        event=DRIFT_EVENT,
        resource={"prefect.resource.id": f"scanflow.model.{model_name}", "prefect.resource.name": model_name, "scanflow.responder": responder},
        payload={**{k: summary[k] for k in ("batch_id", "model_version", "statistic", "p_value", "n_critical")}, "batch_path": batch_path},
    )


@task(cache_policy=NO_CACHE, retries=1)
def evidently_report(detector: Detector, images: torch.Tensor, mlflow_run_id: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = save_evidently_report(detector, images, Path(tmp) / "evidently_report.html")
        scanflow_tracking.log_artifact_file(mlflow_run_id, path)


@flow(name="detect", log_prints=True, persist_result=True, result_serializer="json")
def detect_flow(
    batch_path: str,
    batch_id: str | None = None,
    alias: str = CHAMPION_ALIAS,
    budget: int = DEFAULT_LABEL_BUDGET,
    report: bool = True,
    responder: Literal["automation", "supervise", "none"] = "automation",
    alpha: float | None = None,
    recognise_known: bool = True,
    tracking: str | None = None,
    storage: str | None = None,
    model: str | None = None,
) -> DetectionReport:
    """Test one production batch (a .npy of uint8 images) against the champion's detector (on the cleaned batch
    when the champion is a filter-wrapped classifier: the drift it was built for is then acknowledged).

    Logs the verdict to MLflow, publishes a summary and the critical samples as Prefect artifacts, emits
    `scanflow.drift.detected` when drifted (`responder`: who acts on it, see `announce_drift`; 'none': no event),
    then (off the hot path) attaches Evidently's HTML report. `alpha` overrides the detector's false-alarm rate
    (default: the one it was fitted with). A drift that is a known shift of the champion (decided about before, see
    the improve flow) is reported with `known_shift` set and announces nothing; `recognise_known=False` treats every
    drift as new. `tracking` names an MLflowTracking block, `storage` a ScanflowStorage block (default: the environment); with storage the verdict is
    also written to the bucket as `detections/<batch_id>.json` and `batch_path` may be s3://bucket/key. `model`: the
    registered classifier's name (default: the tracking settings').
    """
    config = tracking_config(tracking)
    config = config.for_model(model) if model else config
    store = storage_store(storage)
    batch_id = batch_id or Path(batch_path).stem
    detector, model_version = load_champion_detector(config, alias)
    if alpha is not None:
        detector.at_alpha(alpha)
    images = load_batch(batch_path, detector, store)
    input_filter = load_input_filter(config, alias)
    if input_filter is not None:
        print(f"v{model_version} filters its inputs: testing what its classifier sees (the cleaned batch)")
        images = input_filter.clean(images)
    detection = detect(detector, images, batch_id, model_version, budget)
    grid_png = critical_samples_png(images, detection)
    known = recognise_known_shift(config, detector, detection) if detection.result.is_drift and recognise_known else None
    tags = {KNOWN_SHIFT_OF_TAG: known.shift.batch_id} if known is not None else {}
    run_id = log_detection(config, detection, grid_png, tags)
    publish(detection, grid_png, run_id, known)
    if store is not None:
        store_detection(store, detection, batch_path, run_id)
    if detection.result.is_drift and known is None and responder != "none":
        announce_drift(detection, config.classifier_name, absolute_location(batch_path), responder)
    if report:
        evidently_report(detector, images, run_id)
    actions, actions_note = improvable(config, model_version) if detection.result.is_drift else (ACTIONS, "")
    # What a person is shown on a drift (the decision form); nothing to show on a clean batch.
    thumbnails = sample_thumbnails(images, detection) if detection.result.is_drift else []
    return DetectionReport.of(detection, run_id, actions=actions, actions_note=actions_note, known=known, grid_png=grid_png,
                              thumbnails=thumbnails)


@flow(name="drift-report", log_prints=True, persist_result=True, result_serializer="json")
def report_flow(batch_path: str, mlflow_run_id: str, alias: str = CHAMPION_ALIAS, tracking: str | None = None, storage: str | None = None) -> str:
    """Evidently's HTML report on a batch the detect flow has tested, attached to that detect run in MLflow as
    `evidently_report.html`. It is slow (10-50 s: plotly), so the supervise loop runs it beside the pause, off the
    path from a batch to its decision form. Returns the artifact's path inside the run."""
    config = tracking_config(tracking)
    detector, _ = load_champion_detector(config, alias)
    images = load_batch(batch_path, detector, storage_store(storage))
    input_filter = load_input_filter(config, alias)
    if input_filter is not None:
        images = input_filter.clean(images)
    evidently_report(detector, images, mlflow_run_id)
    return "evidently_report.html"


if __name__ == "__main__":
    print(detect_flow(batch_path=sys.argv[1]).brief())

"""MLflow runs and what is logged into them: params, metrics, tags, dataset lineage, JSON and artifact files, the
fitted detector, detected batches, predictions and known-shift records.

Functions take a `run_id` rather than relying on MLflow's thread-local active run, so Prefect tasks may log into
a run their flow opened.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import requests
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from scanflow.artifacts import digests_tag, sha256_file
from scanflow.config import TrackingConfig
from scanflow.data import LabeledImages
from scanflow.drift.base import Detector
from scanflow.drift.known import KnownShift
from scanflow.errors import ModelNotFoundError, ScanflowError, ServiceUnavailableError, TrackingUnavailableError
from scanflow.orphans import could_not_end, owner_tags
from scanflow.tags import (
    ABORTED_REASON_TAG,
    ABORTED_TAG,
    BATCH_ID_TAG,
    DETECTOR_NAME_TAG,
    IS_DRIFT_TAG,
    KIND_TAG,
    KNOWN_SHIFT_TAG_PREFIX,
    MODEL_VERSION_TAG,
)
from scanflow.tracking.client import (
    _client,
    _quiet_mlflow,
    _tracking_errors,
    _transport_failure,
    connect,
    mlflow_client,
    unavailable,
)

DETECTOR_ARTIFACT_PATH = "detector"
DETECTOR_FILE = "detector.pt"


@contextlib.contextmanager
def tracked_run(
    config: TrackingConfig, run_name: str | None = None, tags: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Open an MLflow run (a training, a detected batch, a decision...) tagged with its owner process
    (`scanflow.orphans`); yields its run id; ends it FINISHED, or FAILED if the body raises (tagged
    `scanflow.aborted=true` with the message when a ScanflowError, bad input, ended it).

    When the server does not answer at the end, the run is left to `mark_orphans` (the next connect, here or in a
    later process, ends it FAILED) and the body's own error is raised, not the failed ending's."""
    experiment_id = connect(config)
    client = _client(config)
    run = _tracking_errors(client.create_run)(experiment_id, run_name=run_name, tags={**owner_tags(), **(tags or {})})
    run_id = run.info.run_id
    try:
        yield run_id
    except BaseException as error:
        if isinstance(error, TrackingUnavailableError):
            could_not_end(run_id)  # the server just failed to answer: no further minute spent on it
        else:
            if isinstance(error, ScanflowError) and not isinstance(error, ServiceUnavailableError):
                # Bad input found only after the run was opened: the run says so, and is never mistaken for a result.
                with contextlib.suppress(Exception):
                    client.set_tag(run_id, ABORTED_TAG, "true")
                    client.set_tag(run_id, ABORTED_REASON_TAG, str(error)[:4000])
            try:
                client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            except (MlflowException, requests.exceptions.RequestException) as ending:
                if not _transport_failure(ending):
                    raise
                could_not_end(run_id)
        raise
    try:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    except (MlflowException, requests.exceptions.RequestException) as error:
        if _transport_failure(error):
            could_not_end(run_id)
            raise unavailable(error) from error
        raise


@contextlib.contextmanager
def _active_run(run_id: str) -> Iterator[None]:
    """Make `run_id` MLflow's active run in this thread for fluent calls (log_model, log_input).

    Leaving re-marks the run RUNNING: its final status is set once, by `tracked_run`.
    """
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    # A caller's own `mlflow.set_experiment` (a script that also logs its models) would make MLflow refuse a run of
    # Scanflow's experiment: the caller's choice is set aside for this block and restored after it.
    from mlflow.tracking import fluent

    saved_experiment, saved_env = fluent._active_experiment_id, os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    fluent._active_experiment_id = None
    try:
        mlflow.start_run(run_id=run_id)
        try:
            yield
        finally:
            mlflow.end_run(status=RunStatus.to_string(RunStatus.RUNNING))
    finally:
        fluent._active_experiment_id = saved_experiment
        if saved_env is not None:
            os.environ["MLFLOW_EXPERIMENT_ID"] = saved_env


@_tracking_errors
def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    client = mlflow_client(mlflow.get_tracking_uri())  # the store `connect` pointed MLflow at
    client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()])


@_tracking_errors
def log_metrics(run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    mlflow_client(mlflow.get_tracking_uri()).log_batch(
        run_id,
        metrics=[
            mlflow.entities.Metric(key, float(value), int(mlflow.utils.time.get_current_time_millis()), step or 0)
            for key, value in metrics.items()
        ],
    )


@_tracking_errors
def set_tags(run_id: str, tags: Mapping[str, str]) -> None:
    client = mlflow_client(mlflow.get_tracking_uri())
    client.log_batch(run_id, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()])


@_tracking_errors
def log_dataset(run_id: str, data: LabeledImages, context: str) -> None:
    """Record which images a run used (`mlflow.log_input`): name, split, source and a content digest."""
    with _quiet_mlflow():
        dataset = mlflow.data.from_numpy(
            features=data.images.numpy(),
            targets=data.labels.numpy(),
            source=_dataset_source(data),
            name=f"{data.info.name}:{data.split}",
        )
    with _active_run(run_id):
        mlflow.log_input(dataset, context=context, tags={"source": data.info.source})


def _dataset_source(data: LabeledImages) -> Any:
    from mlflow.data.code_dataset_source import CodeDatasetSource

    if Path(data.info.source).exists():
        return data.info.source
    # Bundled data (scikit-learn's digits) has no file to point at: record where it comes from instead.
    return CodeDatasetSource(tags={"origin": data.info.source})


@_tracking_errors
def log_json(run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
    mlflow_client(mlflow.get_tracking_uri()).log_dict(run_id, dict(data), artifact_file)


@_tracking_errors
def log_artifact_file(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    mlflow_client(mlflow.get_tracking_uri()).log_artifact(run_id, str(path), artifact_path=artifact_path)


@_tracking_errors
def download_run_artifact(tracking_uri: str, uri: str, dst: str) -> str:
    """Download `runs:/RUN_ID/PATH` into `dst` from the run's own artifact store; returns the local path.

    MLflow's `runs:/` resolver also looks for a logged model of that name, and when both fail it says only that the
    path may be wrong: a store that did not answer looked like a missing file. Here its error comes through."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    run_id, _, path = uri.removeprefix("runs:/").partition("/")
    if not uri.startswith("runs:/") or not run_id or not path:
        raise ModelNotFoundError(f"{uri!r} is not a runs:/RUN_ID/PATH artifact URI: retrain with `scanflow train`")
    artifact_uri = mlflow_client(tracking_uri).get_run(run_id).info.artifact_uri
    folder, _, name = path.rpartition("/")
    # The repository of the artifact's folder: the file lands as dst/NAME, as with the runs:/ resolver.
    repository = get_artifact_repository(f"{artifact_uri}/{folder}" if folder else artifact_uri, tracking_uri=tracking_uri)
    return repository.download_artifacts(name, dst)


def log_detector(run_id: str, detector: Detector) -> tuple[str, str]:
    """Save a fitted detector into the run's artifacts; returns its `runs:/` URI and its sha256 (a `digests_tag`)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = detector.save(Path(tmp) / DETECTOR_FILE)
        digest = digests_tag({DETECTOR_FILE: sha256_file(path)})
        mlflow_client(mlflow.get_tracking_uri()).log_artifact(run_id, str(path), artifact_path=DETECTOR_ARTIFACT_PATH)
    return f"runs:/{run_id}/{DETECTOR_ARTIFACT_PATH}/{DETECTOR_FILE}", digest


@_tracking_errors
def log_detection(config: TrackingConfig, summary: Mapping[str, Any], grid_png: bytes | None = None, extra_tags: Mapping[str, str] | None = None) -> str:
    """One MLflow run per detected batch: verdict as metrics and tags (plus `extra_tags`, e.g. the Prefect flow run),
    the JSON summary and the critical-sample grid as artifacts. Returns the run id (the Evidently report is added
    later with `log_artifact_file`)."""
    tags = {
        **(extra_tags or {}),
        KIND_TAG: "detect",
        BATCH_ID_TAG: str(summary["batch_id"]),
        MODEL_VERSION_TAG: str(summary["model_version"]),
        IS_DRIFT_TAG: str(bool(summary["is_drift"])).lower(),
        DETECTOR_NAME_TAG: str(summary["detector"]),
    }
    with tracked_run(config, f"detect-{summary['batch_id']}", tags) as run_id:
        client = _client(config)
        log_metrics(run_id, {k: float(summary[k]) for k in ("statistic", "p_value", "threshold", "n_critical", "n")})
        client.log_dict(run_id, dict(summary), "drift_result.json")
        if grid_png is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "critical_samples.png"
                path.write_bytes(grid_png)
                client.log_artifact(run_id, str(path))
    return run_id


@_tracking_errors
def log_predictions(
    config: TrackingConfig, batch_id: str, model_version: str, labels: np.ndarray, classes: Sequence[str],
    tags: Mapping[str, str] | None = None,
) -> str:
    """One MLflow run per predicted batch: the labels (CSV: batch index, label, class name) and their lineage."""
    run_tags = {KIND_TAG: "predict", BATCH_ID_TAG: batch_id, MODEL_VERSION_TAG: model_version, **(tags or {})}
    with tracked_run(config, f"predict-{batch_id}", run_tags) as run_id:
        log_metrics(run_id, {"n": float(len(labels)), "n_rejected": float(np.sum(labels < 0))})
        rows = ["batch_index,label,class"] + [
            f"{i},{int(label)},{classes[int(label)] if label >= 0 else 'rejected'}" for i, label in enumerate(labels)
        ]
        _client(config).log_text(run_id, "\n".join(rows) + "\n", "predictions.csv")
    return run_id


KNOWN_SHIFT_ARTIFACT = "known-shift.npz"


@_tracking_errors
def log_known_shift(config: TrackingConfig, shift: KnownShift) -> None:
    """Keep `shift` as `known-shift.npz` in its decision's run and list that run on the classifier version it
    applies to (tag `scanflow.known_shift.<batch_id>` = run id): the version's detector will not ask about it again."""
    client = _client(config)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / KNOWN_SHIFT_ARTIFACT
        path.write_bytes(shift.to_bytes())
        client.log_artifact(shift.mlflow_run_id, str(path))
    key = KNOWN_SHIFT_TAG_PREFIX + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in shift.batch_id)
    client.set_model_version_tag(config.classifier_name, shift.model_version, key, shift.mlflow_run_id)


@_tracking_errors
def known_shifts(config: TrackingConfig, version: str) -> list[KnownShift]:
    """The shifts decided about for classifier `version` (see `log_known_shift`), in batch id order."""
    # The version's tags, read as `registry.version_tags` does (this module does not import the registry).
    tags = _client(config).get_model_version(config.classifier_name, str(version)).tags
    run_ids = [run_id for key, run_id in sorted(tags.items()) if key.startswith(KNOWN_SHIFT_TAG_PREFIX)]
    return [_known_shift_record(config.tracking_uri, run_id) for run_id in run_ids]


@functools.lru_cache(maxsize=256)
def _known_shift_record(tracking_uri: str, run_id: str) -> KnownShift:
    """One run's known-shift record, downloaded once per process: a record never changes after it is logged (the
    version's tags, read every time, say which records exist)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = download_run_artifact(tracking_uri, f"runs:/{run_id}/{KNOWN_SHIFT_ARTIFACT}", tmp)
        shift = KnownShift.from_bytes(Path(path).read_bytes())
    shift.signature.flags.writeable = False
    return shift

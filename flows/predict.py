"""The predict flow: score a production batch with the served champion and keep every prediction with its lineage.

Run it as `python flows/predict.py BATCH.npy`, `scanflow predict --batch BATCH.npy`, or as the `predict` deployment.
The model is loaded as the MLflow pyfunc behind `NAME@ALIAS`, exactly what a serving endpoint would load, so a
filter-wrapped champion filters (and may answer -1, rejected) here too.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.retries import IO_RETRIES
from flows.settings import read_batch, storage_store, tracking_config
from scanflow import tracking as scanflow_tracking
from scanflow.config import CHAMPION_ALIAS, TrackingConfig
from scanflow.storage import S3Store


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def load_served_model(config: TrackingConfig, alias: str):
    return scanflow_tracking.load_served_model(config, alias)


@task(cache_policy=NO_CACHE)
def predict(model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(images), dtype=np.int64)


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def log_predictions(config: TrackingConfig, batch_id: str, model_version: str, labels: np.ndarray, classes: tuple[str, ...]) -> str:
    return scanflow_tracking.log_predictions(config, batch_id, model_version, labels, classes, {"prefect.flow_run_id": str(flow_run.id or "")})


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def store_predictions(store: S3Store, batch_id: str, record: dict) -> str:
    return store.put_json(store.key("predictions", f"{batch_id}.json"), record)


@flow(name="predict", log_prints=True, persist_result=True, result_serializer="json")
def predict_flow(
    batch_path: str, batch_id: str | None = None, alias: str = CHAMPION_ALIAS, tracking: str | None = None, storage: str | None = None
) -> dict:
    """Label one production batch (a .npy of uint8 images, a local path or s3://bucket/key) with the registered
    classifier at `alias`; the labels (int64, -1 = rejected by a filter) are logged to MLflow with the batch id and
    the model version, and written to the bucket as `predictions/<batch_id>.json` when storage is configured.
    `tracking` names an MLflowTracking block, `storage` a ScanflowStorage block (default: the environment)."""
    config = tracking_config(tracking)
    store = storage_store(storage)
    batch_id = batch_id or Path(batch_path).stem
    served = load_served_model(config, alias)
    images = read_batch(batch_path, served.info, store).numpy()
    labels = predict(served.model, images)
    run_id = log_predictions(config, batch_id, served.version, labels, served.info.classes)
    if store is not None:
        store_predictions(store, batch_id, {"batch_id": batch_id, "batch": batch_path, "model": config.classifier_name,
                                            "model_version": served.version, "mlflow_run_id": run_id, "labels": labels.tolist()})
    counts = np.bincount(labels[labels >= 0], minlength=served.info.n_classes)
    rows = [{"class": name, "predicted": int(count)} for name, count in zip(served.info.classes, counts)]
    rows.append({"class": "rejected (-1)", "predicted": int(np.sum(labels < 0))})
    create_table_artifact(rows, key="predictions", description=f"batch {batch_id} by {config.classifier_name} v{served.version}")
    print(f"batch {batch_id}: {len(labels)} predictions by v{served.version}, {int(np.sum(labels < 0))} rejected; MLflow run {run_id}")
    return {"batch_id": batch_id, "model_version": served.version, "n": int(len(labels)), "n_rejected": int(np.sum(labels < 0)),
            "labels": labels.tolist(), "mlflow_run_id": run_id}


if __name__ == "__main__":
    print({k: v for k, v in predict_flow(batch_path=sys.argv[1]).items() if k != "labels"})

"""Scale-out scoring: many production batches tested against the champion at once, fanned out through a Prefect
task runner: threads in this process by default, or a Dask cluster (a local one of worker processes on 127.0.0.1,
or an existing scheduler's address) when one process is not enough. Each worker loads the champion's detector once
and keeps it for the batches it is given.

This is the detect step's hot path only (no MLflow run, artifacts or events per batch): the verdicts come back as
one table, and the batches that drifted are the ones to send through the detect or supervise flow.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.settings import tracking_config
from scanflow import tracking as scanflow_tracking
from scanflow.config import CHAMPION_ALIAS, TrackingConfig
from scanflow.data import load_batch_file
from scanflow.detect import DEFAULT_LABEL_BUDGET, detect_batch


@functools.lru_cache(maxsize=4)
def _champion_detector(config: TrackingConfig, alias: str):
    return scanflow_tracking.load_detector(config, alias)


@task(cache_policy=NO_CACHE, retries=1)
def score_batch(batch_path: str, config: TrackingConfig, alias: str, budget: int) -> dict:
    """The drift verdict of one batch, computed wherever the task runner placed this task."""
    detector, version = _champion_detector(config, alias)
    images = load_batch_file(batch_path, detector.info)
    detection = detect_batch(detector, images, Path(batch_path).stem, version, budget)
    summary = detection.summary()
    return {key: summary[key] for key in ("batch_id", "model_version", "is_drift", "p_value", "statistic", "threshold", "n_critical")} | {
        "n": int(len(images)), "worker_pid": os.getpid()}


@flow(name="score-fan-out")
def _fan_out(batch_paths: list[str], config: TrackingConfig, alias: str, budget: int) -> list[dict]:
    futures = [score_batch.submit(path, config, alias, budget) for path in batch_paths]
    return [future.result() for future in futures]


def task_runner(dask_address: str | None, dask_workers: int | None, threads: int):
    """Dask when asked for (an existing scheduler, or a local cluster of `dask_workers` processes bound to
    127.0.0.1), else a pool of `threads` threads in this process."""
    if dask_address is None and not dask_workers:
        return ThreadPoolTaskRunner(max_workers=threads)
    from prefect_dask import DaskTaskRunner

    if dask_address is not None:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": None})


@flow(name="score-batches", log_prints=True)
def score_batches_flow(
    batch_paths: list[str],
    alias: str = CHAMPION_ALIAS,
    budget: int = DEFAULT_LABEL_BUDGET,
    dask_address: str | None = None,
    dask_workers: int | None = None,
    threads: int = 2,
    tracking: str | None = None,
) -> list[dict]:
    """Test every batch in `batch_paths` (.npy files of uint8 images) for drift against the champion, in parallel:
    `dask_workers` local Dask worker processes, or the Dask scheduler at `dask_address`, or `threads` threads here.
    Returns one verdict per batch, in order, also published as the `batch-verdicts` table artifact."""
    config = tracking_config(tracking)
    runner = task_runner(dask_address, dask_workers, threads)
    verdicts = _fan_out.with_options(task_runner=runner)(batch_paths, config, alias, budget)
    create_table_artifact(verdicts, key="batch-verdicts", description=f"{len(verdicts)} batches against {config.classifier_name}@{alias}")
    print(f"{sum(v['is_drift'] for v in verdicts)} of {len(verdicts)} batches drifted")
    return verdicts


if __name__ == "__main__":
    print(score_batches_flow(batch_paths=sys.argv[1:]))

"""The train flow under Prefect's test harness, tracked in a real SQLite MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
from prefect.client.orchestration import get_client

from flows.train import train_flow
from scanflow import tracking
from scanflow.tracking import mlflow_client
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_train_flow_tracks_registers_and_publishes(tracking_config, digits):
    _, test = digits
    summary = train_flow(dataset="digits", epochs=3, autoencoder_epochs=2, latent_dim=8)

    assert summary["dataset"] == "digits" and 0.0 < summary["test_accuracy"] <= 1.0
    client = mlflow_client(tracking_config.tracking_uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["classifier_epochs"] == "3" and run.data.params["autoencoder_latent_dim"] == "8"
    assert run.data.metrics["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "classifier_loss")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "autoencoder_loss")] == [1, 2]
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {"digits:train[fit]", "digits:train[calibration]", "digits:test"}
    detector, version = tracking.load_detector(tracking_config)
    assert version == summary["registered"]["classifier_version"] and detector.predict(test.images).n == len(test)
    assert run.data.tags["prefect.flow_run_id"] == summary["prefect_flow_run_id"]

    champion = client.get_model_version_by_alias(tracking_config.classifier_name, "champion")
    assert str(champion.version) == summary["registered"]["classifier_version"]
    served = mlflow.pyfunc.load_model(f"models:/{tracking_config.classifier_name}@champion")
    accuracy = float((served.predict(test.images.numpy()) == test.labels.numpy()).mean())
    assert accuracy == pytest.approx(summary["test_accuracy"])

    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts()
    keys = {a.key for a in artifacts}
    assert {"train-summary", "classifier-training", "autoencoder-training"} <= keys


def test_train_flow_on_unknown_dataset_fails_clearly_and_leaves_no_run(tracking_config):
    from scanflow.errors import UnknownDatasetError

    with pytest.raises(UnknownDatasetError, match="unknown dataset 'imagenet'"):
        train_flow(dataset="imagenet")
    experiment = mlflow_client(tracking_config.tracking_uri).get_experiment_by_name(tracking_config.experiment_name)
    assert experiment is None or not mlflow_client(tracking_config.tracking_uri).search_runs([experiment.experiment_id])


def test_cli_train_runs_the_flow_and_says_where_to_look(tracking_config, prefect_server, tmp_path):
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    result = subprocess.run(
        [sys.executable, "-m", "scanflow.cli", "train", "--dataset", "digits", "--epochs", "1", "--autoencoder-epochs", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Test accuracy:" in result.stdout
    assert "MLflow run:" in result.stdout and "MLflow UI:" in result.stdout
    assert f"{prefect_server.removesuffix('/api')}/runs/flow-run/" in result.stdout
    assert "alias 'champion'" in result.stdout


def test_flow_script_runs_as_a_plain_python_file(tracking_config, prefect_server, tmp_path):
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, str(REPO / "flows" / "train.py"), "digits"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'dataset': 'digits'" in result.stdout

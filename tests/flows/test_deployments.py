"""The steps as deployments, served by `scanflow serve` against the session's real Prefect server: a detect run that
finds drift emits `scanflow.drift.detected`, and the automation starts respond-to-drift on that batch; a supervise
run whose steps are deployments works unchanged, and its own drift events do not start the automation."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
from prefect.deployments import run_deployment

from blocks import MLflowTracking
from flows.supervise import supervise_flow
from scanflow.config import TrackingConfig
from scanflow.local import stop_process_group
from scanflow.stream import make_stream
from scanflow.tracking import mlflow_client
from tests.flows.conftest import digits_champion

pytestmark = pytest.mark.slow

NAME = "test"
SCANFLOW = str(Path(sys.executable).with_name("scanflow"))


@pytest.fixture(scope="module")
def champion(mlflow_store):
    with digits_champion(mlflow_store, "deployments") as env:
        yield env


@pytest.fixture(scope="module")
def tracking_block(champion):
    """Where the served runs track: only this block says it (the serving process has no MLflow variables)."""
    config = TrackingConfig(tracking_uri=champion["MLFLOW_TRACKING_URI"], experiment_name=champion["SCANFLOW_EXPERIMENT"],
                            classifier_name=champion["SCANFLOW_MODEL_NAME"], autoencoder_name="deployments-autoencoder")
    MLflowTracking.from_config(config).save("deployments-test", overwrite=True)
    return "deployments-test", config


@pytest.fixture(scope="module")
def served(tracking_block, prefect_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SCANFLOW_MODEL", "SCANFLOW_EXPERIMENT"))}
    env["PREFECT_API_URL"] = prefect_server
    with open(folder / "serve.log", "wb") as log:
        process = subprocess.Popen([SCANFLOW, "serve", "--name", NAME, "--human", "oracle", "--tracking", tracking_block[0],
                                    "--poll-seconds", "1"],
                                   cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                assert process.poll() is None, (folder / "serve.log").read_text()[-3000:]
                try:
                    deployment = client.read_deployment_by_name(f"respond-to-drift/{NAME}")
                    break
                except Exception:
                    time.sleep(1)
            else:
                pytest.fail("scanflow serve did not create its deployments within 180 s")
        yield deployment
    finally:
        stop_process_group(process)


def _runs_of(deployment_id) -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def _stream(folder: Path, corruption: str = "impulse_noise") -> list[Path]:
    """Two digits batches, the second corrupted; each test its own corruption (a decision that stands makes its
    shift known to the shared champion, and a known shift is not asked about again)."""
    make_stream(folder, "digits", n_batches=2, batch_size=100, drift_at=1, corruption=corruption, severity=5)
    return sorted((folder).glob("batch-*.npy"))


def test_drift_found_by_a_detect_deployment_starts_respond_to_drift_through_the_automation(served, tracking_block, tmp_path):
    clean, drifted = _stream(tmp_path / "stream")
    detect = run_deployment(f"detect/{NAME}", parameters={"batch_path": str(drifted), "batch_id": drifted.stem, "report": False}, timeout=300, poll_interval=1)
    assert detect.state.is_completed(), detect.state
    assert detect.state.result().is_drift

    deadline, respond = time.monotonic() + 420, None
    while time.monotonic() < deadline:
        finished = [r for r in _runs_of(served.id) if r.state and r.state.is_final()]
        if finished:
            respond = finished[0]
            break
        time.sleep(2)
    assert respond is not None, "the drift event started no respond-to-drift run within 420 s"
    assert respond.state.is_completed(), respond.state
    assert respond.parameters["batch_path"] == str(drifted) and respond.parameters["batch_id"] == drifted.stem
    result = respond.state.result()
    assert result["is_drift"] and result["improvement"].decided_by == "oracle"
    run = mlflow_client(tracking_block[1].tracking_uri).get_run(result["improvement"].mlflow_run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == mlflow_client(tracking_block[1].tracking_uri).get_experiment_by_name(tracking_block[1].experiment_name).experiment_id


def test_supervise_runs_its_steps_as_deployments_without_waking_the_automation(served, tracking_block, tmp_path):
    folder = tmp_path / "stream"
    _stream(folder, corruption="fog")
    respond_runs_before = len(_runs_of(served.id))
    result = supervise_flow(stream_dir=str(folder), human="oracle", tracking=tracking_block[0], step_deployments=NAME)
    rows = result["batches"]
    assert [r["drift"] for r in rows] == ["no", "yes"] and rows[1]["decided_by"] == "oracle"
    with get_client(sync_client=True) as client:
        detect_deployment = client.read_deployment_by_name(f"detect/{NAME}")
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(), deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[detect_deployment.id])))
    assert sum(1 for r in runs if r.parent_task_run_id is not None) >= 2
    time.sleep(10)
    assert len(_runs_of(served.id)) == respond_runs_before

"""Steps in containers for real: the step image from infra/Dockerfile, a Docker work pool and a prefect-docker
worker on this machine, the docker deployments of infra/prefect.yaml driven by a supervise run. The containers
(host network) reach the session's Prefect server, an MLflow server whose artifacts live in SeaweedFS, and the
bucket, all on 127.0.0.1; the test reads what they wrote back from MLflow and the bucket.

Opt-in for developers (`SCANFLOW_DOCKER_TESTS=1`; needs root, docker.io and debootstrap); always on in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId
from pydantic import SecretStr

from blocks import RESULTS_DOCUMENT, MLflowTracking, ScanflowStorage
from flows.supervise import supervise_flow
from scanflow.config import TrackingConfig
from scanflow.local import start_mlflow_server, stop_process_group
from scanflow.local_auth import MlflowAuth
from scanflow.tracking import mlflow_client
from tests import step_image as image_build
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.step_image import IMAGE

# Waiting for the image build (started with the session) runs inside the first test's timeout.
pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.fixture(scope="module")
def step_image():
    """The daemon, the local base image and the step image (`tests.step_image`: built in the background from the
    session's start, rebuilt only when its build context changed). Step containers still running afterwards are
    removed; in CI the stopped ones and the image (2.6 GiB) go too: CI machines' free disk varies, and the tests
    after this module write to the same disk."""
    image_build.wait()
    yield IMAGE
    # A step container still running now belongs to a test that failed or timed out; left alone it keeps retrying
    # servers this session has stopped.
    running = subprocess.run(["docker", "ps", "-q", "--filter", f"ancestor={IMAGE}"], capture_output=True, text=True, timeout=60)
    if running.stdout.split():
        subprocess.run(["docker", "rm", "-f", *running.stdout.split()], capture_output=True, timeout=300)
    if os.environ.get("CI") == "true":
        for command in (["docker", "container", "prune", "-f"], ["docker", "image", "rm", "-f", IMAGE]):
            subprocess.run(command, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def servers(s3_server, tmp_path_factory):
    """An MLflow server (SQLite runs, artifacts proxied to the bucket, no model yet) and the blocks that tell a
    container where everything is."""
    storage = ScanflowStorage(bucket="docker-pool", endpoint_url=s3_server.endpoint_url, aws_access_key_id=S3_ACCESS_KEY,
                              aws_secret_access_key=SecretStr(S3_SECRET_KEY), prefix="prod")
    storage.store().ensure_bucket()
    folder = tmp_path_factory.mktemp("mlflow-server")
    auth = MlflowAuth.generate()
    mlflow_server = start_mlflow_server(folder / "mlflow.db", "s3://docker-pool/mlflow", {**storage.environment()}, log_dir=folder,
                                        auth=auth)
    try:
        config = TrackingConfig(mlflow_server.tracking_uri, "docker-pool", "docker-pool-classifier", "docker-pool-autoencoder")
        # The containers learn the server and its credentials from the block (a SecretStr), not from their environment.
        MLflowTracking.from_config(config, auth.username, auth.password).save("docker-tracking", overwrite=True)
        storage.save("docker-storage", overwrite=True)
        storage.result_storage().save(RESULTS_DOCUMENT, overwrite=True)
        with pytest.MonkeyPatch.context() as patch:
            for name, value in mlflow_server.auth.environment().items():  # the test's MLflow calls, the worker, its containers
                patch.setenv(name, value)
            yield config, storage.store(), mlflow_server.log_path
    finally:
        mlflow_server.stop()


def _flow_names(runs) -> set[str]:
    with get_client(sync_client=True) as client:
        return {client.read_flow(run.flow_id).name for run in runs}


def _prefect(*args: str, env: dict) -> None:
    result = subprocess.run([PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_supervise_runs_its_steps_in_containers_and_reads_their_results_from_the_bucket(step_image, servers, prefect_server, tmp_path):
    """The supervise loop here, every step (train: there is no champion yet; predict, detect, the report beside the
    pause, improve, predict after) as the docker deployments: batches reach the containers through the bucket, the
    steps' return values come back through Prefect result storage in the bucket, records and models land in MLflow
    and the bucket."""
    config, store, mlflow_log = servers
    run_env = {**os.environ, "PREFECT_API_URL": prefect_server, "SCANFLOW_STEP_IMAGE": step_image, "SCANFLOW_PROJECT_DIR": str(REPO),
               "PREFECT_WORKER_QUERY_SECONDS": "1"}  # each step starts within a second, not within Prefect's default 10
    _prefect("work-pool", "create", "scanflow-docker", "--type", "docker", "--overwrite", env=run_env)
    _prefect("--no-prompt", "deploy", "--prefect-file", "infra/prefect.yaml", "--name", "docker", env=run_env)

    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "scanflow-docker", "--type", "docker"],
                                  cwd=tmp_path, env=run_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        state = supervise_flow(stream_dir=str(tmp_path / "stream"), demo=True, dataset="digits", n_batches=1, batch_size=100, drift_at=0,
                               corruption="impulse_noise", human="oracle", tracking="docker-tracking", storage="docker-storage",
                               step_deployments="docker", return_state=True)
    finally:
        stop_process_group(worker)
    log_text = (tmp_path / "worker.log").read_text(errors="replace")
    assert state.is_completed(), f"{state}\n{log_text[-4000:]}\nMLflow server:\n{mlflow_log.read_text(errors='replace')[-3000:]}"
    (row,) = state.result()["batches"]
    assert row["drift"] == "yes" and row["decided_by"] == "oracle", row

    with get_client(sync_client=True) as client:
        steps = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])))
        containers = {run.name: run for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in steps])))
                      if run.deployment_id is not None}
    assert len(containers) >= 5, [run.name for run in steps]
    flow_names = _flow_names(containers.values())
    assert {"train", "predict", "detect", "drift-report", "improve"} <= flow_names, flow_names
    assert all(run.infrastructure_pid and run.state.is_completed() for run in containers.values()), "a step was not run by the Docker worker"
    assert list(store.keys("prod/prefect-results/")), "no step result in the bucket"

    batch_id = row["batch"]
    (uploaded,) = [key for key in store.keys("prod/batches/") if key.startswith(f"prod/batches/{batch_id}-")]
    predictions = store.get_json(f"prod/predictions/{batch_id}.json")
    verdict = store.get_json(f"prod/detections/{batch_id}.json")
    assert predictions["batch"] == store.uri(uploaded) and len(predictions["labels"]) == 100 and predictions["model"] == config.classifier_name
    assert verdict["is_drift"]
    mlflow = mlflow_client(config.tracking_uri)
    for run_id in (predictions["mlflow_run_id"], verdict["mlflow_run_id"]):
        run = mlflow.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["prefect.flow_run_id"] in {str(r.id) for r in containers.values()}
    artifacts = [key for key in store.keys("mlflow/") if verdict["mlflow_run_id"] in key]
    assert artifacts, "the detect run's artifacts are not in the bucket"
    trained_in = mlflow.get_run(mlflow.get_model_version(config.classifier_name, "1").run_id)
    assert trained_in.data.tags["prefect.flow_run_id"] in {str(r.id) for r in containers.values()}, "v1 was not trained in a container"
    runs = mlflow.search_runs([mlflow.get_experiment_by_name(config.experiment_name).experiment_id])
    improve_runs = [run for run in runs if "scanflow.promoted" in run.data.tags]
    assert improve_runs and all(run.info.status == "FINISHED" for run in improve_runs)

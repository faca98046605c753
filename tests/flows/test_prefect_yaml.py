"""infra/prefect.yaml deploys every flow to a process work pool, with the drift automation, and a real `prefect
worker` runs a step from it: the same flow code as sub-flows, served, or on a pool."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.deployments import run_deployment

from scanflow.stream import make_stream
from tests.flows.conftest import digits_champion

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
FLOWS = ("train", "predict", "detect", "drift-report", "improve", "supervise", "respond-to-drift")


@pytest.fixture(scope="module")
def champion(mlflow_store):
    with digits_champion(mlflow_store, "prefect-yaml") as env:
        yield env


def _prefect(*args: str, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_prefect_yaml_deploys_every_step_and_a_process_worker_runs_one(env, prefect_server, tmp_path):
    run_env = {**os.environ, "PREFECT_API_URL": prefect_server, "SCANFLOW_PROJECT_DIR": str(REPO)}
    _prefect("work-pool", "create", "scanflow-process", "--type", "process", "--overwrite", env=run_env)
    _prefect("--no-prompt", "deploy", "--prefect-file", "infra/prefect.yaml", "--name", "process", env=run_env)
    with get_client(sync_client=True) as client:
        deployments = {flow: client.read_deployment_by_name(f"{flow}/process") for flow in FLOWS}
        assert all(d.work_pool_name == "scanflow-process" for d in deployments.values())
        assert deployments["supervise"].parameters == {"human": "person", "step_deployments": "process"}
        respond_id = deployments["respond-to-drift"].id
        automations = [a for a in client.read_automations() if any(str(getattr(action, "deployment_id", "")) == str(respond_id) for action in a.actions)]
    assert len(automations) == 1 and automations[0].trigger.expect == {"scanflow.drift.detected"}

    make_stream(tmp_path / "stream", "digits", n_batches=2, batch_size=100, drift_at=1, corruption="impulse_noise", severity=5)
    drifted = sorted((tmp_path / "stream").glob("batch-*.npy"))[1]
    queued = run_deployment("detect/process", parameters={"batch_path": str(drifted), "report": False}, timeout=0)
    _prefect("worker", "start", "--pool", "scanflow-process", "--run-once", env=run_env)
    with get_client(sync_client=True) as client:
        done = client.read_flow_run(queued.id)
        assert done.state.is_completed(), done.state
        assert done.state.result().is_drift
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            triggered = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[respond_id])))
            if triggered:
                break
            time.sleep(1)
    assert triggered and triggered[0].parameters["batch_path"] == str(drifted), "the drift event started no respond-to-drift run"


def test_the_kubernetes_base_job_template_creates_a_work_pool(prefect_server):
    run_env = {**os.environ, "PREFECT_API_URL": prefect_server}
    _prefect("work-pool", "create", "scanflow-k8s", "--type", "kubernetes", "--overwrite",
             "--base-job-template", "infra/kubernetes/base-job-template.json", env=run_env)
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("scanflow-k8s")
    assert pool.type == "kubernetes"
    variables = pool.base_job_template["variables"]["properties"]
    assert variables["image"]["default"] == "scanflow-step:latest" and variables["s3_secret_name"]["default"] == "scanflow-s3"
    container = pool.base_job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "{{ s3_secret_name }}"}} in container["envFrom"]
    assert container["securityContext"]["runAsUser"] == 1000


def test_an_image_stream_deploys_on_a_schedule_one_run_at_a_time(prefect_server, tmp_path):
    """`--name stream`: supervise the new sub-folders of $SCANFLOW_STREAM every 5 minutes, never two runs at once."""
    run_env = {**os.environ, "PREFECT_API_URL": prefect_server, "SCANFLOW_PROJECT_DIR": str(REPO), "SCANFLOW_STREAM": str(tmp_path)}
    _prefect("work-pool", "create", "scanflow-process", "--type", "process", "--overwrite", env=run_env)
    _prefect("--no-prompt", "deploy", "--prefect-file", "infra/prefect.yaml", "--name", "stream", env=run_env)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("supervise/stream")
        assert deployment.parameters == {"stream": str(tmp_path), "human": "person", "step_deployments": "process"}
        assert [s.schedule.interval.total_seconds() for s in deployment.schedules] == [300.0]
        assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 1

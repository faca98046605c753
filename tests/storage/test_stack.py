"""The local stack for real: `scanflow stack up` starts SeaweedFS, an MLflow server with its artifacts in the bucket
and a Prefect server; MLflow artifacts land in S3; `down` stops every process and `up` again finds all the data."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import pytest

from scanflow import stack
from scanflow.config import StorageConfig
from scanflow.local import free_port
from scanflow.storage import S3Store
from scanflow.tracking import mlflow_client

pytestmark = pytest.mark.slow
SCANFLOW = str(Path(sys.executable).with_name("scanflow"))


def test_stack_up_tracks_artifacts_into_the_bucket_and_survives_a_restart(tmp_path, monkeypatch):
    directory = tmp_path / "stack"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    ports = ["--prefect-port", str(free_port()), "--mlflow-port", str(free_port()), "--s3-port", str(free_port())]
    started = subprocess.run([SCANFLOW, "stack", "up", "--dir", str(directory), *ports], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        info = stack.info(directory)
        assert f"MLflow UI:  {info.mlflow_tracking_uri}" in started.stdout and 'eval "$(scanflow stack env --dir' in started.stdout
        for secret in (info.secret_key, info.mlflow_password, info.prefect_auth_string):
            assert len(secret) >= 32 and secret not in started.stdout + started.stderr, "stack up printed a secret"
        assert oct((directory / "credentials.json").stat().st_mode & 0o777) == "0o600"
        exported = subprocess.run([SCANFLOW, "stack", "env", "--dir", str(directory)], env=env, capture_output=True, text=True, timeout=120)
        assert f"export MLFLOW_TRACKING_PASSWORD={info.mlflow_password}" in exported.stdout
        assert f"export PREFECT_API_AUTH_STRING={info.prefect_auth_string}" in exported.stdout
        for name, value in info.environment().items():  # as `eval "$(scanflow stack env)"` does
            monkeypatch.setenv(name, value)
        assert stack.status(directory) == {"seaweedfs": True, "mlflow": True, "prefect": True}
        with urllib.request.urlopen(f"{info.prefect_api_url}/health", timeout=5) as response:
            assert response.status == 200

        again = subprocess.run([SCANFLOW, "stack", "up", "--dir", str(directory)], env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 2 and "a stack is already running from" in again.stderr

        (tmp_path / "model-card.txt").write_text("champion v1")
        mlflow.set_tracking_uri(info.mlflow_tracking_uri)
        mlflow.set_experiment("stack-restart")  # not an experiment id another test in this process made active
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(tmp_path / "model-card.txt"))
        store = S3Store(StorageConfig(bucket=info.bucket, endpoint_url=info.s3_endpoint_url, access_key_id=info.access_key, secret_access_key=info.secret_key, prefix=""))
        keys = [k for k in store.keys("mlflow/") if k.endswith("model-card.txt")]
        assert len(keys) == 1 and run.info.run_id in keys[0]
        folders = [directory, *(p for p in directory.rglob("*") if p.is_dir())]
        shared = [str(p) for p in folders if p.stat().st_mode & 0o077]
        assert not shared, f"folders another user can enter: {shared[:5]}"
        ours = [*directory.glob("*.json"), *directory.rglob("*.log"), *directory.rglob("mlflow.db")]
        assert len(ours) >= 5 and all(p.stat().st_mode & 0o077 == 0 for p in ours), [(str(p), oct(p.stat().st_mode)) for p in ours]
    finally:
        stopped = subprocess.run([SCANFLOW, "stack", "down", "--dir", str(directory)], env=env, capture_output=True, text=True, timeout=120)
    assert "stopped: seaweedfs, mlflow, prefect" in stopped.stdout
    assert not any(stack._alive(pid) for pid in info.pids.values())

    restarted = stack.up(directory)
    try:
        assert restarted.mlflow_tracking_uri == info.mlflow_tracking_uri and restarted.access_key == info.access_key
        assert restarted.environment() == info.environment(), "a restart must keep every credential"
        downloaded = mlflow_client(restarted.mlflow_tracking_uri).download_artifacts(run.info.run_id, "model-card.txt", str(tmp_path / "back"))
        assert Path(downloaded).read_text() == "champion v1"
    finally:
        stack.down(directory)
        mlflow.set_tracking_uri(None)

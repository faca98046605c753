"""The blocks against the session's Prefect server: `scanflow blocks register`, secrets stored encrypted, and flows
that take their settings from blocks named in their parameters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from pydantic import SecretStr

from blocks import MLflowTracking, ScanflowStorage, SupervisionPolicy
from flows.settings import BlockNotFoundError, supervision_settings, tracking_config

SCANFLOW = str(Path(sys.executable).with_name("scanflow"))


def test_cli_registers_the_types_and_saves_defaults_once(prefect_server, tmp_path):
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "MLFLOW_TRACKING_URI": "sqlite:////tmp/blocks-cli.db",
           "SCANFLOW_MODEL_NAME": "cli-classifier", "SCANFLOW_S3_BUCKET": "cli-bucket", "AWS_SECRET_ACCESS_KEY": "cli-secret",
           "MLFLOW_TRACKING_USERNAME": "cli-user", "MLFLOW_TRACKING_PASSWORD": "cli-password"}
    first = subprocess.run([SCANFLOW, "blocks", "register", "--save-defaults"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    for slug in ("scanflow-storage", "scanflow-mlflow-tracking", "scanflow-supervision-policy"):
        assert f"registered block type {slug}" in first.stdout
        assert f"saved block {slug}/default" in first.stdout
    with get_client(sync_client=True) as client:
        assert client.read_block_type_by_slug("scanflow-mlflow-tracking").name == "Scanflow MLflow Tracking"
    assert MLflowTracking.load("default").config().classifier_name == "cli-classifier"
    assert ScanflowStorage.load("default").aws_secret_access_key.get_secret_value() == "cli-secret"
    assert MLflowTracking.load("default").credentials_environment() == {"MLFLOW_TRACKING_USERNAME": "cli-user", "MLFLOW_TRACKING_PASSWORD": "cli-password"}

    env["SCANFLOW_MODEL_NAME"] = "changed-classifier"
    second = subprocess.run([SCANFLOW, "blocks", "register", "--save-defaults"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "saved block" not in second.stdout
    assert MLflowTracking.load("default").classifier_name == "cli-classifier"


def test_cli_without_a_server_says_how_to_get_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    result = subprocess.run([SCANFLOW, "blocks", "register"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3
    assert "scanflow blocks register needs a Prefect server that outlives this command" in result.stderr


def test_the_server_keeps_secrets_hidden_from_readers_without_include_secrets():
    ScanflowStorage(bucket="hidden-bucket", aws_access_key_id="id", aws_secret_access_key=SecretStr("top-secret")).save("secret-test", overwrite=True)
    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name("secret-test", "scanflow-storage", include_secrets=False)
    assert document.data["aws_secret_access_key"] != "top-secret"
    assert "top-secret" not in str(document.data)


def test_flows_take_settings_from_named_blocks_and_parameters_win():
    MLflowTracking(tracking_uri="http://127.0.0.1:5999", experiment_name="from-block", classifier_name="shop-classifier").save("shop", overwrite=True)
    SupervisionPolicy(budget=7, alpha=0.01, pause_timeout_s=60).save("strict", overwrite=True)
    assert tracking_config("shop").experiment_name == "from-block"
    settings = supervision_settings("strict", budget=None, pause_timeout_s=30)
    assert (settings.budget, settings.alpha, settings.pause_timeout_s) == (7, 0.01, 30)


def test_a_missing_block_names_itself_and_the_fix():
    with pytest.raises(BlockNotFoundError, match=r"no Scanflow Supervision Policy block named 'nope' on the Prefect server .*scanflow blocks register --save-defaults"):
        supervision_settings("nope")

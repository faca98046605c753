"""The infrastructure files parse as their tools read them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{tool} is missing: CI installs it (Makefile TEST_DEB_PACKAGES)")
        pytest.skip(f"{tool} is not installed (Debian package {tool})")
    return path


def test_the_compose_file_describes_the_stack_and_demands_the_s3_keys():
    compose = _require("docker-compose")
    env = {**os.environ, "SCANFLOW_S3_ACCESS_KEY": "key", "SCANFLOW_S3_SECRET_KEY": "secret"}
    result = subprocess.run([compose, "-f", str(REPO / "infra" / "compose.yaml"), "config"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert set(config["services"]) == {"seaweedfs", "mlflow", "prefect", "worker"}
    published = [port for service in config["services"].values() for port in service.get("ports", [])]
    assert len(published) == 3 and all(
        (port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]) == "127.0.0.1" for port in published
    ), f"every published port stays on 127.0.0.1: {published}"
    assert config["services"]["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"

    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANFLOW_S3_")}
    missing = subprocess.run([compose, "-f", str(REPO / "infra" / "compose.yaml"), "config"], env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "set SCANFLOW_S3_ACCESS_KEY" in missing.stderr


def test_an_image_build_that_would_fill_the_disk_is_refused_before_it_starts(tmp_path):
    from scanflow.errors import ScanflowError
    from scanflow.image import check_build_space

    stats = os.statvfs(tmp_path)
    free = stats.f_bavail * stats.f_frsize
    check_build_space(str(tmp_path), needed=free // 2)
    check_build_space(str(tmp_path / "not-here"), needed=2**62)
    with pytest.raises(ScanflowError) as refused:
        check_build_space(str(tmp_path), needed=free + 2**40)
    message = str(refused.value)
    assert message.startswith(f"the step image build needs about {(free + 2**40) / 2**30:.0f} GiB free in {tmp_path} and ")
    assert message.endswith("GiB is free: free some space (docker system prune -f removes stopped containers, unused images "
                            "and build cache) and retry")

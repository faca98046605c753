"""One Prefect test harness (a temporary server, ~20-40 s to start here) for every flow test of the session."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


@contextlib.contextmanager
def digits_champion(mlflow_store: str, stem: str) -> Iterator[dict[str, str]]:
    """Train a digits champion (with its detector) under model names and an experiment of its own; yields the
    environment that points at them, restoring the previous environment afterwards."""
    from flows.train import train_flow

    env = {"MLFLOW_TRACKING_URI": mlflow_store, "SCANFLOW_MODEL_NAME": f"{stem}-classifier", "SCANFLOW_EXPERIMENT": stem}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        train_flow(dataset="digits", epochs=15, autoencoder_epochs=10, latent_dim=8)
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture()
def env(champion, monkeypatch):
    """The test module's `champion` environment, set for one test."""
    for key, value in champion.items():
        monkeypatch.setenv(key, value)
    return champion

"""I/O tasks retry what may pass (an unreachable server) and fail at once on a user's mistake (an unknown model):
counted in the task runs the Prefect server records."""

from __future__ import annotations

import pytest
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.retries import IO_RETRIES
from scanflow.errors import ModelNotFoundError, TrackingUnavailableError, worth_retrying
from scanflow.storage import StorageUnavailableError

pytestmark = pytest.mark.slow
FAST = {**IO_RETRIES, "retry_delay_seconds": 0}


def test_what_is_worth_retrying():
    assert worth_retrying(ConnectionError("refused")) and worth_retrying(TimeoutError("slow"))
    assert worth_retrying(RuntimeError("unknown"))
    assert not worth_retrying(ModelNotFoundError("no model 'nope'"))
    # Raised once the client's own bounded retries are spent: another round would only multiply the wait.
    assert not worth_retrying(StorageUnavailableError("S3 did not answer")) and not worth_retrying(TrackingUnavailableError("MLflow did not answer"))


@pytest.mark.parametrize(("error", "attempts"), [(ModelNotFoundError("no registered model 'nope'"), 1), (ConnectionError("refused"), 3)])
def test_a_users_mistake_fails_at_once_and_a_connection_error_is_retried(prefect_server, error, attempts):
    calls: list[int] = []

    @task(cache_policy=NO_CACHE, **FAST)
    def load() -> None:
        calls.append(1)
        raise error

    @flow
    def step() -> None:
        load()

    with pytest.raises(type(error), match=str(error)):
        step()
    assert len(calls) == attempts


def test_an_unknown_model_is_one_clear_message_without_tracebacks_or_retries(prefect_server, tmp_path):
    """The trial's case: `detect --model` of a model that is not registered printed its message below Prefect
    tracebacks, after three attempts 5 s apart."""
    import os
    import subprocess
    import sys

    import numpy as np

    np.save(tmp_path / "batch.npy", np.zeros((10, 1, 8, 8), dtype=np.uint8))
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("SCANFLOW_DEBUG", None)
    command = [sys.executable, "-m", "scanflow.cli", "detect", "--batch", str(tmp_path / "batch.npy"), "--model", "nope@champion"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "scanflow: error: " in result.stderr and "nope" in result.stderr.splitlines()[-1]
    assert "Traceback" not in output, output[-3000:]
    assert output.count("Retrying") == 0 and "Task run 'load_champion_detector" in output
    debug = subprocess.run([sys.executable, "-m", "scanflow.cli", "--debug", *command[3:]], capture_output=True, text=True, env=env, timeout=300)
    assert debug.returncode != 0 and "Traceback" in debug.stdout + debug.stderr

"""A person answers the supervise loop's pause form in the real Prefect UI, in headless Chromium: the evidence (the
grid of critical samples as an image, their table) is on the form, the labels come pre-filled with the model's
guesses, the person corrects them and chooses retrain; the run resumes, the decision reaches MLflow, and a new model
version is registered from it."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from flows.supervise import paused_child, supervise_flow
from scanflow.config import TrackingConfig
from scanflow.stream import make_stream, read_stream
from scanflow.tracking import mlflow_client
from tests.flows.conftest import digits_champion
from tests.flows.ui import PauseForm, browser_page, chromium_path

pytestmark = [pytest.mark.slow, pytest.mark.skipif(chromium_path() is None, reason="needs Debian's chromium (infra/system-deps.sh installs it)")]


@pytest.fixture(scope="module")
def champion(mlflow_store):
    with digits_champion(mlflow_store, "browser") as env:
        yield env


def _flow_run_id(name: str, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
            if runs:
                return str(runs[0].id)
            time.sleep(0.5)
    raise TimeoutError(f"no flow run named {name}")


def test_a_person_corrects_labels_and_retrains_from_the_prefect_ui(env, prefect_server, tmp_path):
    stream_dir = tmp_path / "stream"
    make_stream(stream_dir, "digits", n_batches=2, batch_size=100, drift_at=1, corruption="impulse_noise", severity=5)
    drifted = read_stream(stream_dir)[1]
    run_name = f"browser-{uuid.uuid4().hex[:8]}"
    outcome: dict = {}
    loop = threading.Thread(target=lambda: outcome.update(supervise_flow.with_options(flow_run_name=run_name)(
        stream_dir=str(stream_dir), human="person", pause_timeout_s=600)), daemon=True)
    loop.start()
    child = str(paused_child(_flow_run_id(run_name), timeout_s=300))

    with browser_page() as page:
        form = PauseForm.open(page, prefect_server.removesuffix("/api"), child)
        assert any(src.startswith("data:image/png;base64,") for src in form.evidence_images())
        rows = form.table_rows()
        guesses = form.labels()
        assert len(rows) == len(guesses) > 0
        assert [int(row[3]) for row in rows] == guesses
        shown = [int(row[1]) for row in rows]
        truth = [int(label) for label in np.asarray(drifted.true_labels())[shown]]
        form.choose_action("retrain")
        form.set_labels(truth)
        form.set_note("corrected in the browser")
        form.submit()

    loop.join(timeout=600)
    assert not loop.is_alive(), "the supervise run did not finish after the form was submitted"
    row = outcome["batches"][1]
    assert (row["drift"], row["decision"], row["decided_by"]) == ("yes", "retrain", "human")
    assert 0 < row["labels_used"] < len(truth)  # the rest of the person's labels judge the challenger (holdout)

    config = TrackingConfig.from_env()
    client = mlflow_client(config.tracking_uri)
    experiment = client.get_experiment_by_name(config.experiment_name)
    [improve_run] = client.search_runs([experiment.experiment_id], f"tags.mlflow.runName = 'improve-{drifted.batch_id}'")
    decision = json.loads(Path(client.download_artifacts(improve_run.info.run_id, "decision.json", str(tmp_path))).read_text())
    assert decision["labels"] == truth and decision["note"] == "corrected in the browser" and decision["decided_by"] == "human"
    versions = client.search_model_versions(f"name = '{config.classifier_name}'")
    assert len(versions) == 2, "the person's retrain decision registered no new classifier version"
    assert improve_run.data.tags["scanflow.promoted"] == ("true" if row["promoted"] == "yes" else "false")

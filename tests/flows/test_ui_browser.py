"""A person answers the supervise loop's decision form in the real Prefect UI, in headless Chromium, at 1366x768 and
1920x1080: every critical sample can be brought into view by scrolling the dialog alone, shows at least 84 px tall
beside its own choice of class names (the model's guess marked as a guess), and the run resumes with exactly the
labels the person picked: untouched guesses and "not sure" are no labels."""

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
from scanflow.human import NOT_SURE, guess_choice
from scanflow.stream import make_stream, read_stream
from scanflow.tracking import mlflow_client
from tests.flows.conftest import digits_champion
from tests.flows.ui import PauseForm, browser_page, chromium_path, visible_box

pytestmark = [pytest.mark.slow, pytest.mark.skipif(chromium_path() is None, reason="needs Debian's chromium (infra/system-deps.sh installs it)")]

#: The height a 28x28 image needs to be judged (3 screen pixels per image pixel); every thumbnail must reach it.
MIN_SAMPLE_PX = 84


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


def _waiting_notice(client, parent: str, timeout_s: float = 60) -> str:
    """The `decision-waiting` artifact the supervise run shows while its decision waits."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["decision-waiting"]), flow_run_id=ArtifactFilterFlowRunId(any_=[parent])))
        if found:
            return str(found[0].data)
        time.sleep(0.5)
    return ""


def _intended_label(position: int, truth: int) -> int | None:
    """What the scripted person answers: the true class for most samples, the untouched guess for position 1 and
    "not sure" for position 3 (both are no label)."""
    return None if position in (1, 3) else truth


@pytest.mark.parametrize(("width", "height", "action", "corruption"), [(1366, 768, "retrain", "impulse_noise"), (1920, 1080, "filter", "shot_noise")])
def test_a_person_sees_every_sample_beside_its_label_and_the_run_gets_exactly_their_labels(env, prefect_server, tmp_path, width, height, action, corruption):
    stream_dir = tmp_path / "stream"
    make_stream(stream_dir, "digits", n_batches=2, batch_size=100, drift_at=1, corruption=corruption, severity=5)
    drifted = read_stream(stream_dir)[1]
    run_name = f"browser-{uuid.uuid4().hex[:8]}"
    outcome: dict = {}
    loop = threading.Thread(target=lambda: outcome.update(supervise_flow.with_options(flow_run_name=run_name)(
        stream_dir=str(stream_dir), human="person", pause_timeout_s=600, ask_known_shifts=True)), daemon=True)
    loop.start()
    parent = _flow_run_id(run_name)
    child = str(paused_child(parent, timeout_s=300))
    with get_client(sync_client=True) as client:
        request = client.read_flow_run(child).parameters["request"]
        waiting = _waiting_notice(client, parent)
    assert f"/runs/flow-run/{child}" in waiting and "press **Resume**" in waiting, waiting
    classes = tuple(request["classes"])
    assert classes == tuple(str(k) for k in range(10))
    truth = [int(label) for label in np.asarray(drifted.true_labels())[request["shown"]]]
    intended = [_intended_label(k, t) for k, t in enumerate(truth)]

    with browser_page(width, height) as page:
        form = PauseForm.open(page, prefect_server.removesuffix("/api"), child)
        heading = visible_box(form.heading())
        assert heading["height"] > 0 and heading["height"] == heading["full_height"], f"the verdict heading is hidden: {heading}"
        assert form.heading().inner_text().startswith(f"Drift in batch {drifted.batch_id}")
        assert form.n_samples() == len(truth) > 0
        for k in range(len(truth)):
            field = form.sample(k + 1)
            image = field.locator("img")
            field.scroll_into_view_if_needed()
            box = visible_box(image)
            assert box["height"] >= MIN_SAMPLE_PX and box["height"] == box["full_height"] and box["width"] == box["full_width"], (
                f"sample #{k + 1} is not fully visible at {width}x{height}: {box}")
            assert f"#{k + 1} · batch row {request['shown'][k]}" in field.inner_text()
            guess = guess_choice(classes[request["guesses"][k]])
            assert form.value(field) == guess
            control = visible_box(field.locator(".p-select-button__control"))
            assert control["height"] == control["full_height"] > 0, f"sample #{k + 1} and its label control are not in view together"
            before = form.actions
            options = form.options(field)
            assert options == [guess, *classes, NOT_SURE], f"sample #{k + 1} offers {options}"
            form.pick(guess if k == 1 else NOT_SURE if k == 3 else classes[truth[k]])
            assert form.actions - before <= 2, "labelling one sample took more than 2 actions"
        labelling = form.actions - 1
        form.choose_action(action)
        form.set_note("labelled in the browser")
        form.submit()
        assert labelling <= 2 * len(truth)

    loop.join(timeout=600)
    assert not loop.is_alive(), "the supervise run did not finish after the form was submitted"
    row = outcome["batches"][1]
    assert (row["drift"], row["decision"], row["decided_by"]) == ("yes", action, "human")
    config = TrackingConfig.from_env()
    client = mlflow_client(config.tracking_uri)
    experiment = client.get_experiment_by_name(config.experiment_name)
    [improve_run] = client.search_runs([experiment.experiment_id], f"tags.mlflow.runName = 'improve-{drifted.batch_id}' and tags.`scanflow.action` = '{action}'")
    decision = json.loads(Path(client.download_artifacts(improve_run.info.run_id, "decision.json", str(tmp_path))).read_text())
    assert decision["labels"] == intended and decision["note"] == "labelled in the browser" and decision["decided_by"] == "human"
    outcome_json = json.loads(Path(client.download_artifacts(improve_run.info.run_id, "outcome.json", str(tmp_path))).read_text())
    n_given = sum(label is not None for label in intended)
    judged = outcome_json["candidate_scores"]["n_shifted"] + outcome_json["n_labels_used"]
    assert judged == n_given, f"{judged} labels trained or judged the challenger; the person gave {n_given}"

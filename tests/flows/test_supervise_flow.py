"""The supervise loop under Prefect's test harness: drift pauses a child flow with a per-batch form; answers come
through resume_flow_run (simulated oracle, or a test acting as the person); bad answers are refused by the server
with the run still paused; a timeout runs the default and is recorded as such."""

from __future__ import annotations

import json

import numpy as np

import os
import threading
from pathlib import Path

import pytest
from prefect import resume_flow_run
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

from flows.supervise import supervise_flow
from scanflow import tracking
from scanflow.config import TrackingConfig
from scanflow.stream import make_stream
from scanflow.tags import ACTION_TAG, BATCH_ID_TAG, DECIDED_BY_TAG, KIND_TAG, KNOWN_SHIFT_TAG_PREFIX, PROMOTED_TAG
from scanflow.tracking import mlflow_client
from tests.flows.conftest import digits_champion, paused_child_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def champion(mlflow_store):
    with digits_champion(mlflow_store, "supervise-flow") as env:
        yield env


#: The pause timeout of the tests where a thread plays the person: if the thread fails, the run ends by timeout
#: (and the test fails on what the thread reported) instead of waiting out pytest's limit.
UNANSWERED_AFTER_S = 300


def _reporting(person, failures: list[str]):
    """`person` run so that an exception in the thread is kept for the test to report."""

    def run() -> None:
        try:
            person()
        except Exception as error:
            failures.append(f"the person thread failed: {type(error).__name__}: {error}")

    return run


def _stream(tmp_path, n_batches=3, drift_at=1, corruption="impulse_noise"):
    """A digits stream; each test drifts with a corruption of its own, because a decision that stands makes its
    shift known to the champion (the module's tests share it) and a known shift is not asked about again."""
    make_stream(tmp_path / "stream", "digits", n_batches=n_batches, batch_size=100, drift_at=drift_at, corruption=corruption, severity=5)
    return str(tmp_path / "stream")


def test_oracle_loop_decides_improves_and_reports(env, tmp_path):
    result = supervise_flow(stream_dir=_stream(tmp_path), human="oracle", budget=20, retrain_steps=60, denoiser_steps=150)
    rows = result["batches"]
    assert [r["corrupted"] for r in rows] == ["no", "impulse_noise", "impulse_noise"]
    assert rows[0]["drift"] == "no" and rows[1]["drift"] == "yes"
    assert rows[1]["decided_by"] == "oracle" and rows[1]["accuracy_after"] is not None
    # The row reports what the improve run recorded: its action, and whether it promoted a challenger.
    client = mlflow_client(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(env["SCANFLOW_EXPERIMENT"]).experiment_id
    [improve_run] = client.search_runs([experiment], filter_string=f"tags.`{KIND_TAG}` = 'improve' and "
                                       f"tags.`{BATCH_ID_TAG}` = '{rows[1]['batch']}' and tags.`{DECIDED_BY_TAG}` = 'oracle'")
    assert improve_run.data.tags[ACTION_TAG] == rows[1]["decision"] != "ignore"
    assert improve_run.data.tags[PROMOTED_TAG] == ("true" if rows[1]["promoted"] == "yes" else "false")
    # The decision trained for the steps the run was given (--retrain-steps / --denoiser-steps).
    key, steps = ("retrain_steps", "60") if rows[1]["decision"] == "retrain" else ("denoiser_steps", "150")
    assert improve_run.data.params[key] == steps, improve_run.data.params
    if rows[1]["promoted"] == "yes":
        assert result["champion"] != rows[0]["model"].removeprefix("v")
    # The loop's own MLflow run charts the stream: one step per batch.
    [stream_run] = client.search_runs([experiment], filter_string=f"tags.`{KIND_TAG}` = 'supervise' and "
                                      f"tags.`prefect.flow_run_id` = '{result['prefect_flow_run_id']}'")
    assert stream_run.info.status == "FINISHED"
    history = {key: [(m.step, m.value) for m in sorted(client.get_metric_history(stream_run.info.run_id, key), key=lambda m: m.step)]
               for key in ("drift", "p_value", "statistic", "accuracy_before")}
    assert history["drift"] == [(i, float(row["drift"] in ("yes", "known"))) for i, row in enumerate(rows)]
    assert [value for _, value in history["p_value"]] == [row["p_value"] for row in rows]
    assert [step for step, _ in history["statistic"]] == [0, 1, 2]
    assert [value for _, value in history["accuracy_before"]] == [row["accuracy_before"] for row in rows]
    png = Path(client.download_artifacts(stream_run.info.run_id, "stream.png", str(tmp_path)))
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 10_000
    with get_client(sync_client=True) as prefect:
        [report] = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["supervision-report"])),
                                          flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[result["prefect_flow_run_id"]])))
    assert "![the stream](data:image/png;base64," in report.data


def test_a_clean_batch_leaves_every_record_the_loop_keeps(env, tmp_path):
    """The records of a clean batch, counted: a predict and a detect MLflow run (finished, linked to their Prefect
    flow runs, with their metrics and artifacts), the predict and detect sub-flows (completed, with their Prefect
    artifacts), and one step of the supervise run. A faster loop has to keep every one of them."""
    result = supervise_flow(stream_dir=_stream(tmp_path, n_batches=2, drift_at=2), human="oracle")
    assert [row["drift"] for row in result["batches"]] == ["no", "no"]
    parent = result["prefect_flow_run_id"]
    with get_client(sync_client=True) as prefect:
        children = prefect.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))
        flows = {flow.id: flow.name for flow in prefect.read_flows()}
        artifacts = prefect.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id for run in children])))
    assert sorted(flows[run.flow_id] for run in children) == ["detect", "detect", "predict", "predict"]
    assert all(run.state.is_completed() for run in children)
    published = sorted(f"{artifact.type}:{artifact.key}" for artifact in artifacts if artifact.key is not None)
    assert published == ["markdown:drift-summary"] * 2 + ["table:critical-samples"] * 2 + ["table:predictions"] * 2

    client = mlflow_client(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(env["SCANFLOW_EXPERIMENT"]).experiment_id
    mine = {str(run.id) for run in children}
    runs = [run for run in client.search_runs([experiment], max_results=1000) if run.data.tags.get("prefect.flow_run_id") in mine]
    records = sorted((run.data.tags[BATCH_ID_TAG], run.data.tags[KIND_TAG], run.info.status, sorted(run.data.metrics),
                      sorted(artifact.path for artifact in client.list_artifacts(run.info.run_id))) for run in runs)
    detect_metrics = ["n", "n_critical", "p_value", "statistic", "threshold"]
    assert records == [
        (batch, kind, "FINISHED", metrics, files)
        for batch in ("batch-000", "batch-001")
        for kind, metrics, files in (("detect", detect_metrics, ["critical_samples.png", "drift_result.json"]),
                                     ("predict", ["n", "n_rejected"], ["predictions.csv"]))
    ]
    [stream_run] = client.search_runs([experiment], filter_string=f"tags.`prefect.flow_run_id` = '{parent}'")
    assert len(client.get_metric_history(stream_run.info.run_id, "p_value")) == 2
    assert sorted(artifact.path for artifact in client.list_artifacts(stream_run.info.run_id)) == ["stream.png", "stream.svg"]


def test_inline_steps_keep_the_same_records_on_the_supervise_run_itself(env, tmp_path):
    """`inline_steps`: predict and detect run as tasks of the supervise run, not sub-flows. Every record of the
    test above is kept: the same MLflow runs (with their metrics and artifacts), now linked to the supervise run,
    and the same Prefect artifacts, on it; the verdicts equal the sub-flows'."""
    as_subflows = supervise_flow(stream_dir=_stream(tmp_path / "a", n_batches=2, drift_at=2), human="oracle")
    result = supervise_flow(stream_dir=_stream(tmp_path / "b", n_batches=2, drift_at=2), human="oracle", inline_steps=True)
    assert [(r["batch"], r["drift"], r["p_value"]) for r in result["batches"]] == [(r["batch"], r["drift"], r["p_value"]) for r in as_subflows["batches"]]
    parent = result["prefect_flow_run_id"]
    with get_client(sync_client=True) as prefect:
        children = prefect.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))
        artifacts = prefect.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[parent])))
        tasks = prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[parent])))
    assert children == []
    published = sorted(f"{artifact.type}:{artifact.key}" for artifact in artifacts if artifact.key in ("drift-summary", "critical-samples", "predictions"))
    assert published == ["markdown:drift-summary"] * 2 + ["table:critical-samples"] * 2 + ["table:predictions"] * 2
    assert sorted(t.name.rsplit("-", 1)[0] for t in tasks if t.name.startswith(("predict-", "detect-"))) == ["detect"] * 2 + ["predict"] * 2

    client = mlflow_client(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(env["SCANFLOW_EXPERIMENT"]).experiment_id
    runs = client.search_runs([experiment], filter_string=f"tags.`prefect.flow_run_id` = '{parent}'", max_results=100)
    records = sorted((run.data.tags.get(BATCH_ID_TAG, ""), run.data.tags[KIND_TAG], run.info.status, sorted(run.data.metrics),
                      sorted(artifact.path for artifact in client.list_artifacts(run.info.run_id))) for run in runs)
    detect_metrics = ["n", "n_critical", "p_value", "statistic", "threshold"]
    stream_metrics = sorted(client.get_run(next(r.info.run_id for r in runs if r.data.tags[KIND_TAG] == "supervise")).data.metrics)
    assert records == [("", "supervise", "FINISHED", stream_metrics, ["stream.png", "stream.svg"])] + [
        (batch, kind, "FINISHED", metrics, files)
        for batch in ("batch-000", "batch-001")
        for kind, metrics, files in (("detect", detect_metrics, ["critical_samples.png", "drift_result.json"]),
                                     ("predict", ["n", "n_rejected"], ["predictions.csv"]))
    ]


def test_a_drift_a_person_decided_about_is_not_asked_about_again_in_the_stream(env, tmp_path):
    """One drift, one question: the person ignores the shot noise of batch-001, so batch-002, the same shift, is
    reported as known and nobody is paused for it (a second pause would go unanswered and end by timeout)."""
    run_name = "supervise-known-shift-test"
    answered: list[str] = []

    def person() -> None:
        _, child = paused_child_of(run_name)
        resume_flow_run(child, run_input={"action": "ignore", "note": "scanner noise, accepted"})
        answered.append(str(child))

    failures: list[str] = []
    thread = threading.Thread(target=_reporting(person, failures), daemon=True)
    thread.start()
    stream = tmp_path / "stream"
    make_stream(stream, "digits", n_batches=3, batch_size=100, drift_at=1, corruption="shot_noise", severity=4)
    try:
        result = supervise_flow.with_options(flow_run_name=run_name)(
            stream_dir=str(stream), human="person", budget=20, pause_timeout_s=UNANSWERED_AFTER_S, action_on_timeout="ignore",
        )
    finally:  # the champion is shared by the module: its next shot-noise batch must be asked about again
        client = mlflow_client(env["MLFLOW_TRACKING_URI"])
        for version in client.search_model_versions(f"name = '{env['SCANFLOW_MODEL_NAME']}'"):
            for key in [key for key in version.tags if key.startswith(KNOWN_SHIFT_TAG_PREFIX)]:
                client.delete_model_version_tag(version.name, version.version, key)
    thread.join(timeout=60)
    assert not failures and len(answered) == 1, failures
    rows = result["batches"]
    assert [(r["drift"], r["decision"], r["decided_by"]) for r in rows[1:]] == [
        ("yes", "ignore", "human"), ("known", "as batch-001 (ignore)", "known shift")]
    assert rows[0]["drift"] == "no" and rows[1]["model"] == rows[2]["model"] == f"v{result['champion']}"


def test_a_person_answer_is_validated_by_the_server_and_the_run_stays_paused(env, tmp_path):
    config = TrackingConfig.from_env()
    errors: list[str] = []
    states: list[str] = []

    def person() -> None:
        _, child = paused_child_of(run_name)
        with get_client(sync_client=True) as client:
            keyset = client.read_flow_run(child).state.state_details.run_input_keyset
            fields = json.loads(client.read_flow_run_input(child, keyset["schema"]))["properties"]
        n_shown = sum(name.startswith("sample_") for name in fields)
        for bad in ({"action": "retrain", "sample_01": "Sneaker"}, {"action": "reboot"},
                    {"action": "retrain", f"sample_{n_shown + 1:02d}": "1"}):
            try:
                resume_flow_run(child, run_input=bad)
                errors.append(f"accepted {bad}")
            except Exception as error:  # the server refuses; the run must stay paused
                errors.append(str(error))
            with get_client(sync_client=True) as client:
                states.append(client.read_flow_run(child).state.type.value)
        resume_flow_run(child, run_input={"action": "ignore", "note": "seen it"})

    run_name = "supervise-person-test"
    thread = threading.Thread(target=_reporting(person, errors), daemon=True)
    thread.start()
    result = supervise_flow.with_options(flow_run_name=run_name)(
        stream_dir=_stream(tmp_path, n_batches=1, drift_at=0, corruption="shot_noise"), human="person", budget=20,
        pause_timeout_s=UNANSWERED_AFTER_S, action_on_timeout="ignore",
    )
    thread.join(timeout=60)
    assert len(errors) == 3 and all("Validation failed" in e for e in errors), errors
    assert states == ["PAUSED"] * 3
    assert result["batches"][0]["decision"] == "ignore" and result["batches"][0]["decided_by"] == "human"
    assert tracking.champion_version(config) == result["champion"]


def test_a_timeout_runs_the_default_and_says_so(env, tmp_path):
    result = supervise_flow(stream_dir=_stream(tmp_path, n_batches=2, corruption="fog"), human="person", pause_timeout_s=3, action_on_timeout="ignore")
    row = result["batches"][1]
    assert row["drift"] == "yes" and row["decided_by"] == "timeout" and row["decision"] == "ignore"


def test_a_person_answers_from_the_command_line(env, tmp_path, prefect_server):
    import subprocess
    import sys

    run_name = "supervise-cli-answer-test"
    outputs: list[subprocess.CompletedProcess] = []

    def person() -> None:
        parent, _ = paused_child_of(run_name)
        command = [sys.executable, "-m", "scanflow.cli", "answer", str(parent), "--action"]
        environment = {**os.environ, "PREFECT_API_URL": prefect_server}
        outputs.append(subprocess.run(command + ["retrain", "--labels", "1,2"], capture_output=True, text=True, env=environment, timeout=300))
        outputs.append(subprocess.run(command + ["ignore", "--note", "from the shell"], capture_output=True, text=True, env=environment, timeout=300))

    failures: list[str] = []
    thread = threading.Thread(target=_reporting(person, failures), daemon=True)
    thread.start()
    result = supervise_flow.with_options(flow_run_name=run_name)(
        stream_dir=_stream(tmp_path, n_batches=1, drift_at=0, corruption="rotate"), human="person", budget=20,
        pause_timeout_s=UNANSWERED_AFTER_S, action_on_timeout="ignore",
    )
    thread.join(timeout=60)
    assert not failures and len(outputs) == 2, failures
    refused, accepted = outputs
    assert refused.returncode == 2 and "got 2 labels for 20 critical samples: give one label per sample shown" in refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    assert "  #   row  score  model's guess" in accepted.stdout and "critical samples: " in accepted.stdout
    assert "answered flow run" in accepted.stdout and "ignore with 0 of 20 samples labelled" in accepted.stdout
    assert result["batches"][0]["decision"] == "ignore" and result["batches"][0]["decided_by"] == "human"


def _png_batch(folder, images, labels, classes) -> None:
    """One batch folder of PNG files in class sub-folders (ImageFolder layout: the labels the oracle reads)."""
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels)):
        target = folder / classes[int(label)]
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(target / f"{i:03d}.png")


def test_a_stream_of_image_folders_is_supervised_batch_by_batch_and_a_rerun_takes_only_the_new_ones(env, digits, tmp_path, monkeypatch):
    """Each new sub-folder is a batch; what was read is kept outside the user's folder, which is never written."""
    monkeypatch.setenv("SCANFLOW_CACHE_DIR", str(tmp_path / "cache"))
    _, test = digits
    order = np.random.default_rng(0).permutation(len(test))
    classes, images, labels = test.info.classes, test.images.numpy()[order], test.labels.numpy()[order]
    stream = tmp_path / "photos"
    for b in range(2):
        _png_batch(stream / f"day-{b}", images[b * 60:(b + 1) * 60], labels[b * 60:(b + 1) * 60], classes)
    user_files = sorted(p.relative_to(stream) for p in stream.rglob("*"))

    first = supervise_flow(stream=str(stream), human="oracle", budget=10)["batches"]
    assert [r["batch"] for r in first] == ["day-0", "day-1"]
    assert all(r["accuracy_before"] > 0.7 for r in first)

    _png_batch(stream / "day-2", images[120:180], labels[120:180], classes)
    second = supervise_flow(stream=str(stream), human="oracle", budget=10)["batches"]
    assert [r["batch"] for r in second] == ["day-0", "day-1", "day-2"]
    assert second[:2] == first  # the batches supervised before are reported from the record, not supervised again
    config = TrackingConfig.from_env()
    client = tracking.mlflow_client(config.tracking_uri)
    experiment = client.get_experiment_by_name(config.experiment_name).experiment_id
    detected = [r.data.tags["scanflow.batch_id"] for r in client.search_runs([experiment], "tags.`scanflow.kind` = 'detect'", max_results=1000)]
    assert sorted(b for b in detected if b.startswith("day-")) == ["day-0", "day-1", "day-2"]  # each batch tested once
    assert set(user_files) <= {p.relative_to(stream) for p in stream.rglob("*")}
    assert not any(p.name in ("progress.json", "units.json") for p in stream.rglob("*"))

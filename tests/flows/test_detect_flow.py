"""The detect flow under Prefect's test harness: verdict in MLflow, artifacts in Prefect, drift event emitted."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter

from flows.detect import detect_flow
from scanflow.corruptions import corrupt
from scanflow import warm
from scanflow.errors import InvalidBatchError
from scanflow.local import process_identity
from scanflow.tracking import mlflow_client
from tests.flows.conftest import digits_champion

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def champion(mlflow_store, digits):
    with digits_champion(mlflow_store, "detect-flow") as env:
        yield env


def _save(tmp_path, name, images):
    path = tmp_path / f"{name}.npy"
    np.save(path, images)
    return str(path)


def _drift_events(batch_id):
    """This module's drift events for `batch_id` (the session's server holds every test's events)."""
    model = os.environ["SCANFLOW_MODEL_NAME"]
    with get_client(sync_client=True) as client:
        page = client.read_events(EventFilter(event=EventNameFilter(name=["scanflow.drift.detected"])), limit=50)
    return [e for e in page.events if e.payload.get("batch_id") == batch_id and e.resource.id == f"scanflow.model.{model}"]


def test_corrupted_batch_is_drift_logged_published_and_announced(env, digits, tmp_path):
    _, test = digits
    batch = corrupt(test.images[:100], "impulse_noise", severity=5, seed=0).numpy()
    summary = detect_flow(batch_path=_save(tmp_path, "noisy", batch), budget=10)

    assert summary.is_drift and summary.p_value <= 0.05 and summary.batch_id == "noisy"
    assert 0 < len(summary.selected_indices) <= 10
    run = mlflow_client(env["MLFLOW_TRACKING_URI"]).get_run(summary.mlflow_run_id)
    assert run.data.tags["scanflow.is_drift"] == "true" and run.data.metrics["p_value"] == pytest.approx(summary.p_value)
    artifacts = {a.path for a in mlflow_client(env["MLFLOW_TRACKING_URI"]).list_artifacts(run.info.run_id)}
    assert {"drift_result.json", "critical_samples.png", "evidently_report.html"} <= artifacts

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert {"drift-summary", "critical-samples"} <= keys
    deadline = time.time() + 30
    while not _drift_events("noisy") and time.time() < deadline:
        time.sleep(1)
    event = _drift_events("noisy")[0]
    assert event.resource.id == "scanflow.model.detect-flow-classifier"
    assert event.payload["model_version"] == summary.model_version


def test_clean_batch_is_not_drift_and_not_announced(env, digits, tmp_path):
    _, test = digits
    summary = detect_flow(batch_path=_save(tmp_path, "clean", test.images[100:200].numpy()), report=False)
    assert not summary.is_drift
    time.sleep(2)
    assert _drift_events("clean") == []


def test_batch_of_the_wrong_size_for_the_model_fails_clearly(env, tmp_path):
    path = _save(tmp_path, "big", np.zeros((5, 28, 28), dtype=np.uint8))
    with pytest.raises(InvalidBatchError, match=r"expects images of shape \[N, 1, 8, 8\]"):
        detect_flow(batch_path=path)


def test_cli_detect_prints_json_and_exits_non_zero_on_bad_batches(env, digits, prefect_server, tmp_path):
    _, test = digits
    run_env = {**os.environ, "PREFECT_API_URL": prefect_server}
    good = _save(tmp_path, "cli", test.images[:60, 0].numpy())
    result = subprocess.run(
        [sys.executable, "-m", "scanflow.cli", "detect", "--batch", good, "--json", "--no-report"],
        env=run_env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    verdict = json.loads(result.stdout[result.stdout.index("{"):])
    assert verdict["n"] == 60 and verdict["batch_id"] == "cli"

    bad = _save(tmp_path, "floats", np.random.default_rng(0).random((4, 8, 8)).astype(np.float32))
    result = subprocess.run(
        [sys.executable, "-m", "scanflow.cli", "detect", "--batch", bad], env=run_env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "expected uint8 pixel values 0..255, got float32" in result.stderr


def test_a_drift_decided_about_is_not_asked_about_again_but_a_new_one_is(env, digits, tmp_path):
    from flows.improve import improve_flow

    _, test = digits
    first = _save(tmp_path, "shot-a", corrupt(test.images[:150], "shot_noise", 4, seed=0).numpy())
    again = _save(tmp_path, "shot-b", corrupt(test.images[150:300], "shot_noise", 4, seed=1).numpy())
    other = _save(tmp_path, "fog-b", corrupt(test.images[150:300], "fog", 4, seed=1).numpy())
    found = detect_flow(batch_path=first, report=False, responder="none")
    assert found.is_drift and found.known_shift is None
    decided = improve_flow(batch_path=first, shown_indices=list(found.selected_indices), action="ignore", note="scanner noise, accepted")
    assert decided.known_shift_of == found.model_version

    repeated = detect_flow(batch_path=again, report=False)
    assert repeated.is_drift and repeated.known_shift.batch_id == "shot-a" and repeated.known_shift.decision == "ignore"
    assert repeated.known_shift.p_value > 0.05
    run = mlflow_client(env["MLFLOW_TRACKING_URI"]).get_run(repeated.mlflow_run_id)
    assert run.data.tags["scanflow.known_shift_of"] == "shot-a"
    new = detect_flow(batch_path=other, report=False)
    assert new.is_drift and new.known_shift is None

    deadline = time.time() + 30
    while not _drift_events("fog-b") and time.time() < deadline:
        time.sleep(1)
    assert _drift_events("fog-b"), "the new drift was not announced"
    assert not _drift_events("shot-b"), "the known shift was announced as a new drift"


def test_after_a_promoted_retrain_clean_batches_pass_and_a_repeat_of_the_shift_is_known(env, digits, tmp_path):
    """Last in the module: it replaces the module's champion. The retrained champion's detector is fitted on clean
    images (a clean batch passes), and the batch rows the retrain did not learn from make the shift known to it."""
    from flows.improve import improve_flow

    _, test = digits
    # Alternate rows, so both brightened batches draw from the same writers (the split keeps the original order,
    # which follows the writers).
    a_images, a_labels, b_images = test.images[:300:2], test.labels[:300:2], test.images[1:300:2]
    first = _save(tmp_path, "bright-a", corrupt(a_images, "brightness", 4, seed=0).numpy())
    again = _save(tmp_path, "bright-b", corrupt(b_images, "brightness", 4, seed=1).numpy())
    found = detect_flow(batch_path=first, report=False, responder="none", budget=40)
    assert found.is_drift and found.known_shift is None
    labels = [int(a_labels[i]) for i in found.selected_indices]
    decided = improve_flow(batch_path=first, shown_indices=list(found.selected_indices), action="retrain", labels=labels, decided_by="oracle")
    assert decided.promoted, decided.reason
    assert len(decided.outcome["unseen_rows"]) == (150 - len(labels)) // 2 + round(0.3 * len(labels))  # and the judging labels' rows
    assert decided.known_shift_of == decided.challenger_version

    # Three clean batches (the two brightened batches' clean originals and the rest): at alpha 0.05 one alarm among
    # them happens by chance (~14 %), two would mean the refitted detector is miscalibrated (< 1 % by chance).
    clean_batches = {"clean-a": a_images, "clean-b": b_images, "clean-rest": test.images[300:]}
    clean = [detect_flow(batch_path=_save(tmp_path, name, images.numpy()), report=False) for name, images in clean_batches.items()]
    assert {c.model_version for c in clean} == {decided.challenger_version}
    assert sum(c.is_drift for c in clean) <= 1, [c.p_value for c in clean]
    repeated = detect_flow(batch_path=again, report=False)
    assert repeated.is_drift and repeated.known_shift.batch_id == "bright-a" and repeated.known_shift.decision == "retrain"


def test_cli_detect_and_predict_answer_from_the_warm_runner_with_the_same_records(env, digits, prefect_server, tmp_path):
    """`scanflow runner start` keeps a process warm; detect and predict from a shell with the same settings run there
    (its log shows each request), give what a cold command gives and make the same MLflow runs. A shell with other
    settings is told once and runs the command itself; a request without the runner's token is refused."""
    home = tmp_path / "home"
    run_env = {**os.environ, "PREFECT_API_URL": prefect_server, "SCANFLOW_HOME": str(home)}

    def scanflow(*args: str, **extra: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "scanflow.cli", *args], env={**run_env, **extra}, cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        assert "Traceback" not in result.stdout + result.stderr
        return result

    _, test = digits
    np.save(tmp_path / "warm.npy", test.images[:60, 0].numpy())
    cold = scanflow("detect", "--batch", "warm.npy", "--json", "--no-report")
    assert cold.returncode == 0, cold.stderr[-2000:]
    started = scanflow("runner", "start")
    assert started.returncode == 0 and "warm runner started" in started.stdout, started.stderr
    record = warm.read_runner_record(home)
    log = Path(record.log_path)
    try:
        assert scanflow("runner", "status").stdout.startswith(f"running: pid {record.pid}")
        hot = scanflow("detect", "--batch", "warm.npy", "--json", "--no-report")
        assert hot.returncode == 0 and hot.stderr == "", hot.stderr
        assert log.read_text().count('"POST /run HTTP/1.1" 200') == 1
        cold_verdict, hot_verdict = json.loads(cold.stdout[cold.stdout.index("{"):]), json.loads(hot.stdout)
        for key in ("n", "batch_id", "is_drift", "statistic", "p_value", "model_version"):
            assert hot_verdict[key] == cold_verdict[key], key
        run = mlflow_client(env["MLFLOW_TRACKING_URI"]).get_run(hot_verdict["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.metrics["p_value"] == pytest.approx(hot_verdict["p_value"])
        assert hot_verdict["mlflow_run_id"] != cold_verdict["mlflow_run_id"]

        predicted = scanflow("predict", "--batch", "warm.npy")
        assert predicted.returncode == 0 and predicted.stdout.startswith("warm: 60 labels by v"), predicted.stderr
        floats = tmp_path / "floats.npy"
        np.save(floats, np.random.default_rng(0).random((4, 8, 8)).astype(np.float32))
        refused = scanflow("detect", "--batch", str(floats))
        assert refused.returncode == 2 and refused.stderr.startswith("scanflow: error: expected uint8 pixel values 0..255, got float32")
        assert log.read_text().count('"POST /run HTTP/1.1" 200') == 3

        # Two shells at once: the second waits for the first, and neither falls back to a cold run.
        both = [subprocess.Popen([sys.executable, "-m", "scanflow.cli", "detect", "--batch", "warm.npy", "--batch-id", f"at-once-{i}",
                                  "--no-report"], env=run_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(2)]
        outputs = [p.communicate(timeout=300) for p in both]
        assert [p.returncode for p in both] == [0, 0] and [err for _, err in outputs] == ["", ""], outputs
        assert [out.split(":")[0] for out, _ in outputs] == ["at-once-0", "at-once-1"]
        assert log.read_text().count('"POST /run HTTP/1.1" 200') == 5

        other = scanflow("detect", "--batch", "warm.npy", "--no-report", SCANFLOW_MODEL_NAME="warm-other-classifier")
        assert other.returncode == 2 and other.stderr.count("was started with other settings (SCANFLOW_MODEL_NAME)") == 1
        assert "no version of 'warm-other-classifier' has the alias 'champion'" in other.stderr
        assert log.read_text().count("POST /run") == 5

        connection = http.client.HTTPConnection("127.0.0.1", record.port, timeout=10)
        connection.request("POST", "/run", body=json.dumps({"argv": ["detect", "--batch", "warm.npy"], "cwd": str(tmp_path)}))
        assert connection.getresponse().status == 401
    finally:
        stopped = scanflow("runner", "stop")
    assert stopped.stdout.strip() == f"stopped the warm runner (pid {record.pid})"
    assert process_identity(record.pid) is None and warm.read_runner_record(home) is None

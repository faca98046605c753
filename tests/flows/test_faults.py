"""Faults of the real local stack (SeaweedFS, MLflow proxying its artifacts to it, Prefect): a stopped service fails a
command clearly (exit 3, the endpoint and the setting named, no traceback) within 60 s; nothing stored is lost or
changed across a restart; no MLflow run is left RUNNING once tracking is back (orphans are ended on the next connect).

The module runs servers of its own, which it stops and restarts; the session's Prefect server runs the flows."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from scanflow.config import StorageConfig, TrackingConfig
from scanflow.local_auth import MlflowAuth
from scanflow.local import LocalMlflowServer, LocalS3Server, start_mlflow_server, start_seaweedfs
from scanflow.orphans import ABORTED_TAG
from scanflow.storage import S3Store
from scanflow.stream import make_stream, read_stream
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.flows.conftest import digits_champion

pytestmark = pytest.mark.slow

BUCKET = "faults"
#: The bound the issue sets on the time from a fault to a clear failure.
CLEAR_FAILURE_S = 60


@dataclass
class Stack:
    """The module's own SeaweedFS and MLflow server, restartable on the same ports and data."""

    folder: Path
    s3: LocalS3Server
    mlflow: LocalMlflowServer

    @property
    def storage(self) -> StorageConfig:
        return StorageConfig(bucket=BUCKET, endpoint_url=self.s3.endpoint_url, access_key_id=S3_ACCESS_KEY,
                             secret_access_key=S3_SECRET_KEY, prefix="prod")

    def start_s3(self) -> None:
        self.s3 = start_seaweedfs(self.folder / "s3", S3_ACCESS_KEY, S3_SECRET_KEY, ports=self.s3.ports)

    def start_mlflow(self) -> None:
        self.mlflow = _start_mlflow(self.folder, self.storage, self.mlflow.port)

    def stop(self) -> None:
        self.mlflow.stop()
        self.s3.stop()


#: The module's MLflow user: every start of its server (a restart too) and every client use it.
AUTH = MlflowAuth.generate()


def _start_mlflow(folder: Path, storage: StorageConfig, port: int | None = None) -> LocalMlflowServer:
    env = {**storage.environment(), "MLFLOW_S3_ENDPOINT_URL": storage.endpoint_url or ""}
    return start_mlflow_server(folder / "mlflow.db", f"s3://{BUCKET}/mlflow", env, port=port, log_dir=folder, auth=AUTH)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("faults")
    s3 = start_seaweedfs(folder / "s3", S3_ACCESS_KEY, S3_SECRET_KEY)
    storage = StorageConfig(bucket=BUCKET, endpoint_url=s3.endpoint_url, access_key_id=S3_ACCESS_KEY,
                            secret_access_key=S3_SECRET_KEY, prefix="prod")
    S3Store(storage).ensure_bucket()
    saved = {name: os.environ.get(name) for name in AUTH.environment()}
    os.environ.update(AUTH.environment())  # this process's MLflow calls, and the commands it starts
    stack = Stack(folder, s3, _start_mlflow(folder, storage))
    try:
        yield stack
    finally:
        stack.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def champion(stack) -> Iterator[dict[str, str]]:
    """A digits champion on the module's MLflow server, and the environment of a command using the whole stack."""
    with digits_champion(stack.mlflow.tracking_uri, "faults") as env:
        yield {**env, **stack.storage.environment()}


@pytest.fixture(scope="module")
def batches(tmp_path_factory, champion) -> list[Path]:
    """A clean and a corrupted digits batch, as local files."""
    folder = tmp_path_factory.mktemp("stream")
    make_stream(folder, "digits", n_batches=2, batch_size=100, drift_at=1, corruption="impulse_noise", severity=5)
    return [Path(batch.path) for batch in read_stream(folder)]


def scanflow(env: dict[str, str], *args: str) -> subprocess.Popen:
    """`scanflow ARGS` in a process of its own (so a test may stop a server under it, or kill it)."""
    full = {**os.environ, **env}
    full.pop("SCANFLOW_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "scanflow.cli", *args], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parents[2]))


def finish(process: subprocess.Popen, timeout_s: float = 600) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `process`; a process still running after `timeout_s` is killed (so a hang
    does not outlive its test) and fails the test with the end of its output."""
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate(timeout=30)
        raise AssertionError(f"the command did not end within {timeout_s} s: {(out + err)[-4000:]}") from None
    return process.returncode, out, err


def bucket_digests(storage: StorageConfig) -> dict[str, str]:
    """The sha256 of every object in the bucket, by key."""
    store = S3Store(storage)
    return {key: hashlib.sha256(store.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()).hexdigest()
            for key in store.keys("")}


def runs(env: dict[str, str], status: str | None = None) -> list:
    """The runs of the champion's experiment (optionally only those with `status`)."""
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(env["SCANFLOW_EXPERIMENT"])
    found = client.search_runs([experiment.experiment_id], max_results=1000)
    return [run for run in found if status is None or run.info.status == status]


def connect_again(env: dict[str, str]) -> None:
    """What any next command does first: connect to tracking (which ends the runs of dead processes)."""
    from scanflow import tracking

    tracking.connect(TrackingConfig(env["MLFLOW_TRACKING_URI"], env["SCANFLOW_EXPERIMENT"], env["SCANFLOW_MODEL_NAME"]))


def wait_for_run(env: dict[str, str], name_prefix: str, process: subprocess.Popen, timeout_s: float = 300) -> str:
    """The id of the first run named `name_prefix*` in the experiment, once MLflow holds it."""
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(env["SCANFLOW_EXPERIMENT"])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the command ended early: {finish(process)}"
        found = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name LIKE '{name_prefix}%'")
        if found:
            return found[0].info.run_id
        time.sleep(0.2)
    raise AssertionError(f"no run {name_prefix}* within {timeout_s} s")


def assert_clear_failure(code: int, out: str, err: str, expected: str) -> None:
    """Exit 3 with one `scanflow: error:` line that says `expected`, and no traceback anywhere."""
    assert code == 3, (out + err)[-4000:]
    assert "Traceback" not in out + err, (out + err)[-4000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("scanflow: error: ") and expected in last, last


# ---------------------------------------------------------------------------------------------------- S3 stopped
def test_with_s3_stopped_detect_of_a_local_batch_fails_clearly_and_after_a_restart_it_works_with_nothing_lost(stack, champion, batches):
    before = bucket_digests(stack.storage)
    assert any(key.startswith("mlflow/") for key in before), "the champion's artifacts should be in the bucket"
    stack.s3.stop()
    try:
        started = time.monotonic()
        code, out, err = finish(scanflow(champion, "detect", "--batch", str(batches[0]), "--no-report"))
        elapsed = time.monotonic() - started
        assert_clear_failure(code, out, err, f"MLflow tracking server at {stack.mlflow.tracking_uri} did not answer "
                                             "/api/2.0/mlflow-artifacts/artifacts after 3 retries (ResponseError('too many 500 error responses'))")
        assert "artifact store (S3)" in err and "MLFLOW_HTTP_REQUEST_TIMEOUT" in err
        assert elapsed <= CLEAR_FAILURE_S, f"{elapsed:.0f} s to fail"
    finally:
        stack.start_s3()
    assert bucket_digests(stack.storage) == before
    code, out, err = finish(scanflow(champion, "detect", "--batch", str(batches[0]), "--batch-id", "after-s3", "--no-report"))
    assert code == 0, (out + err)[-4000:]
    after = bucket_digests(stack.storage)
    assert {key: after[key] for key in before} == before
    assert "prod/detections/after-s3.json" in after
    assert runs(champion, "RUNNING") == []


# ------------------------------------------------------------------------------------------------ MLflow stopped
def test_mlflow_stopped_during_detect_fails_clearly_and_leaves_no_run_running(stack, champion, batches):
    """The detect run is logged, then MLflow stops while Evidently's report is computed; attaching it fails."""
    process = scanflow(champion, "detect", "--batch", str(batches[1]), "--batch-id", "mlflow-stops")
    wait_for_run(champion, "detect-mlflow-stops", process)
    stack.mlflow.stop()
    try:
        started = time.monotonic()
        code, out, err = finish(process)
        elapsed = time.monotonic() - started
        assert_clear_failure(code, out, err, f"MLflow tracking server at {stack.mlflow.tracking_uri}")
        assert elapsed <= CLEAR_FAILURE_S, f"{elapsed:.0f} s to fail"
    finally:
        stack.start_mlflow()
    connect_again(champion)
    assert runs(champion, "RUNNING") == []


def test_mlflow_stopped_during_a_retrain_fails_clearly_and_its_run_is_ended_on_the_next_connect(stack, champion, batches):
    from scanflow import tracking

    config = TrackingConfig(champion["MLFLOW_TRACKING_URI"], champion["SCANFLOW_EXPERIMENT"], champion["SCANFLOW_MODEL_NAME"])
    champion_before = tracking.champion_version(config)
    shown = list(range(20))
    labels = ",".join(str(int(v)) for v in np.load(Path(batches[1]).parent / "labels" / f"{batches[1].stem}.npy")[shown])
    process = scanflow(champion, "improve", "--batch", str(batches[1]), "--shown", ",".join(map(str, shown)), "--action", "retrain",
                       "--labels", labels, "--batch-id", "retrain-mlflow-stops")
    run_id = wait_for_run(champion, "improve-retrain-mlflow-stops", process)
    stack.mlflow.stop()
    try:
        started = time.monotonic()
        code, out, err = finish(process)
        elapsed = time.monotonic() - started
        assert_clear_failure(code, out, err, f"MLflow tracking server at {stack.mlflow.tracking_uri}")
        assert elapsed <= CLEAR_FAILURE_S, f"{elapsed:.0f} s to fail"
    finally:
        stack.start_mlflow()
    client = MlflowClient(champion["MLFLOW_TRACKING_URI"])
    assert client.get_run(run_id).info.status == "RUNNING", "the server was down when the command ended"
    connect_again(champion)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and f"its process {process.pid} on " in run.data.tags[ABORTED_TAG]
    assert runs(champion, "RUNNING") == []
    assert tracking.champion_version(config) == champion_before


# ------------------------------------------------------------------------------------------ SIGKILL of supervise
def supervise(env: dict[str, str], stream: Path, *extra: str) -> subprocess.Popen:
    """`scanflow supervise` on `stream`, asking about every drift (known shifts of earlier tests included)."""
    return scanflow(env, "supervise", "--stream-dir", str(stream), "--ask-known-shifts", *extra)


def new_stream(folder: Path, corruption: str = "impulse_noise") -> Path:
    make_stream(folder, "digits", n_batches=2, batch_size=100, drift_at=1, corruption=corruption, severity=5)
    return folder


def owner_run_id(stream: Path, env: dict[str, str]) -> str:
    """The supervise flow run recorded as working on `stream` (progress.json)."""
    import json

    from scanflow.progress import registry_key

    section = json.loads((stream / "progress.json").read_text())[registry_key(env["MLFLOW_TRACKING_URI"], env["SCANFLOW_MODEL_NAME"])]
    return section["owner"]["flow_run_id"]


def unfinished_prefect_runs(flow_run_id: str) -> list[str]:
    """The flow run `flow_run_id` and its sub-flow runs that are not in a final state, as 'name: STATE'."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        parent = client.read_flow_run(UUID(flow_run_id))
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])))
    return [f"{run.name}: {run.state.type.value}" for run in [parent, *children] if run.state is not None and not run.state.is_final()]


def wait_until(condition, what: str, process: subprocess.Popen, timeout_s: float = 600):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert process.poll() is None, f"the command ended before {what}: {finish(process)}"
        time.sleep(0.2)
    raise AssertionError(f"not {what} within {timeout_s} s")


def mlflow_runs_named(env: dict[str, str], name: str, since_ms: int) -> list:
    """The runs named `name` started after `since_ms` (epoch milliseconds: every test's stream has a batch-000)."""
    return [run for run in runs(env) if run.info.run_name == name and run.info.start_time >= since_ms]


def paused_decision(batch_id: str, api_url: str | None = None, auth_string: str | None = None) -> str | None:
    """The id of the paused decision form of `batch_id` on the Prefect server at `api_url` (default: the session's,
    with its `auth_string`), once its schema is saved."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    updates = {PREFECT_API_URL: api_url, PREFECT_API_AUTH_STRING: auth_string} if api_url else {}
    with temporary_settings(updates=updates), get_client(sync_client=True) as client:
        found = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=[f"decide-{batch_id}"]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
        for run in found:
            keyset = run.state.state_details.run_input_keyset or {}
            try:
                client.read_flow_run_input(run.id, keyset["schema"])
            except Exception:  # the schema is saved just after the run pauses
                continue
            return str(run.id)
    return None


def kill(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(timeout=30)


def assert_resumed_cleanly(env: dict[str, str], stream: Path, old_run_id: str, out: str, since_ms: int) -> list[dict]:
    """After the second supervise run: both batches reported once, each batch predicted once before its decision,
    no MLflow run RUNNING, nothing of the killed Prefect run left unfinished. Returns the report rows."""
    assert "| batch-000 |" in out and "| batch-001 |" in out, out[-3000:]
    assert len(mlflow_runs_named(env, "predict-batch-000", since_ms)) == 1, "a finished batch was predicted again"
    assert runs(env, "RUNNING") == []
    assert unfinished_prefect_runs(old_run_id) == []
    import json

    from scanflow.progress import registry_key

    section = json.loads((stream / "progress.json").read_text())[registry_key(env["MLFLOW_TRACKING_URI"], env["SCANFLOW_MODEL_NAME"])]
    assert sorted(section["rows"]) == ["batch-000", "batch-001"] and section.get("decisions", {}) == {}
    return [section["rows"]["batch-000"], section["rows"]["batch-001"]]


def promotions_since(env: dict[str, str], since_ms: int) -> int:
    """Improve runs started after `since_ms` (epoch milliseconds) that promoted their challenger."""
    return sum(run.info.start_time >= since_ms and run.data.tags.get("scanflow.kind") == "improve"
               and run.data.tags.get("scanflow.promoted") == "true" for run in runs(env))


def now_ms() -> int:
    return int(time.time() * 1000)


def test_supervise_killed_during_detect_resumes_from_the_first_unfinished_batch(champion, tmp_path):
    since = now_ms()
    stream = new_stream(tmp_path / "stream", "impulse_noise")
    process = supervise(champion, stream, "--human", "oracle")
    wait_until(lambda: mlflow_runs_named(champion, "predict-batch-001", since), "batch-001 was predicted", process)
    kill(process)
    old = owner_run_id(stream, champion)
    code, out, err = finish(supervise(champion, stream, "--human", "oracle"))
    assert code == 0, (out + err)[-4000:]
    assert f"batch-000: supervised already (recorded in {stream / 'progress.json'}; delete that file to supervise the stream afresh)" in err
    first, second = assert_resumed_cleanly(champion, stream, old, out, since)
    assert second["decided_by"] == "oracle" and promotions_since(champion, since) == (second["promoted"] == "yes")


def test_supervise_killed_in_the_pause_finds_the_answer_given_meanwhile(champion, tmp_path):
    since = now_ms()
    stream = new_stream(tmp_path / "stream", "shot_noise")
    process = supervise(champion, stream, "--interactive", "--timeout", "600")
    child = wait_until(lambda: paused_decision("batch-001"), "the decision form of batch-001 waited", process)
    kill(process)
    old = owner_run_id(stream, champion)
    code, out, err = finish(scanflow(champion, "answer", child, "--action", "ignore", "--note", "after the kill"))
    assert code == 0, (out + err)[-4000:]
    # The answer given to the dead run's form is found: nobody is asked again (a pause would time out after 60 s).
    code, out, err = finish(supervise(champion, stream, "--interactive", "--timeout", "60", "--on-timeout", "filter"))
    assert code == 0, (out + err)[-4000:]
    assert "batch-001: answered (ignore) after the previous supervise run was gone; carrying it out" in err
    first, second = assert_resumed_cleanly(champion, stream, old, out, since)
    assert (second["decision"], second["decided_by"]) == ("ignore", "human")


def test_supervise_killed_in_the_pause_asks_again(champion, tmp_path):
    since = now_ms()
    stream = new_stream(tmp_path / "stream", "fog")
    process = supervise(champion, stream, "--interactive", "--timeout", "600")
    wait_until(lambda: paused_decision("batch-001"), "the decision form of batch-001 waited", process)
    kill(process)
    old = owner_run_id(stream, champion)
    code, out, err = finish(supervise(champion, stream, "--human", "policy"))
    assert code == 0, (out + err)[-4000:]
    first, second = assert_resumed_cleanly(champion, stream, old, out, since)
    assert second["decided_by"] == "policy"


def shown_rows(flow_run_id: str) -> list[int]:
    """The batch rows the paused decision form `flow_run_id` shows, in order."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return list(client.read_flow_run(UUID(flow_run_id)).parameters["request"]["shown"])


def test_supervise_killed_in_a_retrain_carries_out_the_decision_once(champion, tmp_path):
    since = now_ms()
    stream = new_stream(tmp_path / "stream", "impulse_noise")
    process = supervise(champion, stream, "--interactive", "--timeout", "600")
    child = wait_until(lambda: paused_decision("batch-001"), "the decision form of batch-001 waited", process)
    truth = np.load(stream / "labels" / "batch-001.npy")
    labels = ",".join(str(int(truth[row])) for row in shown_rows(child))
    code, out, err = finish(scanflow(champion, "answer", child, "--action", "retrain", "--labels", labels))
    assert code == 0, (out + err)[-3000:]
    retraining = wait_until(lambda: [run for run in mlflow_runs_named(champion, "improve-batch-001", since) if run.data.params],
                            "the retrain of batch-001 started", process)
    kill(process)
    old = owner_run_id(stream, champion)
    code, out, err = finish(supervise(champion, stream, "--interactive", "--timeout", "60", "--on-timeout", "ignore"))
    assert code == 0, (out + err)[-4000:]
    assert "batch-001: carrying out the decision given before a restart (retrain, by human)" in err
    first, second = assert_resumed_cleanly(champion, stream, old, out, since)
    assert (second["decision"], second["decided_by"]) == ("retrain", "human") and promotions_since(champion, since) == (second["promoted"] == "yes")
    killed = MlflowClient(champion["MLFLOW_TRACKING_URI"]).get_run(retraining[0].info.run_id)
    assert killed.info.status == "FAILED" and f"its process {process.pid} on " in killed.data.tags[ABORTED_TAG]


# ------------------------------------------------------------------------------------- Prefect restart in a pause
def test_a_pause_stays_answerable_across_a_restart_of_the_prefect_server(champion, tmp_path):
    from scanflow.local import start_prefect_server
    from scanflow.local_auth import new_prefect_auth_string

    home, auth_string = tmp_path / "prefect", new_prefect_auth_string()
    server = start_prefect_server(log_dir=tmp_path, home=home, auth_string=auth_string)
    try:
        env = {**champion, "PREFECT_API_URL": server.api_url, "PREFECT_API_AUTH_STRING": auth_string}
        stream = new_stream(tmp_path / "stream", "shot_noise")
        process = supervise(env, stream, "--interactive", "--timeout", "900")
        child = wait_until(lambda: paused_decision("batch-001", server.api_url, auth_string), "the decision form of batch-001 waited", process)
        server.stop()
        server = start_prefect_server(port=server.port, log_dir=tmp_path, home=home, auth_string=auth_string)
        assert process.poll() is None, f"the paused supervise run did not outlive the restart: {finish(process)}"
        code, out, err = finish(scanflow(env, "answer", child, "--action", "ignore", "--note", "after the restart"))
        assert code == 0 and f"answered flow run {child}: ignore" in out, (out + err)[-3000:]
        code, out, err = finish(process)
        assert code == 0, (out + err)[-4000:]
        assert "| batch-001 | shot_noise | " in out and "| ignore | human |" in out, out[-3000:]
        assert runs(champion, "RUNNING") == []
    finally:
        server.stop()

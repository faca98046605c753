"""Secrets are never printed or recorded: a whole small loop runs against the local stack (train a digits champion,
serve and test a drifted batch with S3 storage, a person answers from the command line, the model is retrained),
then every place a secret could land is read back and searched for the stack's secrets (the S3 secret key, the
MLflow password, the Prefect auth string, SeaweedFS's signing keys): each server log of the stack, every MLflow
experiment, run (params, tags, metrics), logged and registered model and every artifact file (all downloaded),
every object in the bucket, every Prefect flow and task run (parameters, state messages), log, artifact, event,
variable and block document as the API returns it, and everything this process and the CLI printed."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.flows.conftest import digits_champion, paused_child_of

pytestmark = pytest.mark.slow

BUDGET = 5


@pytest.fixture(scope="module")
def prefect_server(local_stack):
    """This module's flows run on the stack's own Prefect server (instead of the session's), with every variable
    `scanflow stack env` exports set, as in a shell after `eval "$(scanflow stack env)"`."""
    from prefect.context import _temporary_global_settings_context, get_settings_context
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with pytest.MonkeyPatch.context() as patch:
        for name, value in local_stack.environment().items():
            patch.setenv(name, value)
        settings = {PREFECT_API_URL: local_stack.prefect_api_url, PREFECT_API_AUTH_STRING: local_stack.prefect_auth_string}
        with temporary_settings(updates=settings), _temporary_global_settings_context(get_settings_context()):
            yield local_stack.prefect_api_url


def secrets_of(local_stack) -> dict[str, str]:
    """Every secret of the stack, by name, with the forms it could be printed in (base64 of Basic credentials)."""
    found = {"S3 secret key": local_stack.secret_key, "MLflow password": local_stack.mlflow_password,
             "Prefect auth string": local_stack.prefect_auth_string,
             "Prefect auth string's secret": local_stack.prefect_auth_string.split(":", 1)[1],
             "Prefect auth string, base64": base64.b64encode(local_stack.prefect_auth_string.encode()).decode(),
             "MLflow credentials, base64": base64.b64encode(f"{local_stack.mlflow_username}:{local_stack.mlflow_password}".encode()).decode()}
    security = (Path(local_stack.directory) / "seaweedfs" / "security.toml").read_text()
    for number, value in enumerate(re.findall(r'^(?:key|password) = "([^/"][^"]*)"$', security, flags=re.MULTILINE)):
        found[f"SeaweedFS signing key or password #{number}"] = value
    assert len(found) == 11 and all(len(value) >= 20 for value in found.values()), sorted(found)
    return found


class Haystack:
    """Named texts and files to search, and the secrets found in them."""

    def __init__(self, secrets: dict[str, str]):
        self.secrets = {name: value.encode() for name, value in secrets.items()}
        self.leaks: list[str] = []
        self.searched = 0

    def text(self, where: str, value: object) -> None:
        self.bytes(where, (value if isinstance(value, str) else json.dumps(value, default=str)).encode())

    def bytes(self, where: str, data: bytes) -> None:
        self.searched += 1
        self.leaks += [f"{name} in {where}" for name, secret in self.secrets.items() if secret in data]

    def folder(self, where: str, folder: Path) -> int:
        files = [path for path in folder.rglob("*") if path.is_file()]
        for path in files:
            self.bytes(f"{where}: {path.relative_to(folder)}", path.read_bytes())
        return len(files)


def pages(read: Callable[..., list], limit: int = 200) -> Iterator:
    """Every item of a Prefect `read_*` call, page by page."""
    offset = 0
    while True:
        page = read(limit=limit, offset=offset)
        yield from page
        if len(page) < limit:
            return
        offset += limit


def answer_from_the_command_line(run_name: str, outputs: list, failures: list) -> None:
    """A person: waits for the supervise run's pause, then `scanflow answer RUN --action retrain --labels ...`."""
    try:
        parent, _ = paused_child_of(run_name)
        command = [sys.executable, "-m", "scanflow.cli", "answer", str(parent), "--action", "retrain",
                   "--labels", ",".join(["1"] * BUDGET), "--note", "retrain on the noisy digits"]
        outputs.append(subprocess.run(command, capture_output=True, text=True, timeout=300))
    except Exception as error:
        failures.append(f"the person thread failed: {type(error).__name__}: {error}")


def test_no_secret_of_the_stack_is_printed_logged_tracked_or_served(local_stack, prefect_server, tmp_path, capfd):
    import mlflow
    from prefect.client.orchestration import get_client

    from blocks import ScanflowStorage
    from flows.supervise import supervise_flow
    from scanflow.config import StorageConfig
    from scanflow.storage import S3Store
    from scanflow.stream import make_stream
    from scanflow.tracking import mlflow_client

    haystack = Haystack(secrets_of(local_stack))
    ScanflowStorage(bucket=local_stack.bucket, endpoint_url=local_stack.s3_endpoint_url, aws_access_key_id=local_stack.access_key,
                    aws_secret_access_key=SecretStr(local_stack.secret_key), prefix="leak").save("leak", overwrite=True)
    outputs: list[subprocess.CompletedProcess] = []
    failures: list[str] = []
    with digits_champion(local_stack.mlflow_tracking_uri, "leak"):
        make_stream(tmp_path / "stream", "digits", n_batches=1, batch_size=100, drift_at=0, corruption="impulse_noise", severity=5)
        person = threading.Thread(target=answer_from_the_command_line, args=("leak-loop", outputs, failures), daemon=True)
        person.start()
        result = supervise_flow.with_options(flow_run_name="leak-loop")(
            stream_dir=str(tmp_path / "stream"), human="person", budget=BUDGET, pause_timeout_s=300, storage="leak")
        person.join(timeout=60)
    assert not failures and len(outputs) == 1 and outputs[0].returncode == 0, (failures, [o.stderr[-2000:] for o in outputs])
    (row,) = result["batches"]
    assert row["drift"] == "yes" and row["decided_by"] == "human" and row["decision"] == "retrain", row

    # What this process and the CLI printed.
    printed = capfd.readouterr()
    haystack.text("this process's output", printed.out + printed.err)
    haystack.text("`scanflow answer`'s output", outputs[0].stdout + outputs[0].stderr)
    # Each server's log.
    logs = sorted(Path(local_stack.directory).rglob("*.log"))
    assert {path.name for path in logs} >= {"seaweedfs.log", "mlflow-server.log", "prefect-server.log"}
    for path in logs:
        haystack.bytes(f"log {path.name}", path.read_bytes())

    # MLflow: every experiment, run, logged and registered model, and every artifact file.
    client = mlflow_client(local_stack.mlflow_tracking_uri)
    experiments = client.search_experiments()
    runs = [run for experiment in experiments for run in client.search_runs([experiment.experiment_id], max_results=1000)]
    assert len(runs) >= 3, "expected the champion's, the supervise loop's and the retrain's runs"
    downloaded = 0
    for run in runs:
        haystack.text(f"run {run.info.run_id} params/tags/metrics", [run.data.params, run.data.tags, run.data.metrics, run.info.run_name])
        downloaded += haystack.folder(f"run {run.info.run_id} artifacts",
                                      Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "runs" / run.info.run_id))))
    models = mlflow.search_logged_models(experiment_ids=[e.experiment_id for e in experiments], output_format="list")
    for model in models:
        haystack.text(f"logged model {model.model_id}", [model.params, model.tags, model.name])
        target = tmp_path / "models" / model.model_id
        downloaded += haystack.folder(f"logged model {model.model_id}",
                                      Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model.model_id}", dst_path=str(target))))
    for registered in client.search_registered_models():
        haystack.text(f"registered model {registered.name}", [registered.tags, registered.description, registered.aliases])
        for version in client.search_model_versions(f"name='{registered.name}'"):
            haystack.text(f"{registered.name} v{version.version}", [version.tags, version.description, version.source])
    assert models and downloaded >= 5, (len(models), downloaded)

    # Every object in the bucket (MLflow's artifacts, the flows' records).
    store = S3Store(StorageConfig(bucket=local_stack.bucket, endpoint_url=local_stack.s3_endpoint_url, access_key_id=local_stack.access_key,
                                  secret_access_key=local_stack.secret_key, prefix=""))
    keys = list(store.keys(""))
    assert any(key.startswith("mlflow/") for key in keys) and any(key.startswith("leak/") for key in keys), keys[:20]
    for key in keys:
        haystack.bytes(f"s3://{local_stack.bucket}/{key}", store.get_bytes(key))

    # Prefect: everything its API serves about the runs, as a reader without include_secrets gets it.
    with get_client(sync_client=True) as prefect:
        flow_runs = list(pages(prefect.read_flow_runs))
        task_runs = list(pages(prefect.read_task_runs))
        logs_read = list(pages(prefect.read_logs))
        artifacts = list(pages(prefect.read_artifacts))
        blocks = prefect.read_block_documents(include_secrets=False)
        variables = prefect.read_variables()
        events = prefect.read_events(limit=50)
        event_list = list(events.events)
        while events.next_page and len(event_list) < 5000:
            events = prefect.read_events_page(events.next_page)
            event_list += events.events
    assert len(flow_runs) >= 5 and task_runs and len(logs_read) >= 20 and artifacts and event_list
    for flow_run in flow_runs:
        haystack.text(f"flow run {flow_run.name}", [flow_run.parameters, flow_run.state.message if flow_run.state else None,
                                                    flow_run.state.state_details.model_dump(mode="json") if flow_run.state else None,
                                                    flow_run.job_variables, flow_run.tags])
    for task_run in task_runs:
        haystack.text(f"task run {task_run.name}", [task_run.state.message if task_run.state else None,
                                                    task_run.model_dump(mode="json")])
    haystack.text("Prefect logs", [log.message for log in logs_read])
    for artifact in artifacts:
        haystack.text(f"Prefect artifact {artifact.key or artifact.id}", [artifact.data, artifact.description])
    haystack.text("Prefect block documents", [block.model_dump(mode="json") for block in blocks])
    haystack.text("Prefect variables", [variable.model_dump(mode="json") for variable in variables])
    haystack.text("Prefect events", [event.model_dump(mode="json") for event in event_list])
    assert any(block.name == "leak" for block in blocks)
    # The search finds a secret where one is meant to be: the block as a reader asking for its secrets gets it.
    control = Haystack(secrets_of(local_stack))
    with get_client(sync_client=True) as prefect:
        control.text("the storage block with include_secrets", prefect.read_block_document_by_name("leak", "scanflow-storage").data)
    assert control.leaks == ["S3 secret key in the storage block with include_secrets"]

    assert not haystack.leaks, haystack.leaks
    assert haystack.searched > 100, haystack.searched

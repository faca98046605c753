"""Runs of dead processes are ended FAILED with the reason; runs of live processes and of other hosts are not."""

from __future__ import annotations

import subprocess
import sys

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from scanflow import tracking
from scanflow.errors import TrackingUnavailableError
from scanflow.local import process_identity
from scanflow.orphans import ABORTED_TAG, Owner, could_not_end, mark_orphans, this_process
from scanflow.tracking import unavailable


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_runs_whose_owner_is_gone_are_ended(tracking_config):
    experiment_id = tracking.connect(tracking_config)
    client = MlflowClient(tracking_config.tracking_uri)
    me = this_process()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        started = process_identity(alive.pid)[0]
        owners = {
            "dead": Owner(me.host, _dead_pid(), 1),
            "reused": Owner(me.host, alive.pid, started + 1),  # the pid now runs another process
            "live": Owner(me.host, alive.pid, started),
            "mine": me,
            "elsewhere": Owner("another-host", _dead_pid(), 1),
            "unended": me,
        }
        ids = {name: client.create_run(experiment_id, run_name=name, tags=owner.tags()).info.run_id for name, owner in owners.items()}
        untagged = client.create_run(experiment_id, run_name="untagged").info.run_id
        could_not_end(ids["unended"])

        marked = mark_orphans(tracking_config.tracking_uri, experiment_id)
    finally:
        alive.kill()
        alive.wait()

    assert sorted(marked) == sorted([ids["dead"], ids["reused"], ids["unended"]])
    run = {name: client.get_run(run_id) for name, run_id in ids.items()}
    assert run["dead"].data.tags[ABORTED_TAG] == f"its process {owners['dead'].pid} on {me.host} is gone"
    assert run["reused"].data.tags[ABORTED_TAG] == f"its process {alive.pid} on {me.host} is gone (the pid now belongs to another process)"
    assert run["unended"].data.tags[ABORTED_TAG] == f"process {me.pid} on {me.host} could not end it (the tracking server did not answer)"
    assert [run[name].info.status for name in ("dead", "reused", "unended")] == ["FAILED"] * 3
    assert [run[name].info.status for name in ("live", "mine", "elsewhere")] == ["RUNNING"] * 3
    assert client.get_run(untagged).info.status == "RUNNING"
    # Once its process is gone, the live owner's run is an orphan too.
    assert mark_orphans(tracking_config.tracking_uri, experiment_id) == [ids["live"]]


def test_a_run_scanflow_opens_names_its_owner_and_connect_ends_orphans(tracking_config):
    with tracking.tracked_run(tracking_config, "owned") as run_id:
        tags = MlflowClient(tracking_config.tracking_uri).get_run(run_id).data.tags
        assert Owner.from_tags(tags) == this_process()
    client = MlflowClient(tracking_config.tracking_uri)
    experiment_id = tracking.connect(tracking_config)
    orphan = client.create_run(experiment_id, tags=Owner(this_process().host, _dead_pid(), 1).tags()).info.run_id
    tracking.connect(tracking_config)
    assert client.get_run(orphan).info.status == "FAILED"


def test_a_transport_failure_names_the_server_path_and_settings():
    error = MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts?path=x failed with exception "
                            "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url: /x (Caused by "
                            "ResponseError('too many 500 error responses'))")
    assert isinstance(unavailable(error), TrackingUnavailableError)
    assert str(unavailable(error)).startswith(
        "MLflow tracking server at http://127.0.0.1:5000 did not answer /api/2.0/mlflow-artifacts/artifacts after 3 retries "
        "(ResponseError('too many 500 error responses')). Check that it runs, and that its artifact store (S3) answers")

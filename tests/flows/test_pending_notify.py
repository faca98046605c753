"""`scanflow pending`, `scanflow answer` and `scanflow notify` against the session's Prefect server, on decisions
paused from hand-made requests (no model is trained); and `scanflow server start|status|stop` on a server of its own."""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prefect import resume_flow_run
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from flows.supervise import ask_human, form_answer
from scanflow import local, warm
from scanflow.supervision import DecisionRequest

SCANFLOW = str(Path(sys.executable).with_name("scanflow"))


def _png_b64(width: int, height: int, shade: int) -> str:
    buffer = io.BytesIO()
    Image.new("L", (width, height), shade).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decision_request(batch_id: str) -> DecisionRequest:
    """A drift verdict on three critical samples of classes a/b/c, with real PNG thumbnails and grid."""
    return DecisionRequest(
        batch_id=batch_id, model_version="7", statistic=3.5, threshold=1.25, p_value=0.001, n_critical=12, n=200,
        recommended="retrain", classes=("a", "b", "c"), shown=(17, 4, 121), scores=(0.93, 0.88, 0.71), guesses=(2, 0, 1),
        thumbnails_b64=tuple(_png_b64(28, 28, shade) for shade in (40, 120, 220)), grid_png_b64=_png_b64(96, 32, 90),
    )


def _wait_until_paused(run_name: str, timeout_s: float = 180) -> str:
    """The id of the flow run `run_name` once it is paused and its form's schema is saved (answers need it)."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name])))
            if runs and runs[0].state and runs[0].state.is_paused():
                keyset = runs[0].state.state_details.run_input_keyset or {}
                try:
                    if "schema" in keyset:
                        client.read_flow_run_input(runs[0].id, keyset["schema"])
                    return str(runs[0].id)
                except Exception:
                    pass
            time.sleep(0.5)
    raise TimeoutError(f"flow run {run_name} did not pause within {timeout_s:.0f} s")


@pytest.fixture()
def pause(prefect_server) -> Iterator[Callable[[DecisionRequest], tuple[str, dict[str, Any]]]]:
    """Runs ask-human on a request in a thread until it pauses; returns (run id, a dict that receives the final
    state). Decisions still paused at the end are answered ("ignore"), so nothing is left waiting."""
    started: list[tuple[str, DecisionRequest, threading.Thread]] = []

    def run(request: DecisionRequest) -> tuple[str, dict[str, Any]]:
        name = f"decide-{request.batch_id}"
        outcome: dict[str, Any] = {}
        thread = threading.Thread(daemon=True, target=lambda: outcome.update(state=ask_human.with_options(flow_run_name=name)(
            request, timeout_s=900, poll_interval_s=1, return_state=True)))
        thread.start()
        run_id = _wait_until_paused(name)
        started.append((run_id, request, thread))
        return run_id, outcome

    yield run
    with get_client(sync_client=True) as client:
        for run_id, request, thread in started:
            state = client.read_flow_run(uuid.UUID(run_id)).state
            if state and state.is_paused():
                resume_flow_run(run_id, run_input=form_answer(request, "ignore", None))
            thread.join(timeout=60)


def scanflow(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run([SCANFLOW, *args], env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def test_pending_shows_each_decision_waiting_and_answer_resumes_it(prefect_server, pause, tmp_path):
    request = decision_request(f"pending-{uuid.uuid4().hex[:6]}")
    run_id, outcome = pause(request)

    listed = scanflow("pending", "--dir", "grids", cwd=tmp_path, PREFECT_API_URL=prefect_server)
    assert listed.returncode == 0, listed.stderr
    out = listed.stdout
    assert f"batch {request.batch_id} · waiting " in out and "recommended: retrain" in out
    assert f"{prefect_server.removesuffix('/api')}/runs/flow-run/{run_id}" in out and f"run id:  {run_id}" in out
    grid = (tmp_path / "grids" / f"{request.batch_id}.png").resolve()
    assert f"samples: {grid}" in out
    with Image.open(grid) as image:
        assert image.format == "PNG" and image.size == (96, 32)
    for line in request.table().splitlines():
        assert line in out
    as_json = scanflow("pending", "--json", "--dir", "grids", cwd=tmp_path, PREFECT_API_URL=prefect_server)
    entry = next(e for e in json.loads(as_json.stdout) if e["run_id"] == run_id)
    assert entry["batch_id"] == request.batch_id and entry["grid_png"] == str(grid) and entry["samples"][0]["row"] == 17

    unknown = str(uuid.uuid4())
    missing = scanflow("answer", unknown, "--action", "ignore", cwd=tmp_path, PREFECT_API_URL=prefect_server)
    assert missing.returncode == 2
    assert f"no flow run {unknown} on {prefect_server}: `scanflow pending` lists the decisions waiting" in missing.stderr

    answered = scanflow("answer", run_id, "--action", "filter", "--labels", "2,?,1", "--note", "from the test",
                        cwd=tmp_path, PREFECT_API_URL=prefect_server)
    assert answered.returncode == 0, answered.stderr
    assert f"answered flow run {run_id}: filter with 2 of 3 samples labelled" in answered.stdout
    deadline = time.monotonic() + 120
    while "state" not in outcome and time.monotonic() < deadline:
        time.sleep(0.5)
    assert outcome["state"].is_completed()
    assert outcome["state"].result() == {"action": "filter", "labels": [2, None, 1], "note": "from the test"}
    after = scanflow("pending", "--json", cwd=tmp_path, PREFECT_API_URL=prefect_server)
    assert run_id not in after.stdout


@pytest.fixture()
def webhook_receiver() -> Iterator[tuple[str, list[str]]]:
    """An HTTP receiver on 127.0.0.1 recording the body of every POST; yields (its URL, the bodies)."""
    bodies: list[str] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", bodies
    server.shutdown()


def test_notify_posts_to_the_webhook_when_a_decision_starts_waiting(prefect_server, pause, webhook_receiver, tmp_path):
    url, bodies = webhook_receiver
    name = f"decision-waiting-{uuid.uuid4().hex[:6]}"
    for _ in range(2):
        made = scanflow("notify", "--webhook", url, "--name", name, cwd=tmp_path, PREFECT_API_URL=prefect_server)
        assert made.returncode == 0, made.stderr
    with get_client(sync_client=True) as client:
        assert len(client.read_automations_by_name(name)) == 1, "a second notify duplicated the automation"

    request = decision_request(f"notify-{uuid.uuid4().hex[:6]}")
    run_id, _ = pause(request)
    deadline = time.monotonic() + 60
    while not any(run_id in body for body in bodies) and time.monotonic() < deadline:
        time.sleep(0.5)
    body = next((b for b in bodies if run_id in b), None)
    assert body is not None, f"no POST naming run {run_id} within 60 s (got {bodies})"
    message = json.loads(body)
    assert request.batch_id in message["subject"]
    assert f"decide-{request.batch_id}" in message["body"] and "recommended: retrain" in message["body"]
    assert f"{prefect_server.removesuffix('/api')}/runs/flow-run/{run_id}" in message["body"]


def test_server_start_status_stop_keeps_one_server_for_every_command(tmp_path):
    home, port = tmp_path / "home", local.free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["SCANFLOW_HOME"] = str(home)

    def run(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([SCANFLOW, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and "Traceback" not in result.stdout + result.stderr, result.stderr
        return result

    try:
        assert "Prefect server started" in run("server", "start", "--port", str(port)).stdout
        record = local.read_server_record(home)
        assert record is not None and record.port == port and record.is_ours()
        assert f"Prefect UI: http://127.0.0.1:{port}" in run("server", "start").stdout
        assert local.read_server_record(home).pid == record.pid
        assert run("server", "status").stdout.startswith(f"running: Prefect UI http://127.0.0.1:{port}")
        assert run("pending").stdout.strip() == "no decisions waiting"
        assert (home / "prefect" / "prefect.db").exists()
        # A warm runner works with this server: started once, and stopped with it.
        assert "warm runner started" in run("runner", "start").stdout
        runner = warm.read_runner_record(home)
        assert runner.api_url == record.api_url and runner.is_ours()
        assert "warm runner already running" in run("runner", "start").stdout
    finally:
        stopped = run("server", "stop").stdout
    assert f"stopped the warm runner (pid {runner.pid})\nstopped the Prefect server on http://127.0.0.1:{port} (pid {record.pid})" in stopped
    assert local.process_identity(runner.pid) is None and warm.read_runner_record(home) is None
    assert local.process_identity(record.pid) is None and not (home / "server.json").exists()
    assert run("server", "status").stdout.startswith("stopped")

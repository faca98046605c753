"""Finding the Prefect server a command uses, stopping only the server Scanflow started, and the commands that need a
server failing fast and plainly without one. No Prefect server is started here."""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanflow import local
from scanflow.cli import TEMPORARY_SERVER_NOTE, format_age, main, use_prefect_server
from scanflow.errors import ScanflowError

SCANFLOW = str(Path(sys.executable).with_name("scanflow"))
NO_SERVER = "scanflow: error: no Prefect server is set: start one with `scanflow server start` (or set PREFECT_API_URL); "


@pytest.fixture()
def isolated(tmp_path, monkeypatch) -> Path:
    """No PREFECT_API_URL, SCANFLOW_HOME and the working directory in tmp_path: nothing to discover."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("SCANFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


@pytest.fixture()
def health_server() -> Iterator[str]:
    """A stand-in Prefect API on 127.0.0.1 that answers GET /api/health with 200; yields its API URL."""
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()


def _record(pid: int, api_url: str, start_time: int | None = None, cmdline: list[str] | None = None) -> local.ServerRecord:
    started, command = local.process_identity(pid) or (0, ["gone"])
    return local.ServerRecord(pid=pid, port=int(api_url.split(":")[2].split("/")[0]), api_url=api_url,
                              ui_url=api_url.removesuffix("/api"), start_time=started if start_time is None else start_time,
                              cmdline=command if cmdline is None else cmdline, log_path="/dev/null")


def _write(home: Path, record: local.ServerRecord) -> None:
    local._write_server_record(home, record)


@pytest.fixture()
def sleeper() -> Iterator[subprocess.Popen]:
    """`sleep 60` in a session of its own, once its exec has finished: until then /proc shows the forked parent's
    cmdline (or none), and a record made from it would not describe the process a moment later."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    deadline = time.monotonic() + 5
    while (local.process_identity(process.pid) or (0, []))[1] != ["sleep", "60"]:
        assert time.monotonic() < deadline, "sleep 60 did not show its cmdline within 5 s"
        time.sleep(0.01)
    yield process
    process.kill()
    process.wait()


def test_the_environment_wins_over_a_live_record(isolated, health_server, monkeypatch):
    _write(isolated, _record(os.getpid(), health_server))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert local.prefect_api_url() == "http://127.0.0.1:9/api"


def test_a_live_healthy_record_is_found_and_written_privately(isolated, health_server):
    _write(isolated, _record(os.getpid(), health_server))
    assert local.prefect_api_url() == health_server
    assert (isolated / "server.json").stat().st_mode & 0o777 == 0o600
    assert isolated.stat().st_mode & 0o777 == 0o700


def test_a_record_whose_process_is_dead_is_ignored(isolated, health_server):
    finished = subprocess.Popen(["true"])
    finished.wait()
    _write(isolated, _record(finished.pid, health_server, start_time=1, cmdline=["prefect", "server", "start"]))
    assert local.prefect_api_url() is None


def test_a_live_record_that_does_not_answer_is_ignored(isolated, sleeper):
    _write(isolated, _record(sleeper.pid, f"http://127.0.0.1:{local.free_port()}/api"))
    assert local.read_server_record().is_ours()
    assert local.prefect_api_url() is None


def test_start_does_not_replace_a_live_server_that_does_not_answer(isolated, sleeper, monkeypatch):
    record = _record(sleeper.pid, f"http://127.0.0.1:{local.free_port()}/api")
    _write(isolated, record)
    monkeypatch.setattr(local, "STARTUP_TIMEOUT_S", 0)
    with pytest.raises(ScanflowError, match=r"does not answer on .*`scanflow server stop`, then start it again"):
        local.start_persistent_server(home=isolated)
    assert local.read_server_record(isolated) == record and sleeper.poll() is None


def test_a_recycled_pid_is_neither_used_nor_killed(isolated, health_server, sleeper, capsys):
    started, _ = local.process_identity(sleeper.pid)
    _write(isolated, _record(sleeper.pid, health_server, start_time=started + 1))
    assert local.prefect_api_url() is None
    assert main(["server", "stop"]) == 0
    assert "now belongs to another process" in capsys.readouterr().out
    assert sleeper.poll() is None, "a process Scanflow did not start was signalled"
    assert not (isolated / "server.json").exists()

    _write(isolated, _record(sleeper.pid, health_server, cmdline=["prefect", "server", "start"]))
    assert main(["server", "stop"]) == 0
    assert "left it alone" in capsys.readouterr().out and sleeper.poll() is None


def test_stop_stops_the_recorded_process_and_its_group(isolated, health_server, sleeper, capsys):
    _write(isolated, _record(sleeper.pid, health_server))
    assert main(["server", "status"]) == 0
    assert capsys.readouterr().out.startswith(f"running: Prefect UI {health_server.removesuffix('/api')}")
    assert main(["server", "stop"]) == 0
    assert f"stopped the Prefect server on {health_server.removesuffix('/api')} (pid {sleeper.pid})" in capsys.readouterr().out
    assert sleeper.wait(timeout=5) is not None
    assert main(["server", "status"]) == 0 and capsys.readouterr().out.startswith("stopped")


def test_a_running_stack_is_found_after_the_scanflow_server(isolated, health_server, tmp_path):
    state = tmp_path / ".scanflow" / "stack" / "stack.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"prefect_api_url": health_server, "pids": {"prefect": os.getpid()}}))
    assert local.prefect_api_url() == health_server
    state.write_text(json.dumps({"prefect_api_url": health_server, "pids": {"prefect": 2 ** 22 + 1}}))
    assert local.prefect_api_url() is None


def _processes_with(marker: bytes) -> list[int]:
    """The live processes whose environment holds `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.parametrize("command, why", [
    (["answer", "6f1d3c1e-1111-4a4a-9b9b-123456789abc", "--action", "ignore"], "`scanflow answer` resumes a paused run held there"),
    (["pending"], "`scanflow pending` lists the paused runs held there"),
    (["notify", "--webhook", "http://127.0.0.1:9/hook"], "`scanflow notify` saves its automation there"),
])
def test_commands_that_need_a_server_fail_plainly_without_one(tmp_path, command, why):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(SCANFLOW_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect-home"))
    # No hang: a command that waited for a server would hit the timeout and fail the test.
    result = subprocess.run([SCANFLOW, *command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert result.stderr == NO_SERVER + why + "\n"
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "prefect-home").exists(), "Prefect ran (and could have started a temporary server)"
    assert not _processes_with(f"PREFECT_HOME={env['PREFECT_HOME']}".encode()), "a process of the command outlived it"


def test_ages_read_like_a_person_says_them():
    assert [format_age(s) for s in (4, 59, 180, 7500, 97200)] == ["4 s", "59 s", "3 min", "2 h 5 min", "1 d 3 h"]


def test_flow_commands_use_the_server_found_or_say_once_that_prefect_starts_one(isolated, health_server, capsys):
    assert use_prefect_server(fallback=True) is None and "PREFECT_API_URL" not in os.environ
    assert capsys.readouterr().err == TEMPORARY_SERVER_NOTE + "\n"
    assert TEMPORARY_SERVER_NOTE == ("scanflow: no Prefect server running; starting a temporary one for this command "
                                     "(about 20 s). Keep one running with: scanflow server start")
    _write(isolated, _record(os.getpid(), health_server))
    assert use_prefect_server(fallback=False) == health_server == os.environ["PREFECT_API_URL"]
    assert capsys.readouterr().err == ""


def test_the_warm_runner_is_used_only_by_a_shell_with_its_settings(isolated, monkeypatch, capsys):
    """The fingerprint holds no value, only hashes; a differing, added or removed deciding variable is named, and
    variables that change nothing (the Prefect endpoint, debug, SCANFLOW_WARM) are not compared."""
    from scanflow import warm

    base = {"MLFLOW_TRACKING_URI": "sqlite:///a.db", "AWS_SECRET_ACCESS_KEY": "s3cret", "HOME": "/root",
            "PREFECT_API_URL": "http://127.0.0.1:1/api", "SCANFLOW_DEBUG": "1", "SCANFLOW_WARM": "1"}
    print_ = warm.environment_fingerprint(base)
    assert sorted(print_) == ["AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"] and "s3cret" not in json.dumps(print_)
    other = warm.environment_fingerprint({**base, "MLFLOW_TRACKING_URI": "sqlite:///b.db", "SCANFLOW_MODEL_NAME": "m",
                                          "PREFECT_API_URL": "http://elsewhere/api", "SCANFLOW_DEBUG": "0"})
    assert warm.differing_variables(print_, other) == ["MLFLOW_TRACKING_URI", "SCANFLOW_MODEL_NAME"]
    assert warm.differing_variables(print_, warm.environment_fingerprint(base)) == []

    # No runner recorded, a record of a process that is not the runner, or SCANFLOW_WARM=0: the command runs here, silently.
    assert warm.runner_for_this_command(isolated, base) is None
    isolated.mkdir(parents=True)
    stale = warm.RunnerRecord(pid=os.getpid(), start_time=1, cmdline=["python"], port=1, api_url="http://127.0.0.1:1/api",
                              log_path="log", environment=print_, token="t")
    (isolated / warm.RECORD_FILE).write_text(json.dumps(dataclasses.asdict(stale)))
    assert warm.runner_for_this_command(isolated, base) is None
    monkeypatch.setenv("SCANFLOW_WARM", "0")
    assert warm.run_in_runner(["detect", "--batch", "b.npy"], isolated) is None
    assert capsys.readouterr().err == ""
    assert warm.stop_runner(isolated).endswith("was not running; removed its stale record")
    assert not (isolated / warm.RECORD_FILE).exists()
    assert warm.runner_status(isolated).startswith("stopped")


def test_runner_start_without_a_prefect_server_says_how_to_start_one(isolated):
    result = subprocess.run([SCANFLOW, "runner", "start"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and result.stdout == ""
    assert result.stderr == NO_SERVER + "the warm runner records its runs there\n"

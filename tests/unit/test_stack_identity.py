"""`scanflow stack down` stops only the processes the stack started: a recorded pid now held by another process
(another start time or command line) is left alone."""

from __future__ import annotations

import json
import subprocess
import time

from scanflow import stack
from scanflow.local import process_identity


def _record(folder, pid: int, identity) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stack.json").write_text(json.dumps({
        "directory": str(folder), "prefect_api_url": "http://127.0.0.1:1/api", "mlflow_tracking_uri": "http://127.0.0.1:2",
        "s3_endpoint_url": "http://127.0.0.1:3", "bucket": "scanflow", "access_key": "k", "secret_key": "s",
        "pids": {"prefect": pid}, "identities": {"prefect": identity},
    }))


def test_a_recycled_pid_is_left_alone_and_the_recorded_process_is_stopped(tmp_path):
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while (identity := process_identity(other.pid))[1] != ["sleep", "60"] and time.monotonic() < deadline:
            time.sleep(0.01)  # until the child has exec'd: before, /proc shows the forking Python's command line
        start, cmdline = identity
        _record(tmp_path / "recycled", other.pid, [start + 1, cmdline])  # same pid, another process's start time
        assert stack.status(tmp_path / "recycled") == {"prefect": False}
        assert stack.down(tmp_path / "recycled") == []
        assert other.poll() is None, "stack down killed a process it did not start"
        _record(tmp_path / "legacy", other.pid, None)  # a record without identities cannot prove the process is ours
        assert stack.down(tmp_path / "legacy") == [] and other.poll() is None
        _record(tmp_path / "ours", other.pid, [start, cmdline])
        assert stack.status(tmp_path / "ours") == {"prefect": True}
        assert stack.down(tmp_path / "ours") == ["prefect"]
        assert other.wait(timeout=10) is not None and not (tmp_path / "ours" / "stack.json").exists()
    finally:
        if other.poll() is None:
            other.kill()


def test_server_logs_and_files_are_private_to_the_user(tmp_path):
    """Every server the stack starts runs with umask 077 and writes its log as 0600."""
    import stat

    from scanflow.local import PRIVATE_UMASK, private_log

    with private_log(tmp_path / "server.log") as log:
        log.write(b"started\n")
    assert stat.S_IMODE((tmp_path / "server.log").stat().st_mode) == 0o600
    child = subprocess.run(["sh", "-c", "umask"], capture_output=True, text=True, umask=PRIVATE_UMASK)
    assert child.stdout.strip() == "0077"

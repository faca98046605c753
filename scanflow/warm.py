"""The warm runner: one long-lived local process that has already imported torch, Prefect, MLflow and the flows, and
runs `scanflow detect` and `scanflow predict` for the CLI, so a command answers in about a second instead of paying
4-5 s of imports each time. The runs it makes are the same flow runs, MLflow runs and artifacts as the command's own.

`scanflow runner start` starts it (`python -m scanflow.warm`) against the Prefect server the CLI finds, with the
environment of that shell, and records it in $SCANFLOW_HOME/runner.json (0600: it holds the token every request must
carry). The CLI hands a command to it only when the runner works with the same Prefect server and the same
MLflow/Scanflow/S3 settings (`environment_fingerprint`); otherwise it runs the command itself and says why, once.
It listens on 127.0.0.1 only and runs one command at a time (the others wait their turn). This module imports no Prefect until the runner itself
starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import http.server
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scanflow.config import WARM_COMMANDS
from scanflow.errors import ScanflowError, ServiceUnavailableError
from scanflow.local import (
    PRIVATE_UMASK,
    STARTUP_TIMEOUT_S,
    prefect_endpoint,
    private_log,
    process_identity,
    scanflow_home,
    stop_process_group,
    stop_recorded_process,
)

#: Variables whose values decide what a command does (tracking store, model names, bucket...): the runner and the
#: CLI must agree on them. The Prefect endpoint is compared on its own (`RunnerRecord.api_url`).
ENVIRONMENT_PREFIXES = ("MLFLOW_", "SCANFLOW_", "AWS_", "PREFECT_")
#: Variables of those prefixes that do not change what a command does, or that the endpoint comparison covers.
ENVIRONMENT_IGNORED = frozenset({"PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "SCANFLOW_DEBUG", "SCANFLOW_HOME", "SCANFLOW_WARM"})
RECORD_FILE = "runner.json"
LOG_FILE = "warm-runner.log"


def environment_fingerprint(environ: Mapping[str, str]) -> dict[str, str]:
    """sha256 of every deciding variable's value (`ENVIRONMENT_PREFIXES`, less `ENVIRONMENT_IGNORED`), by name:
    comparable without writing a secret to disk."""
    return {key: hashlib.sha256(value.encode()).hexdigest() for key, value in sorted(environ.items())
            if key.startswith(ENVIRONMENT_PREFIXES) and key not in ENVIRONMENT_IGNORED}


def differing_variables(ours: Mapping[str, str], theirs: Mapping[str, str]) -> list[str]:
    """Names of the variables set differently (or set on one side only) in two fingerprints, sorted."""
    return sorted(key for key in set(ours) | set(theirs) if ours.get(key) != theirs.get(key))


@dataclass(frozen=True)
class RunnerRecord:
    """What the runner records about itself (runner.json)."""

    pid: int
    start_time: int
    cmdline: list[str]
    port: int
    api_url: str
    log_path: str
    environment: dict[str, str]
    token: str = field(repr=False)

    def is_ours(self) -> bool:
        """Whether `pid` is still the runner this record describes (same start time and cmdline)."""
        return process_identity(self.pid) == (self.start_time, self.cmdline)


def read_runner_record(home: Path | None = None) -> RunnerRecord | None:
    try:
        return RunnerRecord(**json.loads(((home or scanflow_home()) / RECORD_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_record(home: Path, record: RunnerRecord) -> None:
    temporary = home / (RECORD_FILE + ".tmp")
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        json.dump(asdict(record), file, indent=2)
    temporary.replace(home / RECORD_FILE)


@dataclass(frozen=True)
class Answer:
    """What a command run by the runner printed, and its exit code."""

    code: int
    stdout: str
    stderr: str


# ---- the CLI's side ------------------------------------------------------------------------------------------------
def _request(record: RunnerRecord, method: str, path: str, body: dict | None = None, timeout_s: float | None = 2.0) -> dict:
    """One JSON request to the runner; `timeout_s` None waits as long as the command runs."""
    connection = http.client.HTTPConnection("127.0.0.1", record.port, timeout=2.0)
    try:
        connection.connect()
        connection.sock.settimeout(timeout_s)
        payload = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=payload, headers={"Authorization": f"Bearer {record.token}",
                                                                "Content-Type": "application/json"})
        response = connection.getresponse()
        data = json.loads(response.read() or b"{}")
        if response.status != 200:
            raise ScanflowError(f"the warm runner refused the request ({response.status}: {data.get('error', '')})")
        return data
    finally:
        connection.close()


def runner_for_this_command(home: Path | None = None, environ: Mapping[str, str] = os.environ) -> RunnerRecord | None:
    """The live runner of `home` if it may run this shell's command: same Prefect server, same deciding variables.
    None when there is no runner, or SCANFLOW_WARM=0 asks for none; when there is one that may not, also says why on
    stderr."""
    if environ.get("SCANFLOW_WARM") == "0":
        return None
    record = read_runner_record(home)
    if record is None or not record.is_ours():
        return None
    endpoint = prefect_endpoint()
    if endpoint is None or endpoint.api_url != record.api_url:
        print(f"scanflow: the warm runner (pid {record.pid}) works with the Prefect server at {record.api_url}, this "
              f"command with {endpoint.api_url if endpoint else 'none'}: running it here", file=sys.stderr)
        return None
    differ = differing_variables(environment_fingerprint(environ), record.environment)
    if differ:
        print(f"scanflow: the warm runner (pid {record.pid}) was started with other settings ({', '.join(differ)}): "
              "running the command here; `scanflow runner stop` then `scanflow runner start` in this shell makes it "
              "follow these", file=sys.stderr)
        return None
    return record


def run_in_runner(argv: list[str], home: Path | None = None) -> Answer | None:
    """Run the CLI command `argv` in the warm runner, from this working directory; None when there is no runner this
    command may use (`runner_for_this_command`) or it does not answer (the command then runs in this process).
    Raises ServiceUnavailableError when the runner stops while running the command: it may have run."""
    record = runner_for_this_command(home)
    if record is None:
        return None
    try:
        _request(record, "GET", "/health")
    except (OSError, ValueError, ScanflowError):
        print(f"scanflow: the warm runner (pid {record.pid}) does not answer: running the command here (its log: "
              f"{record.log_path})", file=sys.stderr)
        return None
    try:
        answer = _request(record, "POST", "/run", {"argv": argv, "cwd": os.getcwd()}, timeout_s=None)
    except (OSError, ValueError, http.client.HTTPException) as error:
        raise ServiceUnavailableError(f"the warm runner (pid {record.pid}) stopped while running the command ({error}); "
                                      f"it may have run: look for its run in the Prefect UI; log: {record.log_path}") from None
    return Answer(int(answer["code"]), str(answer["stdout"]), str(answer["stderr"]))


# ---- starting and stopping ------------------------------------------------------------------------------------------
def start_runner(home: Path | None = None, timeout_s: float = STARTUP_TIMEOUT_S) -> tuple[RunnerRecord, bool]:
    """The runner of `home`: the recorded one if it lives, else a new one started with this process's environment
    and the Prefect server the CLI finds, in a session of its own (it outlives this process). Returns (record,
    whether it was started now). Raises ServiceUnavailableError when no Prefect server is found, ScanflowError when
    the runner exits or does not answer within `timeout_s` (naming its log)."""
    home = home or scanflow_home()
    record = read_runner_record(home)
    if record is not None and record.is_ours():
        return record, False
    if prefect_endpoint() is None:
        raise ServiceUnavailableError("no Prefect server is set: start one with `scanflow server start` (or set "
                                      "PREFECT_API_URL); the warm runner records its runs there")
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    (home / RECORD_FILE).unlink(missing_ok=True)
    log_path = home / LOG_FILE
    with private_log(log_path, append=False) as log:
        process = subprocess.Popen([sys.executable, "-m", "scanflow.warm", str(home)], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, umask=PRIVATE_UMASK)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ScanflowError(f"the warm runner exited at start (code {process.returncode}); see {log_path}")
        record = read_runner_record(home)
        if record is not None and record.pid == process.pid:
            with contextlib.suppress(OSError, ValueError, ScanflowError):
                _request(record, "GET", "/health")
                return record, True
        time.sleep(0.5)
    stop_process_group(process)
    raise ScanflowError(f"the warm runner did not answer within {timeout_s:.0f} s; see {log_path}")


def stop_runner(home: Path | None = None) -> str:
    """Stop the runner recorded in `home` and remove its record; a pid now held by another process is left alone.
    Returns what happened, for a person."""
    home = home or scanflow_home()
    record = read_runner_record(home)
    if record is None:
        return f"no warm runner recorded in {home}: nothing to stop"
    if record.is_ours():
        stop_recorded_process(record.pid, record.start_time)
        message = f"stopped the warm runner (pid {record.pid})"
    else:
        message = f"the warm runner recorded in {home} (pid {record.pid}) was not running; removed its stale record"
    (home / RECORD_FILE).unlink(missing_ok=True)
    return message


def runner_status(home: Path | None = None) -> str:
    record = read_runner_record(home)
    if record is None or not record.is_ours():
        return "stopped (`scanflow runner start` keeps detect and predict warm)"
    return f"running: pid {record.pid}, Prefect API {record.api_url}, log {record.log_path}"


# ---- the runner itself ----------------------------------------------------------------------------------------------
#: One command at a time: a command changes the working directory and captures stdout/stderr, both process-wide.
#: Requests wait for it in their own threads, so a health check is answered while a command runs.
_ONE_COMMAND = threading.Lock()


def _run_command(argv: list[str], cwd: str) -> Answer:
    """The CLI command `argv` in this process, from `cwd`, with what it prints captured; after the command before it."""
    with _ONE_COMMAND:
        return _run_command_now(argv, cwd)


def _run_command_now(argv: list[str], cwd: str) -> Answer:
    from scanflow import cli

    previous = os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv, warm=False)
            except SystemExit as exit_:  # argparse: the CLI has parsed the same line already, so rarely reached
                code = exit_.code if isinstance(exit_.code, int) else 2
    except OSError as error:
        return Answer(2, "", f"scanflow: error: the working directory {cwd} cannot be used by the warm runner ({error})\n")
    finally:
        os.chdir(previous)
    return Answer(code, out.getvalue(), err.getvalue())


def _handler(token: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            if hmac.compare_digest(self.headers.get("Authorization", ""), f"Bearer {token}"):
                return True
            self._reply(401, {"error": "missing or wrong token"})
            return False

        def do_GET(self) -> None:
            if self._authorised():
                self._reply(200, {"pid": os.getpid()}) if self.path == "/health" else self._reply(404, {"error": self.path})

        def do_POST(self) -> None:
            if not self._authorised():
                return
            if self.path != "/run":
                self._reply(404, {"error": self.path})
                return
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                argv, cwd = [str(a) for a in request["argv"]], str(request["cwd"])
            except (ValueError, KeyError, TypeError) as error:
                self._reply(400, {"error": f"bad request: {error}"})
                return
            command = next((a for a in argv if not a.startswith("-")), None)
            if command not in WARM_COMMANDS:
                self._reply(400, {"error": f"the warm runner runs only {', '.join(WARM_COMMANDS)}, not {command}"})
                return
            self._reply(200, asdict(_run_command(argv, cwd)))

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (the base class's name)
            # to the runner's log, never into the output of a command that runs meanwhile
            sys.__stderr__.write(f"warm runner: {self.address_string()} {format % args}\n")
            sys.__stderr__.flush()

    return Handler


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve(home: Path) -> None:
    """The runner's main loop: import the flows, listen on 127.0.0.1, record itself in `home`, answer until SIGTERM."""
    fingerprint = environment_fingerprint(os.environ)
    endpoint = prefect_endpoint()
    if endpoint is None:
        raise ServiceUnavailableError("no Prefect server is set: start one with `scanflow server start`")
    os.environ.update(endpoint.environment())
    import flows.detect  # noqa: F401  (the imports that make a cold command slow, paid once here)
    import flows.predict  # noqa: F401

    token = secrets.token_hex(32)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(token))
    signal.signal(signal.SIGTERM, _interrupt)
    identity = process_identity(os.getpid())
    _write_record(home, RunnerRecord(pid=os.getpid(), start_time=identity[0], cmdline=identity[1],
                                     port=server.server_address[1], api_url=endpoint.api_url,
                                     log_path=str(home / LOG_FILE), environment=fingerprint, token=token))
    print(f"warm runner: pid {os.getpid()} on 127.0.0.1:{server.server_address[1]}, Prefect API {endpoint.api_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))

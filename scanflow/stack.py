"""The local stack: SeaweedFS (S3), an MLflow server (SQLite runs, artifacts in the bucket) and a Prefect server, as
local processes under one directory, health-checked, outliving the command that started them.

Every door needs credentials: the S3 API its keys (SeaweedFS's other ports a client certificate only SeaweedFS
holds), MLflow a user and password (basic auth), Prefect an auth string; all made once by `up`, kept in
`credentials.json` and handed to a shell only through `scanflow stack env` (see `scanflow.local_auth`).

Layout of the directory: `stack.json` (addresses and PIDs of the running stack), `credentials.json` (the bucket's
keys, MLflow's user and password, Prefect's auth string; mode 0600, kept across restarts), `ports.json` (kept so a
restart finds its data where it left it), `seaweedfs/`, `mlflow.db`, `mlflow-auth.db`, `prefect/` (PREFECT_HOME) and
one log per server.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scanflow.config import StorageConfig
from scanflow.errors import ScanflowError
from scanflow.local import (
    SEAWEEDFS_GRPC_PORTS,
    SEAWEEDFS_PORTS,
    free_port,
    process_identity,
    start_mlflow_server,
    start_prefect_server,
    start_seaweedfs,
)
from scanflow.local_auth import (
    MLFLOW_ADMIN_USERNAME,
    MlflowAuth,
    new_prefect_auth_string,
    new_secret,
    prefect_client_environment,
    write_private,
)
from scanflow.storage import S3Store

DEFAULT_STACK_DIR = Path(".scanflow") / "stack"
DEFAULT_PORTS = {"prefect": 4200, "mlflow": 5000, "s3": 8333}
BUCKET = "scanflow"


@dataclass(frozen=True)
class StackInfo:
    directory: str
    prefect_api_url: str
    mlflow_tracking_uri: str
    s3_endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)
    pids: dict[str, int] = field(default_factory=dict)
    identities: dict[str, list] = field(default_factory=dict)
    mlflow_username: str = MLFLOW_ADMIN_USERNAME
    mlflow_password: str = field(default="", repr=False)
    prefect_auth_string: str = field(default="", repr=False)

    @property
    def prefect_ui_url(self) -> str:
        return self.prefect_api_url.removesuffix("/api")

    def environment(self) -> dict[str, str]:
        """What a shell, a worker or a container needs to use this stack, credentials included (a stack recorded
        before its servers asked for credentials has none to give)."""
        return {
            "PREFECT_API_URL": self.prefect_api_url,
            **(prefect_client_environment(self.prefect_auth_string) if self.prefect_auth_string else {}),
            "MLFLOW_TRACKING_URI": self.mlflow_tracking_uri,
            **(MlflowAuth(self.mlflow_username, self.mlflow_password).environment() if self.mlflow_password else {}),
            **StorageConfig(bucket=self.bucket, endpoint_url=self.s3_endpoint_url, access_key_id=self.access_key,
                            secret_access_key=self.secret_key).environment(),
        }

    def exports(self) -> str:
        return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in self.environment().items())


def _write_private(path: Path, text: str) -> None:
    """`text` into `path`, readable by this user only (0600 from its creation on)."""
    write_private(path, text)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ours(saved: dict, name: str) -> bool:
    """Whether the pid recorded for server `name` is still the process the stack started (same start time and
    command line), not a later process that was given the same pid."""
    recorded = saved.get("identities", {}).get(name)
    identity = process_identity(saved["pids"][name])
    return recorded is not None and identity is not None and (identity[0], identity[1]) == (recorded[0], recorded[1])


def status(directory: str | Path = DEFAULT_STACK_DIR) -> dict[str, bool]:
    """Each server of the stack started from `directory` and whether it still runs ({} if none started)."""
    info = _read_json(Path(directory) / "stack.json")
    return {name: _ours(info, name) for name in (info or {}).get("pids", {})}


@dataclass(frozen=True)
class StackCredentials:
    """Everything a client of the stack must present: the bucket's keys, MLflow's password, Prefect's auth string."""

    access_key: str
    secret_key: str = field(repr=False)
    mlflow_password: str = field(repr=False)
    prefect_auth_string: str = field(repr=False)

    @property
    def mlflow(self) -> MlflowAuth:
        return MlflowAuth(MLFLOW_ADMIN_USERNAME, self.mlflow_password)


def _credentials(directory: Path) -> StackCredentials:
    """The stack's credentials from `credentials.json`, made (and missing ones added) on the first `up`."""
    path = directory / "credentials.json"
    saved = _read_json(path) or {}
    credentials = StackCredentials(
        access_key=saved.get("access_key") or f"scanflow-{secrets.token_hex(4)}",
        secret_key=saved.get("secret_key") or secrets.token_urlsafe(24),
        mlflow_password=saved.get("mlflow_password") or new_secret(),
        prefect_auth_string=saved.get("prefect_auth_string") or new_prefect_auth_string(),
    )
    if asdict(credentials) != saved:
        _write_private(path, json.dumps(asdict(credentials)))
    return credentials


def _ports(directory: Path, requested: dict[str, int] | None) -> dict[str, int]:
    """Ports of a previous start (a restart must find SeaweedFS's volumes where its metadata says), else the
    requested or default ones, else free ones for SeaweedFS's internal servers."""
    saved = _read_json(directory / "ports.json")
    if saved and not requested:
        return saved
    ports = {**DEFAULT_PORTS, **(requested or {})}
    ports.update({f"seaweedfs.{name}": free_port() for name in SEAWEEDFS_PORTS if name != "s3"})
    ports.update({f"seaweedfs.grpc.{name}": free_port() for name in SEAWEEDFS_GRPC_PORTS})
    _write_private(directory / "ports.json", json.dumps(ports, indent=2))
    return ports


def up(directory: str | Path = DEFAULT_STACK_DIR, ports: dict[str, int] | None = None) -> StackInfo:
    """Start the stack from `directory` (its data survives `down`/`up`); returns once every server answers. If any
    server fails to start, the ones already started are stopped again: nothing is left half up."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    running = {name for name, alive in status(directory).items() if alive}
    if running:
        raise ScanflowError(f"a stack is already running from {directory} ({', '.join(sorted(running))}): `scanflow stack down` first")
    credentials = _credentials(directory)
    access_key, secret_key = credentials.access_key, credentials.secret_key
    ports = _ports(directory, ports)
    seaweed_ports = {"s3": ports["s3"], **{k.removeprefix("seaweedfs."): v for k, v in ports.items() if k.startswith("seaweedfs.")}}
    started = []
    try:
        s3 = start_seaweedfs(directory / "seaweedfs", access_key, secret_key, ports=seaweed_ports)
        started.append(s3)
        storage = StorageConfig(bucket=BUCKET, endpoint_url=s3.endpoint_url, access_key_id=access_key, secret_access_key=secret_key)
        S3Store(storage).ensure_bucket()
        s3_env = {**storage.environment(), "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url}
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {
                "mlflow": pool.submit(start_mlflow_server, directory / "mlflow.db", f"s3://{BUCKET}/mlflow", s3_env, ports["mlflow"],
                                      directory, auth=credentials.mlflow),
                "prefect": pool.submit(start_prefect_server, ports["prefect"], directory, directory / "prefect",
                                       auth_string=credentials.prefect_auth_string),
            }
        servers, errors = {}, []
        for name, future in futures.items():
            try:
                servers[name] = future.result()
                started.append(servers[name])
            except ScanflowError as error:
                errors.append(str(error))
        if errors:
            raise ScanflowError("the local stack did not start: " + "; ".join(errors))
        mlflow, prefect = servers["mlflow"], servers["prefect"]
    except BaseException:
        for server in reversed(started):
            server.stop()
        raise
    info = StackInfo(
        directory=str(directory), prefect_api_url=prefect.api_url, mlflow_tracking_uri=mlflow.tracking_uri,
        s3_endpoint_url=s3.endpoint_url, bucket=BUCKET, access_key=access_key, secret_key=secret_key,
        pids={"seaweedfs": s3.process.pid, "mlflow": mlflow.process.pid, "prefect": prefect.process.pid},
        identities={name: list(process_identity(server.process.pid) or (None, None))
                    for name, server in (("seaweedfs", s3), ("mlflow", mlflow), ("prefect", prefect))},
        mlflow_username=credentials.mlflow.username, mlflow_password=credentials.mlflow_password,
        prefect_auth_string=credentials.prefect_auth_string,
    )
    _write_private(directory / "stack.json", json.dumps(asdict(info), indent=2))
    return info


def info(directory: str | Path = DEFAULT_STACK_DIR) -> StackInfo:
    """The running stack started from `directory`."""
    saved = _read_json(Path(directory) / "stack.json")
    if saved is None:
        raise ScanflowError(f"no stack was started from {Path(directory).resolve()}: `scanflow stack up` starts one")
    return StackInfo(**saved)


def down(directory: str | Path = DEFAULT_STACK_DIR, timeout_s: float = 30) -> list[str]:
    """Stop every server of the stack (SIGTERM to each process group, SIGKILL after `timeout_s`); the data stays.
    Only processes the stack started are signalled: a recorded pid now held by another process (another start time
    or command line) is left alone. Returns the names of the servers stopped."""
    directory = Path(directory)
    saved = _read_json(directory / "stack.json")
    if saved is None:
        return []
    stopped = []
    for name, pid in saved["pids"].items():
        if not _ours(saved, name):
            continue
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
            _reap(pid)
        stopped.append(name)
    (directory / "stack.json").unlink()
    return stopped


def _reap(pid: int) -> None:
    """Collect `pid` if it is our own child (a stack started and stopped by the same process, as in tests)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass

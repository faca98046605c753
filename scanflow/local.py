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
        """SIGTERM to the server's process group (its services and workers too), SIGKILL if it lingers."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


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
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ScanflowError(f"the Prefect server exited at start (code {process.returncode}); see {log_path}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(1)
    server.stop()
    raise ScanflowError(f"the Prefect server did not answer within {STARTUP_TIMEOUT_S} s; see {log_path}")

"""A private PostgreSQL cluster for tests and benchmarks: Debian's `postgresql` binaries, a data folder of its own
in a temporary directory, 127.0.0.1 only on a free port, password (scram-sha-256) authentication, one database;
stopped and removed at the end. Prefect's server runs on it as production deployments do
(`PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://...`).

PostgreSQL refuses to run as root: as root the cluster belongs to the `postgres` OS user (created by the Debian
package) and every server command runs through `runuser -u postgres --`; as another user it runs as that user.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scanflow.local import free_port

#: Where Debian's `postgresql` package puts the server binaries (one folder per major version).
DEBIAN_POSTGRES_ROOT = Path("/usr/lib/postgresql")
#: The OS user that owns the cluster when the tests run as root.
POSTGRES_OS_USER = "postgres"
#: Seconds `pg_ctl` waits for the server to start or stop.
PG_CTL_TIMEOUT_S = 60


class PostgresUnavailableError(RuntimeError):
    """PostgreSQL's server binaries are not installed (Debian: `apt-get install postgresql`)."""


@dataclass(frozen=True)
class PostgresCluster:
    """A running private cluster: its data folder, port, the superuser's name and password, and the database."""

    data_dir: Path
    port: int
    user: str
    password: str
    database: str

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Prefect's server takes (asyncpg driver)."""
        return f"postgresql+asyncpg://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "postgres.log"


def postgres_bin_dir() -> Path:
    """The newest installed PostgreSQL's binary folder (`/usr/lib/postgresql/<major>/bin`), else the folder of
    `initdb` on PATH. Raises PostgresUnavailableError when there is none."""
    versions = sorted(
        (path.parent for path in DEBIAN_POSTGRES_ROOT.glob("*/bin/initdb")),
        key=lambda folder: [int(part) for part in re.findall(r"\d+", folder.parent.name)],
    )
    if versions:
        return versions[-1]
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresUnavailableError(
        f"PostgreSQL's initdb is not installed (looked in {DEBIAN_POSTGRES_ROOT}/*/bin and on PATH): "
        "apt-get install postgresql (`make test` installs it)"
    )


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", POSTGRES_OS_USER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], what: str, cwd: Path, **kwargs) -> None:
    """`command` from `cwd` (a folder the cluster's owner can enter), raising RuntimeError with its stderr on failure."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=PG_CTL_TIMEOUT_S + 30, cwd=cwd, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}")


@contextlib.contextmanager
def postgres_cluster(database: str = "scanflow", user: str = "scanflow") -> Iterator[PostgresCluster]:
    """A fresh cluster serving `database` (owned by the superuser `user`, a random password) on 127.0.0.1; stopped
    (fast shutdown) and its folder removed on exit. Raises PostgresUnavailableError without the binaries."""
    bin_dir = postgres_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="scanflow-postgres-"))
    data_dir = root / "data"
    password = secrets.token_urlsafe(24)
    cluster = PostgresCluster(data_dir, free_port(), user, password, database)
    started = False
    try:
        password_file = root / "password"
        password_file.write_text(password + "\n")
        if os.geteuid() == 0:
            shutil.chown(root, POSTGRES_OS_USER, POSTGRES_OS_USER)
            shutil.chown(password_file, POSTGRES_OS_USER, POSTGRES_OS_USER)
        password_file.chmod(0o600)
        _run(_as_owner([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", user, f"--pwfile={password_file}",
                        "--auth=scram-sha-256", "--encoding=UTF8", "--no-instructions"]), "initdb", root)
        password_file.unlink()
        # TCP on 127.0.0.1 only, no Unix socket (the default socket folder may not be writable by this user).
        options = f"-c listen_addresses=127.0.0.1 -c port={cluster.port} -c unix_socket_directories='' -c max_connections=200"
        _run(_as_owner([str(bin_dir / "pg_ctl"), "start", "-D", str(data_dir), "-w", "-t", str(PG_CTL_TIMEOUT_S),
                        "-l", str(cluster.log_path), "-o", options]), f"starting PostgreSQL (log: {cluster.log_path})", root)
        started = True
        _run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", user, database],
             "createdb", root, env={**os.environ, "PGPASSWORD": password})
        yield cluster
    finally:
        if started:
            subprocess.run(_as_owner([str(bin_dir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "fast", "-w",
                                      "-t", str(PG_CTL_TIMEOUT_S)]), capture_output=True, cwd=root, timeout=PG_CTL_TIMEOUT_S + 30)
        shutil.rmtree(root, ignore_errors=True)


def query(cluster: PostgresCluster, sql: str) -> list[str]:
    """The rows `sql` returns from the cluster's database, through psql, one '|'-separated line per row."""
    result = subprocess.run(
        [str(postgres_bin_dir() / "psql"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", cluster.user, "-d", cluster.database,
         "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PGPASSWORD": cluster.password},
    )
    if result.returncode != 0:
        raise RuntimeError(f"psql failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout.splitlines()

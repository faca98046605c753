"""Load: concurrent detect runs and paused supervise loops on one local Prefect server, with the server's database
on SQLite (Prefect's default) and on PostgreSQL (what production deployments use).

For each database a fresh `prefect server start` on 127.0.0.1 (PostgreSQL: a private cluster, tests/postgres.py)
serves, in turn:

  1. N detect flow runs at once (N = 1, 4, 16, 32 by default), threads of this one client process, each on a batch
     of its own (half clean, half corrupted, so every verdict differs), after one warm-up run;
  2. 5 supervise loops at once, each on a one-batch drifted stream of its own, all paused on their decision forms,
     then answered one by one with a decision of their own (labels and note).

Every run is checked (tests/flows/load.py): lost (its caller got no result, or the server does not hold it
COMPLETED exactly once) or mixed up (another batch's verdict or MLflow run, another loop's answer). One MLflow
store (SQLite, in this process) and one digits champion serve both databases; the known shifts the loops' decisions
leave on the champion are removed after each database, so both see the same champion.

Measured per N and database: runs/s (N over the seconds from the release of the N runs to the last return),
latency percentiles of a run (call to return), errors, the client's retries on HTTP 503 (Prefect's client retries
a 503 up to PREFECT_CLIENT_MAX_RETRIES times) and the server's 503s (it answers 503 to a request that hit a
retryable database error, e.g. SQLite's "database is locked"; logged with PREFECT_API_LOG_RETRYABLE_ERRORS=true).

Run: `python -m benchmarks.load [--concurrency 1,4,16,32] [--loops 5] [--batch-size 50] [--databases sqlite,postgresql]`
(about 10 minutes on 2 cores). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: The server log lines that count its 503s and SQLite lock errors.
SERVER_RETRYABLE = "Encountered retryable exception in request"
SQLITE_LOCKED = "database is locked"


@dataclass(frozen=True)
class DetectRow:
    database: str
    n: int
    completed: int
    lost: int
    mixed: int
    wall_s: float
    p50_s: float
    p95_s: float
    max_s: float
    client_503: int
    server_503: int
    locked: int
    errors: tuple[str, ...]

    @property
    def runs_per_s(self) -> float:
        return self.completed / self.wall_s


@dataclass(frozen=True)
class LoopRow:
    database: str
    loops: int
    paused_at_once: bool
    completed: int
    lost: int
    mixed: int
    pause_p50_s: float
    pause_p95_s: float
    done_p50_s: float
    done_p95_s: float
    wall_s: float
    client_503: int
    server_503: int
    problems: tuple[str, ...]


class RetryCounter(logging.Handler):
    """Counts the Prefect client's retries on HTTP 503 (its DEBUG messages "Received response with retryable status
    code 503")."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "retryable status code 503" in record.getMessage():
            self.count += 1

    def restart(self) -> None:
        """Count from zero, (re)attached to the client's logger at DEBUG: Prefect's logging set-up, which runs again
        when flows start, replaces that logger's handlers."""
        client_logger = logging.getLogger("prefect.client")
        client_logger.removeHandler(self)
        client_logger.addHandler(self)
        client_logger.setLevel(logging.DEBUG)
        self.count = 0


class ServerLog:
    """The lines a server's log gained since the last `since()`: its 503s and SQLite lock errors."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def since(self) -> tuple[int, int]:
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            text = log.read().decode(errors="replace")
            self.offset = log.tell()
        return text.count(SERVER_RETRYABLE), text.count(SQLITE_LOCKED)


@contextlib.contextmanager
def prefect_server(database: str, work: Path) -> Iterator[tuple[str, Path, str]]:
    """A fresh Prefect server on `database` ('sqlite': its default file under its PREFECT_HOME; 'postgresql': a
    private cluster); yields its API URL and log path."""
    from scanflow.local import start_prefect_server
    from tests.postgres import postgres_cluster

    folder = work / f"prefect-{database}"
    folder.mkdir()
    env = {"PREFECT_API_LOG_RETRYABLE_ERRORS": "true"}
    with contextlib.ExitStack() as stack:
        if database == "postgresql":
            cluster = stack.enter_context(postgres_cluster(database="prefect"))
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = cluster.url
        from scanflow.local_auth import new_prefect_auth_string

        auth_string = new_prefect_auth_string()
        server = start_prefect_server(log_dir=folder, home=folder / "home", auth_string=auth_string, env=env)
        stack.callback(server.stop)
        yield server.api_url, server.log_path, auth_string


def measure_detects(database: str, n: int, work: Path, args: argparse.Namespace, retries: RetryCounter, log: ServerLog) -> DetectRow:
    from tests.flows.load import check_detects, percentile, run_detects, write_batches

    batches = write_batches(work / "batches" / f"{database}-{n}", f"{database}-n{n:02d}", n, args.batch_size, args.budget)
    retries.restart()
    log.since()
    records, wall = run_detects(batches, "load", args.budget)
    check = check_detects(batches, records)
    server_503, locked = log.since()
    seconds = [record.seconds for record in records if record.result is not None]
    return DetectRow(database, n, len(seconds), len(check.lost), len(check.mixed), wall, percentile(seconds, 50),
                     percentile(seconds, 95), max(seconds, default=float("nan")), retries.count, server_503, locked,
                     tuple(check.lost + check.mixed))


def measure_loops(database: str, work: Path, args: argparse.Namespace, retries: RetryCounter, log: ServerLog) -> LoopRow:
    from tests.flows.load import check_loops, percentile, run_loops, write_loops

    loops = write_loops(work / "loops" / database, f"{database}-loop", args.loops, args.loop_batch_size)
    retries.restart()
    log.since()
    start = time.perf_counter()
    timings, problems = run_loops(loops, "load", args.budget)
    wall = time.perf_counter() - start
    check = check_loops(loops, timings)
    server_503, _ = log.since()
    pauses = [t.paused_after_s for t in timings if t.paused_after_s is not None]
    done = [t.answer_to_done_s for t in timings if t.answer_to_done_s is not None and t.record.result is not None]
    return LoopRow(database, len(loops), not any("at once" in p for p in problems), len(done), len(check.lost),
                   len(check.mixed), percentile(pauses, 50), percentile(pauses, 95), percentile(done, 50),
                   percentile(done, 95), wall, retries.count, server_503, tuple(problems + check.lost + check.mixed))


def where_sqlite_stops(rows: list[DetectRow]) -> str:
    """A sentence from the table: the first N at which SQLite lost or mixed up a run or answered 503, and the N of
    its best throughput, beside PostgreSQL's."""
    def first(database: str, failing) -> int | None:
        return next((row.n for row in rows if row.database == database and failing(row)), None)

    parts = []
    for database in ("sqlite", "postgresql"):
        own = [row for row in rows if row.database == database]
        if not own:
            continue
        best = max(own, key=lambda row: row.runs_per_s)
        lost = first(database, lambda row: row.lost or row.mixed)
        busy = first(database, lambda row: row.server_503 or row.client_503)
        parts.append(f"{database}: best throughput {best.runs_per_s:.2f} runs/s at N={best.n}; "
                     f"first 503 at N={busy if busy is not None else 'none'}; first lost or mixed-up run at N={lost if lost is not None else 'none'}")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,4,16,32", help="numbers of detect runs at once")
    parser.add_argument("--loops", type=int, default=5, help="supervise loops paused at once (0: none)")
    parser.add_argument("--batch-size", type=int, default=50, help="images per detect batch (digits: 8x8)")
    parser.add_argument("--loop-batch-size", type=int, default=40, help="images in each loop's drifted batch")
    parser.add_argument("--budget", type=int, default=5, help="critical samples shown per batch")
    parser.add_argument("--databases", default="sqlite,postgresql", help="the Prefect server's databases, in order")
    args = parser.parse_args()
    concurrency = [int(n) for n in args.concurrency.split(",")]
    databases = args.databases.split(",")

    work = Path(tempfile.mkdtemp(prefix="scanflow-load-"))
    os.environ.update(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", SCANFLOW_MODEL_NAME="load-classifier", SCANFLOW_EXPERIMENT="load")
    import prefect
    import mlflow

    from tests.flows.conftest import using_prefect_api
    from tests.flows.load import forget_known_shifts, run_detects, write_batches
    from tests.postgres import postgres_bin_dir

    retries = RetryCounter()
    detect_rows: list[DetectRow] = []
    loop_rows: list[LoopRow] = []
    trained = False
    for database in databases:
        with prefect_server(database, work) as (api_url, log_path, auth_string), using_prefect_api(api_url, auth_string):
            if not trained:
                from flows.train import train_flow

                train_flow(dataset="digits", epochs=15, autoencoder_epochs=10, latent_dim=8)
                trained = True
            warm = write_batches(work / "batches" / f"{database}-warm", f"{database}-warm", 1, args.batch_size, args.budget)
            run_detects(warm, "load", args.budget)
            log = ServerLog(log_path)
            for n in concurrency:
                detect_rows.append(row := measure_detects(database, n, work, args, retries, log))
                print(f"{database} N={n}: {row.runs_per_s:.2f} runs/s, p95 {row.p95_s:.1f} s, lost {row.lost}, mixed {row.mixed}", flush=True)
            if args.loops:
                loop_rows.append(row := measure_loops(database, work, args, retries, log))
                print(f"{database} loops: {row.completed}/{row.loops} completed, lost {row.lost}, mixed {row.mixed}", flush=True)
                forget_known_shifts()

    postgres_version = postgres_bin_dir().parent.name
    print(f"\nLoad, {datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()} with {os.cpu_count()} cores shared with "
          f"other test runs, Python {platform.python_version()}, prefect {prefect.__version__}, mlflow {mlflow.__version__}, "
          f"PostgreSQL {postgres_version}; one `prefect server start` per database (SQLite: its default file; "
          f"PostgreSQL: a private cluster, asyncpg); runs are threads of one client process; one MLflow SQLite store "
          f"and one digits champion (15 epochs); detect batches of {args.batch_size} 8x8 images, half clean, half "
          f"corrupted at severity 5, budget {args.budget}, Evidently report off; {args.loops} supervise loops on "
          f"one {args.loop_batch_size}-image drifted batch each, answered 'ignore' with their own labels and note\n")
    print("| database | runs at once | completed | lost | mixed up | runs/s | p50 (s) | p95 (s) | max (s) | client retries on 503 | server 503s | 'database is locked' |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in detect_rows:
        print(f"| {r.database} | {r.n} | {r.completed} | {r.lost} | {r.mixed} | {r.runs_per_s:.2f} | {r.p50_s:.1f} | {r.p95_s:.1f} | "
              f"{r.max_s:.1f} | {r.client_503} | {r.server_503} | {r.locked} |")
    if loop_rows:
        print("\n| database | loops | all paused at once | completed | lost | mixed up | start -> form paused p50 / p95 (s) | answer -> loop done p50 / p95 (s) | wall (s) | client retries on 503 | server 503s |\n"
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in loop_rows:
        print(f"| {r.database} | {r.loops} | {'yes' if r.paused_at_once else 'no'} | {r.completed} | {r.lost} | {r.mixed} | "
              f"{r.pause_p50_s:.1f} / {r.pause_p95_s:.1f} | {r.done_p50_s:.1f} / {r.done_p95_s:.1f} | {r.wall_s:.0f} | {r.client_503} | {r.server_503} |")
    print(f"\n{where_sqlite_stops(detect_rows)}")
    for r in detect_rows:
        for error in r.errors:
            print(f"- {r.database} N={r.n}: {error[:300]}")
    for r in loop_rows:
        for problem in r.problems:
            print(f"- {r.database} loops: {problem[:300]}")


if __name__ == "__main__":
    main()

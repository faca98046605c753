"""Many streams on one Prefect server and one MLflow server: K supervise loops at once, each a process of its own (as
K deployments' runs on a process worker are), for K = 1, 4, 16, with the Prefect server's database on SQLite and on
PostgreSQL.

For each database: a fresh `prefect server start` on 127.0.0.1 (PostgreSQL: a private cluster, tests/postgres.py);
one `mlflow server` (SQLite, local artifacts, basic auth, one worker, as `scanflow stack up` runs it) serves every
database; one Fashion-MNIST champion (1 classifier and 1 autoencoder epoch: the models' cost does not depend on how
well they are trained). Per K, K streams of `--batches` clean batches of `--batch-size` images, each supervised by
`supervise_flow` (the oracle as the person, steps as sub-flows) in its own Python process. The processes import
everything, then wait at a barrier, so the timing starts with all K loops ready.

Measured from the Prefect server's own records: a batch's latency is its predict sub-flow's start to its detect
sub-flow's end; batches/s is every stream's batches over the first predict start to the last detect end. A stream
is lost if its process fails or its supervise run does not hold every batch's predict and detect COMPLETED; a
clean batch that alarms is counted (alpha 0.001 is below the smallest p-value of the detector's null, so none may).

Run: `python -m benchmarks.streams [--streams 1,4,16] [--batches 6] [--batch-size 200] [--databases sqlite,postgresql]`
(about 15 minutes on 2 cores). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: Below the smallest p-value a null of 500 windows gives (1/501): no clean batch alarms by chance, so every loop
#: runs the same champion and nobody is asked.
ALPHA = 0.001
#: Seconds the K processes may take to import and reach the barrier, and then to finish their streams.
READY_TIMEOUT_S = 600
RUN_TIMEOUT_S = 1800


@dataclass(frozen=True)
class StreamsRow:
    database: str
    streams: int
    batches: int
    completed: int
    lost: int
    alarms: int
    wall_s: float
    p50_s: float
    p95_s: float
    max_s: float
    problems: tuple[str, ...]

    @property
    def batches_per_s(self) -> float:
        return self.completed / self.wall_s if self.wall_s > 0 else float("nan")


def _one_stream(stream_dir: str, barrier: str, out: str) -> None:
    """A subprocess: import the loop, report ready, wait for the barrier, supervise the stream, write the result."""
    from flows.supervise import supervise_flow

    Path(out + ".ready").touch()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not Path(barrier).exists():
        if time.monotonic() > deadline:
            raise SystemExit("the barrier never opened")
        time.sleep(0.05)
    result = supervise_flow(stream_dir=stream_dir, human="oracle", alpha=ALPHA)
    Path(out).write_text(json.dumps({"flow_run_id": str(result["prefect_flow_run_id"]),
                                     "drift": [row["drift"] for row in result["batches"]]}))


def _run_streams(k: int, folder: Path, env: dict[str, str]) -> tuple[list[subprocess.Popen], list[Path]]:
    """Start K stream processes and open their barrier once all are ready; returns them and their result files."""
    barrier = folder / "go"
    outs = [folder / f"result-{i:02d}.json" for i in range(k)]
    processes = []
    for i, out in enumerate(outs):
        with open(folder / f"stream-{i:02d}.log", "wb") as log:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.streams", "--one", str(folder / f"stream-{i:02d}"), str(barrier), str(out)],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not all(Path(str(out) + ".ready").exists() for out in outs):
        if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in processes):
            break
        time.sleep(0.2)
    barrier.touch()
    for process in processes:
        try:
            process.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
    return processes, outs


def measure(database: str, k: int, folder: Path, env: dict[str, str], args: argparse.Namespace) -> StreamsRow:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from tests.flows.load import percentile
    from scanflow.stream import make_stream

    for i in range(k):
        make_stream(folder / f"stream-{i:02d}", "fashion-mnist", n_batches=args.batches, batch_size=args.batch_size,
                    drift_at=args.batches, seed=i)
    processes, outs = _run_streams(k, folder, env)
    problems: list[str] = []
    latencies: list[float] = []
    starts, ends = [], []
    alarms = lost = 0
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        for i, (process, out) in enumerate(zip(processes, outs)):
            if process.returncode != 0 or not out.exists():
                lost += 1
                log = (folder / f"stream-{i:02d}.log").read_text(errors="replace").strip().splitlines()
                problems.append(f"stream {i}: exit {process.returncode}: {log[-1] if log else '(no output)'}")
                continue
            result = json.loads(out.read_text())
            alarms += sum(1 for drift in result["drift"] if drift != "no")
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[result["flow_run_id"]])))
            by_kind: dict[str, list] = {"predict": [], "detect": []}
            for run in children:
                if flows[run.flow_id] in by_kind and run.state_type.value == "COMPLETED":
                    by_kind[flows[run.flow_id]].append(run)
            predicts = sorted(by_kind["predict"], key=lambda r: r.start_time)
            detects = sorted(by_kind["detect"], key=lambda r: r.start_time)
            if len(predicts) != args.batches or len(detects) != args.batches:
                lost += 1
                problems.append(f"stream {i}: {len(predicts)} predict and {len(detects)} detect runs completed of {args.batches}")
                continue
            for predict, detect in zip(predicts, detects):
                latencies.append((detect.end_time - predict.start_time).total_seconds())
                starts.append(predict.start_time)
                ends.append(detect.end_time)
    wall = (max(ends) - min(starts)).total_seconds() if starts else float("nan")
    return StreamsRow(database, k, k * args.batches, len(latencies), lost, alarms, wall, percentile(latencies, 50),
                      percentile(latencies, 95), max(latencies, default=float("nan")), tuple(problems))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1,4,16", help="numbers of streams supervised at once")
    parser.add_argument("--batches", type=int, default=6, help="clean batches per stream")
    parser.add_argument("--batch-size", type=int, default=200, help="images per batch (Fashion-MNIST, 28x28)")
    parser.add_argument("--databases", default="sqlite,postgresql", help="the Prefect server's databases, in order")
    parser.add_argument("--one", nargs=3, metavar=("STREAM_DIR", "BARRIER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one_stream(*args.one)
        return
    counts = [int(k) for k in args.streams.split(",")]

    work = Path(tempfile.mkdtemp(prefix="scanflow-streams-"))
    from scanflow.local import start_mlflow_server
    from scanflow.local_auth import MlflowAuth, prefect_client_environment

    auth = MlflowAuth.generate()
    (work / "mlflow").mkdir()
    mlflow_server = start_mlflow_server(work / "mlflow" / "mlflow.db", str(work / "mlflow" / "artifacts"), {}, auth=auth)
    mlflow_env = {"MLFLOW_TRACKING_URI": mlflow_server.tracking_uri, **auth.environment(),
                  "SCANFLOW_MODEL_NAME": "streams-classifier", "SCANFLOW_EXPERIMENT": "streams"}
    os.environ.update(mlflow_env)
    import mlflow
    import prefect

    from benchmarks.load import prefect_server
    from tests.flows.conftest import using_prefect_api
    from tests.postgres import postgres_bin_dir

    rows: list[StreamsRow] = []
    trained = False
    try:
        for database in args.databases.split(","):
            with prefect_server(database, work) as (api_url, _, auth_string), using_prefect_api(api_url, auth_string):
                if not trained:
                    from flows.train import train_flow

                    train_flow(dataset="fashion-mnist", epochs=1, autoencoder_epochs=1)
                    trained = True
                for k in counts:
                    folder = work / f"{database}-{k:02d}"
                    folder.mkdir()
                    # Each process gets its share of the cores: wider OpenMP pools spin on descheduled threads.
                    threads = max(1, (os.cpu_count() or 1) // k)
                    env = {**os.environ, **mlflow_env, "PREFECT_API_URL": api_url, **prefect_client_environment(auth_string),
                           "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
                    rows.append(row := measure(database, k, folder, env, args))
                    print(f"{database} K={k}: {row.batches_per_s:.2f} batches/s, p50 {row.p50_s:.2f} s, p95 {row.p95_s:.2f} s, "
                          f"lost {row.lost}, alarms {row.alarms}", flush=True)
    finally:
        mlflow_server.stop()

    print(f"\nStreams, {platform.machine()} with {os.cpu_count()} cores, Python {platform.python_version()}, prefect "
          f"{prefect.__version__}, mlflow {mlflow.__version__}, PostgreSQL {postgres_bin_dir().parent.name}; one "
          f"`prefect server start` per database, one `mlflow server` (SQLite, 1 worker) for all; a Fashion-MNIST "
          f"champion; K supervise loops at once, one process each (OpenMP threads: cores / K), each over "
          f"{args.batches} clean batches of {args.batch_size} images, steps as sub-flows, alpha {ALPHA}\n")
    print("| database | streams at once | batches | completed | lost streams | alarms | batches/s | p50 latency (s) | p95 latency (s) | max (s) |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.database} | {r.streams} | {r.batches} | {r.completed} | {r.lost} | {r.alarms} | {r.batches_per_s:.2f} | "
              f"{r.p50_s:.2f} | {r.p95_s:.2f} | {r.max_s:.2f} |")
    for r in rows:
        for problem in r.problems:
            print(f"- {r.database} K={r.streams}: {problem[:300]}")


if __name__ == "__main__":
    main()

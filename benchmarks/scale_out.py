"""Scale-out: batches scored per second by the `score-batches` flow on this machine, one worker process against two.

One local Prefect server (SQLite) and one MLflow SQLite store; one Fashion-MNIST champion (a short training: the
cost of scoring does not depend on how well the champion is trained); a backlog of `--batches` batches of
`--batch-size` images, the second half corrupted. Every mode scores the whole backlog through `score_batches_flow`
(flows/score.py), once to warm up (each worker loads the champion's detector once) and then `--repeats` times:

- `threads=1`: one task at a time in this process (torch's own intra-op threads still use every core);
- `threads=2`: two tasks at a time in this process;
- `dask 1` / `dask 2`: a local Dask cluster of 1 or 2 worker processes (one thread each; Dask limits a worker's
  BLAS/OpenMP threads to one), started before the timing, as a long-running cluster would be.

Reported per mode: the median wall time of one backlog (flow run, task runs, the verdict artifact included),
batches per second, and the speed-up against one Dask worker. Every mode must give the same verdicts, else the
benchmark stops.

Run: `python -m benchmarks.scale_out [--batches 24] [--batch-size 200] [--repeats 3]`. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModeRow:
    mode: str
    seconds: float
    batches: int
    verdicts: tuple[tuple[str, bool, float], ...]

    @property
    def batches_per_s(self) -> float:
        return self.batches / self.seconds


def _time_mode(name: str, paths: list[str], repeats: int, **runner: object) -> ModeRow:
    from flows.score import score_batches_flow

    first = score_batches_flow(batch_paths=paths, **runner)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        score_batches_flow(batch_paths=paths, **runner)
        times.append(time.perf_counter() - start)
    verdicts = tuple((v["batch_id"], bool(v["is_drift"]), round(float(v["p_value"]), 6)) for v in first)
    row = ModeRow(name, statistics.median(times), len(paths), verdicts)
    print(f"{name}: {row.seconds:.1f} s per backlog, {row.batches_per_s:.2f} batches/s", flush=True)
    return row


@contextlib.contextmanager
def _dask_cluster(workers: int):
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                           silence_logs=logging.CRITICAL)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=24, help="batches in the backlog")
    parser.add_argument("--batch-size", type=int, default=200, help="images per batch (Fashion-MNIST, 28x28)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the backlog per mode")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="scanflow-scale-out-"))
    os.environ.update(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", SCANFLOW_MODEL_NAME="scale-out-classifier",
                      SCANFLOW_EXPERIMENT="scale-out")
    import prefect
    import torch

    from benchmarks.load import prefect_server
    from flows.train import train_flow
    from scanflow.stream import make_stream
    from tests.flows.conftest import using_prefect_api

    with prefect_server("sqlite", work) as (api_url, _, auth_string), using_prefect_api(api_url, auth_string):
        batches = make_stream(work / "stream", "fashion-mnist", n_batches=args.batches, batch_size=args.batch_size,
                              drift_at=args.batches // 2, corruption="shot_noise", severity=3)
        train_flow(dataset="fashion-mnist", epochs=1, autoencoder_epochs=1)
        paths = [str(batch.path) for batch in batches]
        rows = [_time_mode("threads=1", paths, args.repeats, threads=1),
                _time_mode("threads=2", paths, args.repeats, threads=2)]
        for workers in (1, 2):
            with _dask_cluster(workers) as address:
                rows.append(_time_mode(f"dask {workers}", paths, args.repeats, dask_address=address))

    differing = [row.mode for row in rows if row.verdicts != rows[0].verdicts]
    if differing:
        raise SystemExit(f"the verdicts of {', '.join(differing)} differ from threads=1's: the fan-out changed a result")
    one_worker = next(row for row in rows if row.mode == "dask 1")
    print(f"\nScale-out, {platform.machine()} with {os.cpu_count()} cores, Python {platform.python_version()}, prefect "
          f"{prefect.__version__}, torch {torch.__version__} ({torch.get_num_threads()} intra-op threads here); "
          f"one Prefect server (SQLite), one MLflow SQLite store; a Fashion-MNIST champion; a backlog of {args.batches} "
          f"batches of {args.batch_size} images (half shot noise at severity 3); median of {args.repeats} passes after a "
          "warm-up; every mode gave the same verdicts\n")
    print("| mode | seconds per backlog | batches/s | speed-up against 1 Dask worker |\n|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row.mode} | {row.seconds:.1f} | {row.batches_per_s:.2f} | {one_worker.seconds / row.seconds:.2f} x |")


if __name__ == "__main__":
    main()

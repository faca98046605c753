"""The loop's time per clean batch, by phase: how much is the models' work and how much the orchestration around it.

One local Prefect server (SQLite) and one MLflow SQLite store in a temporary folder; a Fashion-MNIST champion (1
classifier and 1 autoencoder epoch: the models' cost does not depend on how well they are trained); one warm-up
loop of 2 clean batches, then two supervise loops (`supervise_flow`, the oracle as the person) over `--batches` clean
batches of `--batch-size` images: the steps as sub-flows (the default), then inline (`inline_steps`). Timed from the
Prefect server's own records:

- per batch: from the start of its predict step to the start of the next batch's (the loop's cadence), both ways;
- per sub-flow (predict, detect): its wall time, the time inside its task runs, by task, and the rest (flow-run
  creation, result persistence, logs, artifacts and events outside tasks);
- the models' work on the same batches in this process: the served classifier's predict (as the predict flow
  calls it) and `scanflow.detect.detect_batch` (as the detect flow calls it).

Run: `python -m benchmarks.loop [--batches 6] [--batch-size 200] [--profile FILE]` (cProfile of the sub-flow loop). Prints
Markdown tables.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import re
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


#: The loops' false-alarm rate: below the smallest p-value a null of 500 windows gives (1/501), so no clean batch
#: alarms by chance, nobody is asked, and both timed loops run the same champion.
ALPHA = 0.001


def _seconds(start, end) -> float:
    return (end - start).total_seconds()


def _task_kind(name: str) -> str:
    """A task run's task name without Prefect's run suffix ('predict-3f2' -> 'predict')."""
    return re.sub(r"-[0-9a-f]{3}$", "", name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6, help="clean batches in the timed loop (at least 2)")
    parser.add_argument("--batch-size", type=int, default=200, help="images per batch (Fashion-MNIST, 28x28)")
    parser.add_argument("--profile", help="also write cProfile statistics of the timed loop to this file (pstats format)")
    args = parser.parse_args()
    if args.batches < 2:
        raise SystemExit("--batches must be at least 2: the cadence is measured between batches")

    work = Path(tempfile.mkdtemp(prefix="scanflow-loop-"))
    os.environ.update(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", SCANFLOW_MODEL_NAME="loop-classifier",
                      SCANFLOW_EXPERIMENT="loop")
    import numpy as np
    import prefect
    import torch
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    from benchmarks.load import prefect_server
    from flows.settings import tracking_config
    from flows.supervise import supervise_flow
    from flows.train import train_flow
    from scanflow import tracking as scanflow_tracking
    from scanflow.detect import detect_batch
    from scanflow.stream import make_stream, read_stream
    from tests.flows.conftest import using_prefect_api

    def timed_loop(folder: Path, inline: bool) -> tuple[dict, float, list, list, dict]:
        make_stream(folder, "fashion-mnist", n_batches=args.batches, batch_size=args.batch_size, drift_at=args.batches)
        profiler = cProfile.Profile() if args.profile and not inline else None
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        result = supervise_flow(stream_dir=str(folder), human="oracle", alpha=ALPHA, inline_steps=inline)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        wall = time.perf_counter() - start
        parent = result["prefect_flow_run_id"]
        with get_client(sync_client=True) as client:
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))
            flows = {f.id: f.name for f in client.read_flows()}
            runs = [run.id for run in children] if not inline else [parent]
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=runs)))
        return result, wall, children, tasks, flows

    with prefect_server("sqlite", work) as (api_url, _, auth_string), using_prefect_api(api_url, auth_string):
        make_stream(work / "warm", "fashion-mnist", n_batches=2, batch_size=args.batch_size, drift_at=2, seed=1)
        train_flow(dataset="fashion-mnist", epochs=1, autoencoder_epochs=1)
        supervise_flow(stream_dir=str(work / "warm"), human="oracle", alpha=ALPHA)
        result, loop_wall, children, tasks, flows = timed_loop(work / "stream", inline=False)
        inline_result, inline_wall, _, inline_tasks, _ = timed_loop(work / "stream-inline", inline=True)

        config = tracking_config(None)
        served = scanflow_tracking.load_served_model(config)
        detector, version = scanflow_tracking.load_detector(config)
        predict_s, detect_s = [], []
        for batch in read_stream(work / "stream"):
            images = np.load(batch.path)
            start = time.perf_counter()
            served.model.predict(images)
            predict_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            detect_batch(detector, torch.from_numpy(images), batch.batch_id, version)
            detect_s.append(time.perf_counter() - start)

    if any(row["drift"] != "no" for row in result["batches"] + inline_result["batches"]):
        raise SystemExit("a clean batch alarmed although alpha is below the smallest p-value: the timing is not of clean batches")
    by_kind: dict[str, list] = defaultdict(list)
    for run in sorted(children, key=lambda r: r.start_time):
        by_kind[flows[run.flow_id]].append(run)
    starts = [run.start_time for run in by_kind["predict"]]
    cadence = [_seconds(a, b) for a, b in zip(starts, starts[1:])]
    # Inline, a batch starts with its predict step's first task: load_served_model.
    inline_starts = sorted(t.start_time for t in inline_tasks if _task_kind(t.name) == "load_served_model")
    inline_cadence = [_seconds(a, b) for a, b in zip(inline_starts, inline_starts[1:])]
    task_time: dict[str, list[float]] = defaultdict(list)
    inside: dict[Any, float] = defaultdict(float)
    for task in tasks:
        if task.start_time and task.end_time:
            task_time[_task_kind(task.name)].append(_seconds(task.start_time, task.end_time))
            inside[task.flow_run_id] += _seconds(task.start_time, task.end_time)

    median = statistics.median
    model_s = median(predict_s) + median(detect_s)
    loop_s, inline_s = median(cadence), median(inline_cadence)
    print(f"\nLoop, {platform.machine()} with {os.cpu_count()} cores, Python {platform.python_version()}, prefect "
          f"{prefect.__version__}, torch {torch.__version__}; one Prefect server (SQLite), one MLflow SQLite store; a "
          f"Fashion-MNIST champion; a 2-batch warm-up loop, then two loops over {args.batches} clean batches of "
          f"{args.batch_size} images, steps as sub-flows then inline; alpha {ALPHA} (no clean batch can alarm, so both "
          f"loops run the same champion); medians over batches; the timed loops took {loop_wall:.1f} s and {inline_wall:.1f} s\n")
    print("| per batch | seconds | share of the sub-flow cadence |\n|---|---:|---:|")
    rows = [("the loop's cadence, steps as sub-flows (one batch's start to the next)", loop_s)]
    for kind in ("predict", "detect"):
        runs = by_kind[kind]
        wall = median([_seconds(r.start_time, r.end_time) for r in runs])
        tasks_in = median([inside[r.id] for r in runs])
        rows += [(f"{kind} sub-flow, wall", wall), ("- inside its task runs", tasks_in), ("- outside them", wall - tasks_in)]
    in_flows = sum(median([_seconds(r.start_time, r.end_time) for r in by_kind[k]]) for k in ("predict", "detect"))
    rows += [("between the sub-flows (the parent's own work, flow-run creation)", loop_s - in_flows),
             ("the loop's cadence, inline steps (`--inline-steps`)", inline_s),
             ("models' work (served predict + detect_batch, this process)", model_s)]
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {seconds / loop_s:.0%} |")
    print(f"\nOrchestration / models' work: {(loop_s - model_s) / model_s:.2f} x as sub-flows, {(inline_s - model_s) / model_s:.2f} x "
          f"inline (the issue's target: <= 1 x); inline / sub-flows: {inline_s / loop_s:.2f} x; served predict "
          f"{median(predict_s):.3f} s, detect_batch {median(detect_s):.3f} s\n")
    print("| task (sub-flow loop) | runs | median (s) | total (s) |\n|---|---:|---:|---:|")
    for kind, times in sorted(task_time.items(), key=lambda item: -sum(item[1])):
        print(f"| {kind} | {len(times)} | {median(times):.3f} | {sum(times):.2f} |")

if __name__ == "__main__":
    main()

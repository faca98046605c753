"""Concurrent flow runs against one Prefect server, each checked against what it alone should give.

Detect runs: each on a batch of its own (half clean, half corrupted, every batch other images or another corruption,
so every verdict differs), checked against the verdict the champion's detector gives that batch without Prefect,
and against the MLflow run it logged. Supervise loops: each on a one-batch drifted stream of its own, all paused on
their decision forms at once, then answered one by one, each with a decision of its own (its own labels and note),
checked in the loop's result and in the decision the improve flow logged to MLflow.

A run is *lost* when its caller got no result or the server does not hold it COMPLETED (exactly once); it is *mixed
up* when its result, its MLflow run or its decision is another run's. Shared by tests/flows/test_load.py and
benchmarks/load.py; the caller points Prefect (PREFECT_API_URL and the settings context) and MLflow (the
environment: `TrackingConfig.from_env`) at the servers and the champion to use.
"""

from __future__ import annotations

import json
import math
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scanflow.config import TrackingConfig
from scanflow.corruptions import corrupt
from scanflow.data import load_batch_file, load_train_test
from scanflow.detect import detect_batch
from scanflow.stream import MANIFEST, StreamBatch
from scanflow.tracking import load_detector, mlflow_client

#: Corruptions that every digits batch of 20+ images drifts under at severity 5; batches and loops cycle through them.
CORRUPTIONS = ("impulse_noise", "shot_noise", "stripe", "brightness", "fog")
SEVERITY = 5
#: The detect results compared with the detector's own verdict (the floats to a relative 1e-4: torch's sums may be
#: ordered differently under other thread counts; a mix-up differs by far more).
VERDICT_KEYS = ("batch_id", "model_version", "is_drift", "statistic", "p_value", "n_critical", "selected_indices")
#: The action every loop is answered with: it leaves the champion as it is, so concurrent detect runs keep one
#: expected verdict each; the loops' answers differ by their labels and notes.
LOOP_ACTION = "ignore"


@dataclass(frozen=True)
class LoadBatch:
    """A batch file of the load, and the verdict the champion's detector gives it (`VERDICT_KEYS`)."""

    batch_id: str
    path: str
    corruption: str | None
    expected: dict[str, Any]


@dataclass(frozen=True)
class RunRecord:
    """One flow run as its caller saw it: when it was called (time.perf_counter) and seconds to its return, the
    run's id (None when the call failed before the server made it), its result, or the error it ended with."""

    name: str
    key: str
    started_s: float
    seconds: float
    flow_run_id: str | None
    result: dict[str, Any] | None
    error: str | None


@dataclass
class Check:
    """What went wrong, one line per run: lost (no result, or not COMPLETED exactly once on the server) or mixed up."""

    lost: list[str] = field(default_factory=list)
    mixed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.lost and not self.mixed


def write_batches(folder: Path, prefix: str, n: int, size: int, budget: int, dataset: str = "digits", seed: int = 0) -> list[LoadBatch]:
    """`n` batches of `size` test images under `folder`, ids `<prefix>-NN`: even ones clean, odd ones corrupted
    (cycling through CORRUPTIONS at SEVERITY, a corruption seed per batch); consecutive batches take the next images
    of a seeded permutation, wrapping round the test split. Each carries the champion's own verdict on it."""
    _, test = load_train_test(dataset, seed=seed)
    if size > len(test):
        raise ValueError(f"batches of {size} images need a test split that large; {dataset} has {len(test)}")
    order = np.random.default_rng(seed).permutation(len(test))
    folder.mkdir(parents=True, exist_ok=True)
    detector, version = load_detector(TrackingConfig.from_env())
    batches = []
    for k in range(n):
        rows = np.take(order, np.arange(k * size, (k + 1) * size), mode="wrap")
        images = test.images[rows]
        corruption = CORRUPTIONS[(k // 2) % len(CORRUPTIONS)] if k % 2 else None
        if corruption:
            images = corrupt(images, corruption, SEVERITY, seed=seed + k)
        batch_id = f"{prefix}-{k:02d}"
        path = folder / f"{batch_id}.npy"
        np.save(path, images.numpy())
        batches.append(LoadBatch(batch_id, str(path), corruption, expected_verdict(detector, version, path, batch_id, budget)))
    return batches


def expected_verdict(detector: Any, model_version: str, path: Path, batch_id: str, budget: int) -> dict[str, Any]:
    """The `VERDICT_KEYS` of the detect flow's result on the batch at `path`, computed here without Prefect."""
    images = load_batch_file(path, detector.info)
    detection = detect_batch(detector, images, batch_id, model_version, budget, classes=detector.info.classes if detector.info else None)
    summary = detection.summary()
    return {key: summary[key] for key in VERDICT_KEYS}


def _same_verdict(got: dict[str, Any], expected: dict[str, Any]) -> bool:
    for key in VERDICT_KEYS:
        a, b = got.get(key), expected[key]
        if isinstance(b, float):
            if not isinstance(a, (int, float)) or not math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-9):
                return False
        elif isinstance(b, (list, tuple)):
            if not isinstance(a, (list, tuple)) or [int(x) for x in a] != [int(x) for x in b]:
                return False
        elif a != b:
            return False
    return True


def _concurrently(items: Sequence[Any], run: Callable[[Any], RunRecord]) -> tuple[list[RunRecord], float]:
    """`run` on every item, each in a thread of its own, all released at once; returns the records and the seconds
    from the release to the last return."""
    barrier = threading.Barrier(len(items) + 1)

    def released(item: Any) -> RunRecord:
        barrier.wait()
        return run(item)

    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        futures = [pool.submit(released, item) for item in items]
        barrier.wait()
        start = time.perf_counter()
        records = [future.result() for future in futures]
    return records, time.perf_counter() - start


def _call_flow(name: str, key: str, call: Callable[[], Any]) -> RunRecord:
    """Run a flow (`call` returns its final state) and record what its caller got."""
    start = time.perf_counter()
    flow_run_id = result = error = None
    try:
        state = call()
        flow_run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
        if state.is_completed():
            result = state.result()
        else:
            error = f"{state.name}: {state.message}"
    except Exception as caught:  # the client gave up on the server (e.g. HTTP 503 after its retries)
        error = f"{type(caught).__name__}: {caught}"
    return RunRecord(name, key, start, time.perf_counter() - start, flow_run_id, result, error)


def run_detects(batches: Sequence[LoadBatch], run_prefix: str, budget: int) -> tuple[list[RunRecord], float]:
    """One detect flow run per batch, all at once (threads of this process), named `<run_prefix>-<batch_id>`;
    Evidently's report is off (it is off the hot path in the supervise loop too). Returns the records and the
    seconds from the release of the runs to the return of the last."""
    from flows.detect import detect_flow

    def one(batch: LoadBatch) -> RunRecord:
        name = f"{run_prefix}-{batch.batch_id}"
        return _call_flow(name, batch.batch_id, lambda: detect_flow.with_options(flow_run_name=name)(
            batch_path=batch.path, batch_id=batch.batch_id, budget=budget, report=False, return_state=True))

    return _concurrently(batches, one)


def server_states(names: Sequence[str]) -> dict[str, list[str]]:
    """The states (type names) of the flow runs the server holds under each of `names`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    states: dict[str, list[str]] = {name: [] for name in names}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=list(names))), limit=2 * len(names) + 10)
    for run in runs:
        states.setdefault(run.name, []).append(run.state.type.value if run.state else "NONE")
    return states


def _lost(record: RunRecord, states: dict[str, list[str]]) -> str | None:
    if record.error is not None or record.result is None:
        return f"{record.name}: {record.error or 'no result'}"
    if states.get(record.name) != ["COMPLETED"]:
        return f"{record.name}: the server holds {states.get(record.name) or 'no run'} under its name, not one COMPLETED run"
    return None


def check_detects(batches: Sequence[LoadBatch], records: Sequence[RunRecord]) -> Check:
    """Every detect run completed once, with its own batch's verdict and an MLflow run of its own that names both
    the batch and the flow run."""
    check = Check()
    states = server_states([record.name for record in records])
    client = mlflow_client(TrackingConfig.from_env().tracking_uri)
    expected = {batch.batch_id: batch.expected for batch in batches}
    seen_mlflow_runs: set[str] = set()
    for record in records:
        if (lost := _lost(record, states)) is not None:
            check.lost.append(lost)
            continue
        result = record.result.model_dump()  # a DetectionReport
        if not _same_verdict(result, expected[record.key]):
            got = {key: result.get(key) for key in VERDICT_KEYS}
            check.mixed.append(f"{record.name}: result {got} is not the verdict on {record.key} {expected[record.key]}")
            continue
        run_id = result["mlflow_run_id"]
        tags = client.get_run(run_id).data.tags
        if run_id in seen_mlflow_runs or tags.get("scanflow.batch_id") != record.key or tags.get("prefect.flow_run_id") != record.flow_run_id:
            check.mixed.append(f"{record.name}: MLflow run {run_id} (batch {tags.get('scanflow.batch_id')}, flow run "
                               f"{tags.get('prefect.flow_run_id')}) is not this run's ({record.key}, {record.flow_run_id})")
        seen_mlflow_runs.add(run_id)
    return check


# ---- Paused supervise loops -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loop:
    """A supervise loop of the load: its stream (one drifted batch whose id is `loop_id`), and the answer it is to
    get: `offset` picks its labels (`answer_labels`), `note` is unique to it."""

    loop_id: str
    stream_dir: str
    n_classes: int
    offset: int
    note: str

    def answer_labels(self, n_shown: int) -> list[int]:
        """This loop's labels for the `n_shown` samples of its form: (offset + position) mod n_classes."""
        return [(self.offset + position) % self.n_classes for position in range(n_shown)]


@dataclass(frozen=True)
class LoopTiming:
    """A loop's seconds from its start to its form's pause (the server's clock), when it was answered
    (time.perf_counter; None if it was not) and its run's record."""

    paused_after_s: float | None
    answered_s: float | None
    record: RunRecord

    @property
    def answer_to_done_s(self) -> float | None:
        """Seconds from the answer to the loop's return (improve, the report beside the form, the summary)."""
        return None if self.answered_s is None else self.record.started_s + self.record.seconds - self.answered_s


def write_loops(folder: Path, prefix: str, n: int, size: int, dataset: str = "digits", seed: int = 0) -> list[Loop]:
    """`n` one-batch streams under `folder`, each drifted with a corruption of its own (CORRUPTIONS at SEVERITY)
    on other test images, with the true labels beside the batch as `scanflow.stream` keeps them; loop ids
    `<prefix>-NN`. Loop k is to be answered with labels offset by 3k (distinct for 4 loops of 10 classes and more)."""
    _, test = load_train_test(dataset, seed=seed)
    order = np.random.default_rng(seed + 1).permutation(len(test))
    loops = []
    for k in range(n):
        loop_id = f"{prefix}-{k:02d}"
        stream = folder / loop_id
        (stream / "labels").mkdir(parents=True, exist_ok=True)
        rows = np.take(order, np.arange(k * size, (k + 1) * size), mode="wrap")
        corruption = CORRUPTIONS[k % len(CORRUPTIONS)]
        batch = StreamBatch(loop_id, str(stream / f"{loop_id}.npy"), corruption, SEVERITY)
        np.save(batch.path, corrupt(test.images[rows], corruption, SEVERITY, seed=seed + 100 + k).numpy())
        np.save(batch.labels_path, test.labels[rows].numpy())
        (stream / MANIFEST).write_text(json.dumps({"dataset": test.info.name, "batches": [asdict(batch)]}, indent=2))
        loops.append(Loop(loop_id, str(stream), test.info.n_classes, offset=3 * k, note=f"load answer for {loop_id} ({uuid.uuid4().hex[:8]})"))
    return loops


def run_loops(loops: Sequence[Loop], run_prefix: str, budget: int, pause_timeout_s: int = 900, wait_s: float = 600) -> tuple[list[LoopTiming], list[str]]:
    """Start every loop at once (`human="person"`, each asking about its drift even if it looks like a known shift),
    wait until all their decision forms are paused, then answer them in reverse order, each from a thread of its
    own, with its own decision (LOOP_ACTION, its labels, its note) through `resume_flow_run`, after checking that
    the form asks about the loop's own batch. Returns each loop's timing and record, and what went wrong while
    answering (a form that never paused or asked about another batch)."""
    from prefect import resume_flow_run
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from flows.supervise import form_answer, paused_child, supervise_flow
    from scanflow.supervision import DecisionRequest

    names = {loop.loop_id: f"{run_prefix}-{loop.loop_id}" for loop in loops}
    problems: list[str] = []

    def one(loop: Loop) -> RunRecord:
        name = names[loop.loop_id]
        return _call_flow(name, loop.loop_id, lambda: supervise_flow.with_options(flow_run_name=name)(
            stream_dir=loop.stream_dir, human="person", budget=budget, pause_timeout_s=pause_timeout_s,
            action_on_timeout="ignore", ask_known_shifts=True, return_state=True))

    paused_after: dict[str, float] = {}
    answered_at: dict[str, float] = {}
    children: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=len(loops)) as pool:
        futures = {loop.loop_id: pool.submit(one, loop) for loop in loops}
        deadline = time.monotonic() + wait_s
        for loop in loops:
            parent = None
            with get_client(sync_client=True) as client:
                while parent is None and time.monotonic() < deadline and not futures[loop.loop_id].done():
                    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[names[loop.loop_id]])))
                    parent = runs[0].id if runs else None
                    if parent is None:
                        time.sleep(0.5)
            if parent is None:
                problems.append(f"{names[loop.loop_id]}: never started on the server")
                continue
            try:
                child = children[loop.loop_id] = paused_child(parent, timeout_s=max(1.0, deadline - time.monotonic()))
                with get_client(sync_client=True) as client:
                    started, paused = client.read_flow_run(parent).start_time, client.read_flow_run(child).state.timestamp
                paused_after[loop.loop_id] = (paused - started).total_seconds()
            except TimeoutError:
                problems.append(f"{names[loop.loop_id]}: its decision form never paused")
        with get_client(sync_client=True) as client:
            still_paused = sum(client.read_flow_run(child).state.is_paused() for child in children.values())
        if still_paused != len(loops):
            problems.append(f"{still_paused} of {len(loops)} decision forms were paused at once")

        def answer(loop: Loop) -> None:
            child = children[loop.loop_id]
            with get_client(sync_client=True) as client:
                request = DecisionRequest.model_validate(client.read_flow_run(child).parameters["request"])
            if request.batch_id != loop.loop_id:
                problems.append(f"{names[loop.loop_id]}: its form asks about batch {request.batch_id}")
                return
            labels = loop.answer_labels(len(request.guesses))
            resume_flow_run(child, run_input=form_answer(request, LOOP_ACTION, labels, loop.note))
            answered_at[loop.loop_id] = time.perf_counter()

        answering = [threading.Thread(target=answer, args=(loop,)) for loop in reversed(loops) if loop.loop_id in children]
        for thread in answering:
            thread.start()
        for thread in answering:
            thread.join()
        records = {loop_id: future.result() for loop_id, future in futures.items()}
    timings = [LoopTiming(paused_after.get(loop.loop_id), answered_at.get(loop.loop_id), records[loop.loop_id]) for loop in loops]
    return timings, problems


def check_loops(loops: Sequence[Loop], timings: Sequence[LoopTiming]) -> Check:
    """Every loop completed once, its row is its own batch decided by the human with LOOP_ACTION, and the decision
    the improve flow logged for its batch carries exactly its labels and note."""
    check = Check()
    records = [timing.record for timing in timings]
    states = server_states([record.name for record in records])
    config = TrackingConfig.from_env()
    client = mlflow_client(config.tracking_uri)
    experiment = client.get_experiment_by_name(config.experiment_name)
    for loop, record in zip(loops, records):
        if (lost := _lost(record, states)) is not None:
            check.lost.append(lost)
            continue
        rows = record.result["batches"]
        if [(r["batch"], r["decision"], r["decided_by"]) for r in rows] != [(loop.loop_id, LOOP_ACTION, "human")]:
            check.mixed.append(f"{record.name}: rows {rows} are not its batch {loop.loop_id} decided '{LOOP_ACTION}' by the human")
            continue
        runs = client.search_runs([experiment.experiment_id], filter_string=(
            f"tags.`scanflow.kind` = 'improve' AND tags.`scanflow.batch_id` = '{loop.loop_id}'"))
        if len(runs) != 1:
            check.mixed.append(f"{record.name}: {len(runs)} improve runs in MLflow for batch {loop.loop_id}, not one")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            decision = json.loads(Path(client.download_artifacts(runs[0].info.run_id, "decision.json", tmp)).read_text())
        wanted = {"action": LOOP_ACTION, "note": loop.note, "labels": loop.answer_labels(len(decision["shown_indices"]))}
        got = {key: decision.get(key) for key in wanted}
        if got != wanted:
            check.mixed.append(f"{record.name}: MLflow holds the decision {got}, not its answer {wanted}")
    return check


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (linear interpolation) of `values`; NaN when there are none."""
    return float(np.percentile(values, q)) if values else float("nan")


def forget_known_shifts() -> int:
    """Remove every known shift of the champion (the decisions the loops made it remember), so a later detect run
    does the work an earlier one did; returns how many there were."""
    from scanflow.tracking import KNOWN_SHIFT_TAG_PREFIX, champion_version, version_tags

    config = TrackingConfig.from_env()
    version = champion_version(config)
    keys = [key for key in version_tags(config, version) if key.startswith(KNOWN_SHIFT_TAG_PREFIX)]
    client = mlflow_client(config.tracking_uri)
    for key in keys:
        client.delete_model_version_tag(config.classifier_name, version, key)
    return len(keys)

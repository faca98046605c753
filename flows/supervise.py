"""The supervise flow: the loop over a production stream. Per batch: predict, detect; on a drift nobody decided about yet, show the evidence
and pause for a person's decision (in a child flow, so a timeout leaves the loop healthy), then improve.

Run it as `scanflow supervise`, `python flows/supervise.py`, or as the `supervise` deployment. A person answers in
the Prefect UI (each critical sample beside a choice of class names that starts at the model's guess, marked as a
guess), with `scanflow answer RUN_ID ...`, or with `resume_flow_run`; `human="oracle"` or `"policy"` answers the
same pause from a helper thread, so unattended runs take the path a person takes. Untouched guesses are not labels.
"""

from __future__ import annotations

import base64
import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from prefect import flow, pause_flow_run, resume_flow_run, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.input import RunInput
from prefect.runtime import flow_run
from pydantic import Field, create_model

from flows.detect import detect_flow, report_flow
from flows.improve import improve_flow
from flows.predict import predict_flow
from flows.retries import IO_RETRIES
from flows.train import train_flow
from flows.settings import shared_batch, storage_store, supervision_settings, tracking_config
from flows.steps import Steps, in_process
from scanflow import tracking as scanflow_tracking
from scanflow.config import TrackingConfig
from scanflow.detect import DetectionReport
from scanflow.improve import ImprovementReport
from scanflow.data import DatasetInfo, default_cache_dir
from scanflow.errors import ScanflowError
from scanflow.human import (
    ACTIONS,
    Decision,
    InvalidDecisionError,
    OracleHuman,
    PolicyHuman,
    choices_for,
    labels_from_choices,
    sample_choices,
    validate_labels,
)
from scanflow.orphans import Owner, this_process
from scanflow.progress import PROGRESS, OwnerRun, RecordedDecision, read_progress, record_decision, record_owner, record_row, registry_key
from scanflow.plots import figure_bytes, stream_figure
from scanflow.storage import absolute_location
from scanflow.stream import StreamBatch, image_stream, open_stream, stream_state_dir
from scanflow.tags import KIND_TAG
from scanflow.supervision import (
    DecisionRequest,
    SupervisionSettings,
    batch_row,
    stream_metrics,
    summary_markdown,
    with_decision,
    with_known_shift,
)


def sample_field(position: int) -> str:
    """The decision form's field of the critical sample at `position` (0-based, in the order shown)."""
    return f"sample_{position + 1:02d}"


def decision_form(request: DecisionRequest, actions: tuple[str, ...] | None = None) -> type[RunInput]:
    """The pause form for one batch. The verdict and recommendation head the action field; each critical sample is
    a field of its own whose description shows the image (at least 84 px tall) above a choice of class names that
    starts at the model's guess, marked as a guess (`scanflow.human.sample_choices`). The choices are enums in the
    schema, so the Prefect server itself refuses an unknown action or class and keeps the run paused.

    Each field carries its own default: `RunInput.with_initial_data` re-declares the fields it fills and drops
    their constraints (prefect 3.8.8). Per-field descriptions stay visible where the form's own description
    collapses to zero height (the Resume dialog, whenever the fields are taller than the dialog).
    """
    actions = actions or request.actions
    fields: dict[str, Any] = {
        "action": (Literal[actions], Field(default=request.recommended if request.recommended in actions else actions[0],
                                           title="Action", description=request.heading_markdown())),
    }
    for position, guess in enumerate(request.guesses):
        choices = sample_choices(request.classes, guess)
        fields[sample_field(position)] = (Literal[choices], Field(default=choices[0], title=f"Sample #{position + 1}",
                                                                  description=request.sample_markdown(position)))
    report = (f" Evidently's report on this batch is being attached to MLflow run `{request.mlflow_run_id}` while this form "
              "waits (Artifacts > evidently_report.html)." if request.mlflow_run_id else "")
    fields["note"] = (str, Field(default="", title="Note", description="why (kept in MLflow with the decision)." + report))
    model = create_model("Decision", __base__=RunInput, **fields)
    model._description = request.heading_markdown()
    return model


def labels_of(answer: Any, request: DecisionRequest) -> list[int | None]:
    """The labels a submitted form gives, per sample shown: a picked class, or None (untouched guess, not sure)."""
    choices = [getattr(answer, sample_field(k)) for k in range(len(request.guesses))]
    return list(labels_from_choices(choices, request.classes))


def form_answer(request: DecisionRequest, action: str, labels: Sequence[int | None] | None, note: str = "") -> dict[str, Any]:
    """The `run_input` that answers `request`'s form with `labels` (None, or a None entry: leave the guess untouched)."""
    given = list(labels) if labels else [None] * len(request.guesses)
    choices = choices_for(given, request.classes, request.guesses)
    return {"action": action, "note": note, **{sample_field(k): choice for k, choice in enumerate(choices)}}


@flow(name="ask-human", log_prints=True)
def ask_human(request: DecisionRequest, timeout_s: int, poll_interval_s: int = 2) -> dict:
    """Pause until a person (or a simulated one) answers the decision form for `request`; returns the action, the
    labels the person gave (None where they gave none) and the note."""
    form = decision_form(request)
    print(f"DECISION WAITING for batch {request.batch_id}: open {run_url(flow_run.id)} and press Resume "
          f"(or `scanflow answer {flow_run.id} --action ...`); timeout {timeout_s} s")
    answer = pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=poll_interval_s)
    return {"action": answer.action, "labels": labels_of(answer, request), "note": answer.note}


def run_url(flow_run_id: Any) -> str:
    """The Prefect UI page of a flow run (from PREFECT_UI_URL, derived from PREFECT_API_URL by Prefect)."""
    from prefect.settings import PREFECT_UI_URL

    return f"{(PREFECT_UI_URL.value() or 'http://127.0.0.1:4200').rstrip('/')}/runs/flow-run/{flow_run_id}"


def paused_child(parent_id: Any, timeout_s: float = 120.0) -> Any:
    """The id of the paused `ask-human` child of flow run `parent_id`, once it is paused and its form's schema is
    saved: Prefect saves the schema just after the run turns PAUSED, and an answer sent in between is refused with
    "Run input schema not found" (seen under load)."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])),
            ))
            if runs and _form_ready(client, runs[0]):
                return runs[0].id
            time.sleep(0.5)
    raise TimeoutError(f"no paused decision form under flow run {parent_id} within {timeout_s:.0f} s")


def _form_ready(client: Any, run: Any) -> bool:
    keyset = run.state.state_details.run_input_keyset or {}
    if "schema" not in keyset:
        return True
    try:
        client.read_flow_run_input(run.id, keyset["schema"])
    except (ObjectNotFound, httpx.HTTPStatusError):
        return False
    return True


def answer_when_paused(parent_id: Any, decision: Decision, request: DecisionRequest) -> threading.Thread:
    """Answer the next pause under `parent_id` with `decision`, through `resume_flow_run` (the door a person uses);
    samples the decision has no label for are left at their untouched guess."""
    def run() -> None:
        child = paused_child(parent_id)
        resume_flow_run(child, run_input=form_answer(request, decision.action, decision.labels, decision.note))

    thread = threading.Thread(target=run, name="simulated-human", daemon=True)
    thread.start()
    return thread


def announce_waiting(parent_id: Any, batch_id: str) -> threading.Thread:
    """Once the decision form under `parent_id` is paused, put a link to it on the parent run: a `decision-waiting`
    Markdown artifact on the supervise run, so the run that shows "Running" says what it waits for."""
    def run() -> None:
        with contextlib.suppress(TimeoutError):
            child = paused_child(parent_id, timeout_s=600)
            text = (f"# Decision waiting: batch {batch_id}\n\nOpen [the paused run]({run_url(child)}), press **Resume**, "
                    f"label the samples and choose an action; or `scanflow answer {child} --action ...` "
                    "(`scanflow pending` lists every decision waiting).")
            with get_client(sync_client=True) as client:
                client.create_artifact(ArtifactCreate(key="decision-waiting", type="markdown", data=text,
                                                      description=f"batch {batch_id} waits for a person", flow_run_id=parent_id))

    thread = threading.Thread(target=run, name="decision-waiting", daemon=True)
    thread.start()
    return thread


def answer_paused_run(run_id: str, action: str, labels: str | Sequence[Any] | None = None, note: str = "") -> str:
    """Resume the paused decision form of `run_id` (a supervise run or its paused ask-human child) after printing
    what it asks (summary, table, the path of the samples' grid PNG). `labels`: one per sample shown, in order, a
    class index or "?" (not labelled); None labels nothing. Raises ScanflowError on a bad id or answer."""
    from uuid import UUID

    from scanflow.errors import ScanflowError

    try:
        run_uuid = UUID(str(run_id))
    except ValueError:
        raise ScanflowError(f"{run_id!r} is not a flow run id (a UUID, shown in the Prefect UI and by `scanflow pending`)") from None
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_uuid)
        try:
            target = run.id if run.state and run.state.is_paused() else paused_child(run.id, timeout_s=5)
        except TimeoutError:
            raise ScanflowError(f"flow run {run_id} is {run.state.name if run.state else 'unknown'}, not waiting for a "
                                "decision: `scanflow pending` lists the decisions waiting") from None
        paused = client.read_flow_run(target)
    request = DecisionRequest.model_validate(paused.parameters["request"])
    given = validate_labels(labels, len(request.guesses), len(request.classes)) if labels else None
    if action not in ACTIONS:
        raise InvalidDecisionError(f"unknown action {action!r}: choose one of {', '.join(ACTIONS)}")
    request.check_offered(action)
    grid = request.save_grid(Path(tempfile.gettempdir()) / f"scanflow-{request.batch_id}-critical.png")
    print(f"{request.summary_line()}\ncritical samples: {grid}\n{request.table()}")
    try:
        resume_flow_run(target, run_input=form_answer(request, action, given, note))
    except Exception as error:
        raise ScanflowError(f"the server refused the answer, the run stays paused: {error}") from error
    n_given = sum(label is not None for label in given or ())
    return f"answered flow run {target}: {action} with {n_given} of {len(request.guesses)} samples labelled"


def respond(batch: StreamBatch, path: str, detection: DetectionReport, human: str, settings: SupervisionSettings, steps: Steps, seed: int = 0,
            recorded: RecordedDecision | None = None, on_decision: Callable[[RecordedDecision], None] | None = None) -> ImprovementReport:
    """On a drifted batch: pause for a decision (answered by a person, or by the simulated `human` through the
    same form), run the timeout action when nobody answers, then improve (the steps read the batch at `path`).
    Only labels a person (or the oracle standing in for one) gave reach the improve flow. Returns its outcome.

    `recorded`: a decision given before a restart: it is carried out without asking again, unless the champion it
    was given against was replaced since (its improvement promoted a challenger already: nothing is done twice).
    `on_decision` receives a new decision before it is carried out (the supervise loop keeps it in progress.json)."""
    if recorded is not None:
        return carry_out(batch, path, recorded, settings, steps, seed)
    request = DecisionRequest.from_detection(detection)
    if human != "person":
        decider = OracleHuman(batch.true_labels()) if human == "oracle" else PolicyHuman()
        decision = decider.decide(request.recommended, request.shown, request.actions)
        request.check_offered(decision.action)  # the form would refuse it, and the pause wait until its timeout
        answer_when_paused(flow_run.id, decision, request)
    else:
        announce_waiting(flow_run.id, batch.batch_id)
    report = evidently_report_beside.submit(steps, path, detection.mlflow_run_id, flow_run.id if human == "person" else None)
    state = in_process(ask_human.with_options(flow_run_name=f"decide-{batch.batch_id}"), request, settings.pause_timeout_s, return_state=True)
    if state.is_completed():
        answer = state.result()
        decided_by = "human" if human == "person" else human
    else:
        action = request.offered_or_ignore(settings.action_on_timeout)
        print(f"batch {batch.batch_id}: no answer within {settings.pause_timeout_s} s; the policy's default '{action}' runs"
              + (f" (not '{settings.action_on_timeout}': {request.actions_note})" if action != settings.action_on_timeout else ""))
        answer, decided_by = {"action": action, "labels": None, "note": "pause timed out"}, "timeout"
    decision = RecordedDecision(action=answer["action"], labels=answer["labels"], note=answer["note"], decided_by=decided_by,
                                shown=list(request.shown), champion_version=detection.model_version,
                                drift=detection.model_dump(include={"statistic", "p_value", "threshold", "n_critical"}))
    if on_decision is not None:
        on_decision(decision)
    improvement = carry_out(batch, path, decision, settings, steps, seed, check_champion=False)
    report.wait()
    if not report.state.is_completed():
        print(f"batch {batch.batch_id}: the Evidently report failed ({report.state.message}); the decision stands")
    return improvement


def carry_out(batch: StreamBatch, path: str, decision: RecordedDecision, settings: SupervisionSettings, steps: Steps, seed: int,
              check_champion: bool = True) -> ImprovementReport:
    """Run the improve flow on `decision`; with `check_champion`, first make sure it was not carried out already
    (the champion it was given against is still the champion), else report it as done."""
    if check_champion:
        champion = current_champion(tracking_config(steps.blocks["tracking"]))
        if champion != decision.champion_version:
            print(f"batch {batch.batch_id}: the decision given before a restart ({decision.action}) was carried out already: "
                  f"v{champion} replaced v{decision.champion_version}")
            return ImprovementReport(batch_id=batch.batch_id, action=decision.action, decided_by=decision.decided_by, promoted=True,
                                     champion_version=decision.champion_version, challenger_version=champion,
                                     reason="carried out before the supervise run restarted")
        print(f"batch {batch.batch_id}: carrying out the decision given before a restart ({decision.action}, by {decision.decided_by})")
    return steps.run(improve_flow, batch_path=path, shown_indices=list(decision.shown), action=decision.action,
                     labels=decision.labels, note=decision.note, decided_by=decision.decided_by, batch_id=batch.batch_id,
                     drift=decision.drift, promotion_margin=settings.promotion_margin, seed=seed,
                     steps=settings.improve_steps(decision.action))


def end_abandoned_run(owner: OwnerRun | None, current_run_id: Any) -> dict[str, RecordedDecision]:
    """When the supervise run that last worked on a stream died with its process (killed), mark it and its unfinished
    sub-flow runs CRASHED on the Prefect server (a paused decision form of a dead loop is no longer listed as
    waiting), and return the answers given to its forms in the meantime, by batch id."""
    if owner is None or str(owner.flow_run_id) == str(current_run_id) or not Owner(owner.host, owner.pid, owner.start_time).is_gone():
        return {}
    from uuid import UUID

    from prefect.states import Crashed

    message = f"its process {owner.pid} on {owner.host} is gone; the stream was taken up by flow run {current_run_id}"
    answers: dict[str, RecordedDecision] = {}
    with get_client(sync_client=True) as client:
        parent = UUID(owner.flow_run_id)
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))
        for run in [*children, client.read_flow_run(parent)]:
            if run.name.startswith("decide-") and "request" in run.parameters:
                answer = _given_answer(client, run)
                if answer is not None:
                    answers[DecisionRequest.model_validate(run.parameters["request"]).batch_id] = answer
            if run.state is not None and not run.state.is_final():
                client.set_flow_run_state(run.id, Crashed(message=message), force=True)
    return answers


def _given_answer(client: Any, run: Any) -> RecordedDecision | None:
    """The answer a person gave to the decision form of `run` (a `decide-*` ask-human run), None when none was."""
    from prefect.input.run_input import keyset_from_base_key

    # A resumed run's state no longer carries the keyset; ask-human pauses once, so its keys are those of pause 1.
    keyset = (run.state.state_details.run_input_keyset if run.state else None) or keyset_from_base_key("paused-1")
    try:
        raw = client.read_flow_run_input(run.id, keyset["response"])
    except (ObjectNotFound, httpx.HTTPStatusError):
        return None
    request = DecisionRequest.model_validate(run.parameters["request"])
    answer = decision_form(request).model_validate_json(raw)
    return RecordedDecision(action=answer.action, labels=labels_of(answer, request), note=answer.note, decided_by="human",
                            shown=list(request.shown), champion_version=request.model_version,
                            drift={"statistic": request.statistic, "p_value": request.p_value, "threshold": request.threshold,
                                   "n_critical": request.n_critical})


@task(cache_policy=NO_CACHE)
def evidently_report_beside(steps: Steps, batch_path: str, mlflow_run_id: str, wait_for_form_of: Any = None) -> str:
    """The drift-report step, submitted to the task runner so it runs while the decision form waits. With
    `wait_for_form_of` (the supervise run whose form a person will open) it starts once that form is up: its
    seconds of CPU would otherwise delay the form on two cores."""
    if wait_for_form_of is not None:
        with contextlib.suppress(TimeoutError):
            paused_child(wait_for_form_of, timeout_s=120)
    return steps.run(report_flow, batch_path=batch_path, mlflow_run_id=mlflow_run_id)


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def current_champion(config: TrackingConfig) -> str | None:
    """The champion's version, None when there is none yet (a read from MLflow, retried when it fails to answer)."""
    return scanflow_tracking.champion_version_or_none(config)


@flow(name="respond-to-drift", log_prints=True, persist_result=True, result_serializer="json")
def respond_flow(
    batch_path: str,
    batch_id: str | None = None,
    human: Literal["person", "oracle", "policy"] = "person",
    policy: str | None = None,
    tracking: str | None = None,
    storage: str | None = None,
    step_deployments: str | None = None,
    seed: int = 0,
) -> dict:
    """React to a `scanflow.drift.detected` event (the automation in infra/prefect.yaml starts this deployment with
    the event's batch): re-test the batch against the current champion, and if it still drifts with a shift nobody
    decided about yet, pause for a decision and improve. `human="oracle"` needs the true labels beside the batch (`labels/<batch_id>.npy`, as a stream has)."""
    settings = supervision_settings(policy)
    steps = Steps(step_deployments, tracking, storage)
    batch = StreamBatch(batch_id=batch_id or Path(batch_path).stem, path=absolute_location(batch_path), corruption=None, severity=None)
    detection = steps.run(detect_flow, batch_path=batch.path, batch_id=batch.batch_id, budget=settings.budget,
                          alpha=settings.alpha, recognise_known=not settings.ask_known_shifts, report=False, responder="none")
    if not detection.is_drift:
        print(f"batch {batch.batch_id}: no drift against the current champion (p = {detection.p_value:.4f}); nothing to do")
        return {"batch_id": batch.batch_id, "is_drift": False, "p_value": detection.p_value, "improvement": None}
    if detection.known_shift is not None:
        print(f"batch {batch.batch_id}: the known shift of batch {detection.known_shift.batch_id}; nothing to ask")
        return {"batch_id": batch.batch_id, "is_drift": True, "p_value": detection.p_value, "improvement": None,
                "known_shift": detection.known_shift.model_dump()}
    improvement = respond(batch, batch.path, detection, human, settings, steps, seed)
    return {"batch_id": batch.batch_id, "is_drift": True, "p_value": detection.p_value, "improvement": improvement}


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def image_stream_batches(config: TrackingConfig, stream: str, files_per_batch: int | None, store: Any, human: str) -> tuple[list[StreamBatch], Path]:
    """The batches of an image stream in the champion's contract, and the folder that keeps them and the progress."""
    version = current_champion.fn(config)
    if version is None:
        raise ScanflowError(f"no champion of {config.classifier_name} to supervise {stream} with: train one "
                            "(scanflow train) or adopt yours (scanflow adopt MODEL_URI --reference PATH)")
    contract = scanflow_tracking.ModelContract.from_tags(scanflow_tracking.version_tags(config, version))
    if contract is None:
        raise ScanflowError(f"{config.classifier_name} v{version} records no input contract: retrain or adopt it again")
    info = DatasetInfo(contract.dataset, contract.classes, *contract.input_shape, source=stream)
    state = stream_state_dir(stream, default_cache_dir())
    batches, notes = image_stream(stream, info, state, files_per_batch, store)
    for line in notes:
        print(line)
    if human == "oracle" and any(not batch.labels_path.is_file() for batch in batches):
        raise ScanflowError(f"the oracle answers from true labels, and the batches of {stream} carry none: put each "
                            "batch's files in class sub-folders, or answer as a person (--human person) or by the policy")
    return batches, state


class StreamRun:
    """The supervise run's own MLflow run (`supervise-<flow run name>`, kind `supervise`): one step per batch of
    `stream_metrics`, so MLflow charts the stream's p-value, drift and accuracy. Opened at the first batch
    reported, so a loop refused before any batch writes nothing; ended with the loop (FAILED if it raises)."""

    def __init__(self, config: TrackingConfig, held: contextlib.ExitStack) -> None:
        self.config, self.held, self.run_id = config, held, None

    def log(self, index: int, row: Mapping[str, Any], detection: DetectionReport | None = None) -> None:
        if self.run_id is None:
            tags = {KIND_TAG: "supervise", "prefect.flow_run_id": str(flow_run.id or "")}
            self.run_id = self.held.enter_context(scanflow_tracking.tracked_run(self.config, f"supervise-{flow_run.name or 'local'}", tags))
        scanflow_tracking.log_metrics(self.run_id, stream_metrics(row, detection), step=index)

    def draw(self, rows: Sequence[Mapping[str, Any]], alpha: float) -> bytes | None:
        """The stream's figure (`scanflow.plots.stream_figure`) logged to the run as stream.png and stream.svg;
        returns the PNG (None when no batch was reported)."""
        if self.run_id is None or not rows:
            return None
        figure = stream_figure(rows, alpha)
        png = figure_bytes(figure, "png")
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in (("stream.png", png), ("stream.svg", figure_bytes(figure, "svg"))):
                (Path(tmp) / name).write_bytes(data)
                scanflow_tracking.log_artifact_file(self.run_id, Path(tmp) / name)
        return png


@flow(name="supervise", log_prints=True, persist_result=True, result_serializer="json")
def supervise_flow(
    stream_dir: str | None = None,
    dataset: str = "default",
    n_batches: int = 6,
    batch_size: int = 200,
    drift_at: int = 3,
    corruption: str = "shot_noise",
    human: Literal["person", "oracle", "policy"] = "oracle",
    policy: str | None = None,
    tracking: str | None = None,
    storage: str | None = None,
    budget: int | None = None,
    alpha: float | None = None,
    pause_timeout_s: int | None = None,
    action_on_timeout: Literal["filter", "ignore"] | None = None,
    promotion_margin: float | None = None,
    ask_known_shifts: bool | None = None,
    step_deployments: str | None = None,
    seed: int = 0,
    demo: bool = False,
    stream: str | None = None,
    files_per_batch: int | None = None,
    inline_steps: bool = False,
    retrain_steps: int | None = None,
    denoiser_steps: int | None = None,
) -> dict:
    """Supervise a production stream batch by batch (see the module docstring).

    `stream`: instead of `stream_dir`, a folder or `s3://bucket/prefix/` that receives image files: each new
    sub-folder (or, with `files_per_batch`, each group of that many new files) is a batch, read into the champion's
    input contract. What was read is kept under the data cache (`scanflow.stream.stream_state_dir`), so a run on the
    same stream later (a schedule: the `supervise-stream` deployment) supervises only the new batches, never one
    twice. Needs a champion; the oracle needs class sub-folders inside each batch (its true labels).

    `stream_dir`: a folder written by `scanflow.stream.make_stream` (stream.json beside the batches). With `demo`,
    a demo stream is written there (default `./stream/`) unless one is there already: `n_batches` batches of
    `batch_size` test images, corrupted with `corruption` from batch `drift_at` on (true labels kept beside it for
    the oracle and the report); a folder holding other files is refused, never written over. Returns the
    per-batch table also published as the `supervision-summary` artifact.

    `policy` names a SupervisionPolicy block (default: the built-in policy); `budget`, `alpha`, `pause_timeout_s`,
    `action_on_timeout`, `promotion_margin`, `ask_known_shifts`, `retrain_steps` and `denoiser_steps` (a decision's
    training steps, see `SupervisionSettings`) override it one by one. A drift that repeats a
    shift already decided about for the champion is reported as known and not asked about (unless
    `ask_known_shifts`). Nobody answering within the timeout runs the timeout action (filter or ignore: retraining
    needs a person's labels) and makes no shift known. `tracking` names an MLflowTracking block
    (default: the environment); `storage` a ScanflowStorage block whose bucket receives predictions and verdicts
    (default: the environment). `step_deployments` names the deployments the steps run as (`predict/<name>`,
    `detect/<name>`, ...: e.g. 'process' or 'docker' from infra/prefect.yaml); None runs them as sub-flows here.
    `inline_steps` runs each batch's predict and detect as tasks of this run instead of sub-flows (`flows.steps.INLINE_STEPS`):
    the same MLflow runs and Prefect artifacts, linked to this run, in about half the time per batch.
    """
    settings = supervision_settings(policy, budget=budget, alpha=alpha, pause_timeout_s=pause_timeout_s,
                                    action_on_timeout=action_on_timeout, promotion_margin=promotion_margin,
                                    ask_known_shifts=ask_known_shifts, retrain_steps=retrain_steps,
                                    denoiser_steps=denoiser_steps)
    print(f"supervision policy: {settings}")
    steps = Steps(step_deployments, tracking, storage, inline=inline_steps)
    config = tracking_config(tracking)
    store = storage_store(storage)
    if stream is not None:
        batches, folder = image_stream_batches(config, stream, files_per_batch, store, human)
        if not batches:
            print(f"{stream}: no batch yet")
            return {"batches": [], "champion": current_champion(config), "tracking_uri": config.tracking_uri,
                    "prefect_flow_run_id": str(flow_run.id or "")}
    else:
        batches = open_stream(stream_dir, demo, dataset, n_batches, batch_size, drift_at, corruption, seed=seed)
        folder = Path(batches[0].path).parent
        if current_champion(config) is None:
            print(f"no champion of {config.classifier_name} yet: training one on {dataset}")
            steps.run(train_flow, dataset=dataset, seed=seed)
    key = registry_key(config.tracking_uri, config.classifier_name)
    progress = read_progress(folder, key)
    given = end_abandoned_run(progress.owner, flow_run.id)
    me = this_process()
    record_owner(folder, key, OwnerRun(str(flow_run.id or ""), me.host, me.pid, me.start_time))
    rows = []
    with contextlib.ExitStack() as held:
        stream_run = StreamRun(config, held)
        for index, batch in enumerate(batches):
            if batch.batch_id in progress.rows:
                print(f"batch {batch.batch_id}: supervised already (recorded in {folder / PROGRESS}; delete that file to "
                      "supervise the stream afresh)")
                rows.append(progress.rows[batch.batch_id])
                stream_run.log(index, rows[-1])
                continue
            path = shared_batch(absolute_location(batch.path), batch.batch_id, store)
            prediction = steps.run(predict_flow, batch_path=path, batch_id=batch.batch_id)
            detection = steps.run(detect_flow, batch_path=path, batch_id=batch.batch_id, budget=settings.budget, alpha=settings.alpha,
                                  recognise_known=not settings.ask_known_shifts, report=False, responder="supervise")
            row = batch_row(batch, prediction, detection)
            recorded = progress.decisions.get(batch.batch_id)
            if recorded is None and batch.batch_id in given:
                recorded = given[batch.batch_id]
                print(f"batch {batch.batch_id}: answered ({recorded.action}) after the previous supervise run was gone; carrying it out")
                record_decision(folder, key, batch.batch_id, recorded)
            if recorded is None and detection.is_drift and detection.known_shift is not None:
                row = with_known_shift(row, detection.known_shift)
            elif recorded is not None or detection.is_drift:
                improvement = respond(batch, path, detection, human, settings, steps, seed, recorded=recorded,
                                      on_decision=lambda decision: record_decision(folder, key, batch.batch_id, decision))
                after = steps.run(predict_flow, batch_path=path, batch_id=f"{batch.batch_id}-after") if improvement.promoted else prediction
                row = with_decision(row, batch, improvement, after)
            record_row(folder, key, batch.batch_id, row)
            rows.append(row)
            stream_run.log(index, row, detection)
            print(" | ".join(f"{k}={v}" for k, v in row.items()))
        png = stream_run.draw(rows, settings.alpha)
    create_table_artifact(rows, key="supervision-summary", description="per batch: drift, decision, accuracy before/after")
    picture = f"\n\n![the stream](data:image/png;base64,{base64.b64encode(png).decode('ascii')})" if png else ""
    create_markdown_artifact(summary_markdown(rows) + picture, key="supervision-report", description="the supervised stream at a glance")
    return {"batches": rows, "champion": current_champion(config), "tracking_uri": config.tracking_uri,
            "prefect_flow_run_id": str(flow_run.id or "")}


if __name__ == "__main__":
    print(summary_markdown(supervise_flow(demo=True)["batches"]))

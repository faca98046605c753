"""The decisions waiting for a person: the paused runs of the `ask-human` flow, read from the Prefect API
($PREFECT_API_URL). `scanflow pending` prints them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from pydantic import ValidationError

from scanflow.supervision import DecisionRequest

#: The name of the flow that pauses for a decision (flows.supervise.ask_human), kept here so listing needs no flows.
ASK_HUMAN_FLOW = "ask-human"


@dataclass(frozen=True)
class PendingDecision:
    """One paused decision: its ask-human run, how long it has waited (seconds since it paused) and what it asks."""

    run_id: str
    batch_id: str
    age_s: float
    recommended: str
    url: str
    request: DecisionRequest


def pending_decisions(ui_url: str) -> list[PendingDecision]:
    """Every run of the ask-human flow in state PAUSED, longest waiting first; `url` is its page under `ui_url`.
    Paused runs whose `request` parameter is not a DecisionRequest (a form of an older release) are left out."""
    now = datetime.now(timezone.utc)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[ASK_HUMAN_FLOW])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
            sort=FlowRunSort.START_TIME_ASC,
        )
    decisions = []
    for run in runs:
        try:
            request = DecisionRequest.model_validate(run.parameters["request"])
        except (KeyError, ValidationError):
            continue
        since = run.state.timestamp if run.state and run.state.timestamp else run.start_time or now
        decisions.append(PendingDecision(
            run_id=str(run.id), batch_id=request.batch_id, age_s=max(0.0, (now - since).total_seconds()),
            recommended=request.recommended, url=f"{ui_url.rstrip('/')}/runs/flow-run/{run.id}", request=request,
        ))
    return sorted(decisions, key=lambda decision: -decision.age_s)

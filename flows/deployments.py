"""The step deployments and the drift automation, defined in code (infra/prefect.yaml declares the same for work
pools). `scanflow serve` serves them all from one process: no work pool or worker needed."""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.events import DeploymentEventTrigger

from flows.detect import detect_flow, report_flow
from flows.improve import improve_flow
from flows.predict import predict_flow
from flows.supervise import respond_flow, supervise_flow
from flows.train import train_flow
from scanflow.config import SERVE_POLL_S
from scanflow.detect import DRIFT_EVENT

STEP_FLOWS = (train_flow, predict_flow, detect_flow, report_flow, improve_flow)


def drift_trigger() -> DeploymentEventTrigger:
    """Start respond-to-drift on the batch of every `scanflow.drift.detected` event left to the automation (a
    supervise loop labels its own events `scanflow.responder: supervise` and handles them itself)."""
    return DeploymentEventTrigger(
        name="respond to drift",
        description="a detect run found drift: ask a person about the batch and improve the model",
        expect={DRIFT_EVENT},
        match={"prefect.resource.id": "scanflow.model.*", "scanflow.responder": "automation"},
        parameters={"batch_path": "{{ event.payload.batch_path }}", "batch_id": "{{ event.payload.batch_id }}"},
    )


def deployments(name: str = "process", human: str = "person", tracking: str | None = None, policy: str | None = None) -> list[Any]:
    """Every Scanflow flow as a deployment called `name` (`train/<name>`, ..., `respond-to-drift/<name>`); the
    supervise and respond deployments run their steps as the `name` deployments too."""
    common = {"tracking": tracking} if tracking else {}
    loops = {**common, "human": human, "policy": policy, "step_deployments": name}
    return [
        *(step.to_deployment(name, parameters=common, tags=["scanflow"]) for step in STEP_FLOWS),
        supervise_flow.to_deployment(name, parameters=loops, tags=["scanflow"]),
        respond_flow.to_deployment(name, parameters=loops, triggers=[drift_trigger()], tags=["scanflow"]),
    ]


def serve_all(name: str = "process", human: str = "person", tracking: str | None = None, policy: str | None = None,
              limit: int | None = None, poll_s: int = SERVE_POLL_S) -> None:
    """Serve every deployment from this process until interrupted (runs execute in subprocesses), asking the
    server for scheduled runs every `poll_s` seconds."""
    serve(*deployments(name, human, tracking, policy), limit=limit, query_seconds=poll_s)

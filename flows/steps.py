"""How the supervise flow runs its steps: as sub-flows in its own process (the default), as deployments
(`run_deployment`, linked as sub-flows in the UI) so each step can run on its own infrastructure (a process worker,
a Docker container, a Kubernetes pod), or with `inline` the per-batch steps (`INLINE_STEPS`) as tasks of the
supervise run itself. The flow code is the same every way; only `step_deployments` or `inline` changes."""

from __future__ import annotations

import inspect
from typing import Any

from prefect import Flow
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from scanflow.errors import ScanflowError

STEP_POLL_INTERVAL_S = 1
#: The steps every batch runs, which `inline` runs as the supervise run's own tasks: a sub-flow's start and end cost
#: more than their models' work (benchmarks/README.md, Loop). Improve (minutes of training) and ask-human (a pause
#: needs a flow run of its own) stay sub-flows.
INLINE_STEPS = ("predict", "detect")


def in_process(step: Flow, *args: Any, **parameters: Any) -> Any:
    """`step` as a sub-flow in this process, without a heartbeat of its own: the parent's heartbeat already says
    whether this process lives, and each flow run's heartbeat thread costs up to a second at the run's end (it
    sleeps in 1-second steps and is joined)."""
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return step(*args, **parameters)


class StepFailedError(ScanflowError, RuntimeError):
    """A step deployment that is missing or whose run did not complete."""


class Steps:
    """Runs step flows with the supervise run's `tracking` and `storage` blocks passed on (to the steps that take
    them); `deployment` None means sub-flows here, and with `inline` the steps of `INLINE_STEPS` run as tasks of the
    calling flow run (their MLflow runs and Prefect artifacts are the same, linked to that run). Raises ScanflowError
    for `inline` with a deployment: inline steps run here, deployments elsewhere."""

    def __init__(self, deployment: str | None = None, tracking: str | None = None, storage: str | None = None,
                 inline: bool = False) -> None:
        if inline and deployment is not None:
            raise ScanflowError(f"inline steps run in this process and step deployments ({deployment!r}) elsewhere: choose one")
        self.deployment = deployment
        self.inline = inline
        self.blocks = {"tracking": tracking, "storage": storage}

    def run(self, step: Flow, **parameters: Any) -> Any:
        accepted = inspect.signature(step.fn).parameters
        parameters.update({name: block for name, block in self.blocks.items() if name in accepted})
        if self.inline and step.name in INLINE_STEPS:
            return step.fn(**parameters)
        if self.deployment is None:
            return in_process(step, **parameters)
        name = f"{step.name}/{self.deployment}"
        try:
            run = run_deployment(name, parameters=parameters, timeout=None, poll_interval=STEP_POLL_INTERVAL_S)
        except ObjectNotFound:
            raise StepFailedError(
                f"no deployment {name!r} on the Prefect server: deploy the steps (`prefect deploy --all` with "
                f"infra/prefect.yaml, or `scanflow serve --name {self.deployment}`) or run without step_deployments"
            ) from None
        if not run.state or not run.state.is_completed():
            state = run.state.name if run.state else "unknown"
            raise StepFailedError(f"step {name} (flow run {run.id}) ended {state}: {run.state.message if run.state else ''}")
        try:
            return run.state.result()
        except Exception as error:
            raise StepFailedError(
                f"step {name} (flow run {run.id}) completed but its result cannot be read here ({type(error).__name__}: "
                f"{error}): a step on other infrastructure must persist its result where this run can read it; save "
                "the result storage (`scanflow blocks register --save-defaults` with a bucket configured) and set "
                "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=s3-bucket/scanflow-results in the step's environment "
                "(infra/prefect.yaml does for the docker pool)"
            ) from error

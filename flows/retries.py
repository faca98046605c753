"""Retries of the flows' I/O tasks: an unreachable server is tried again, a user's mistake is not. An unknown model or
a bad batch fails at once with its message instead of three times, 10 s apart."""

from __future__ import annotations

from typing import Any

from scanflow.errors import worth_retrying


def retry_on_io_errors(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry when the failure may pass (`scanflow.errors.worth_retrying`)."""
    try:
        state.result(raise_on_failure=True)
    except BaseException as error:  # the failure being judged, not one of ours
        return worth_retrying(error)
    return False


#: Task options of an idempotent I/O step (MLflow, S3, the Prefect API): two retries, 5 s apart, for what may pass.
IO_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 5, "retry_condition_fn": retry_on_io_errors}

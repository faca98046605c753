"""Talking to the MLflow tracking server: reachability checks, the one way Scanflow obtains an `MlflowClient`
(`mlflow_client`), connecting to an experiment, and the translation of transport failures into
`TrackingUnavailableError` (a message naming the server and the settings, not a traceback)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from scanflow.config import TrackingConfig
from scanflow.errors import TrackingUnavailableError
from scanflow.orphans import mark_orphans


P = ParamSpec("P")
R = TypeVar("R")


#: Seconds between the health checks of `check_reachable` (after the first): a server restarting is waited for.
REACHABLE_BACKOFF_S = (1.0, 2.0, 4.0)


def _health_problem(url: str, timeout_s: float) -> str | None:
    """None when `url` answers 200 within `timeout_s`, else what went wrong."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as error:
        return str(getattr(error, "reason", error))


def check_reachable(tracking_uri: str, timeout_s: float = 5.0, backoff_s: Sequence[float] = REACHABLE_BACKOFF_S) -> None:
    """Fail fast, with the fix, when the tracking store cannot be used (MLflow's own retries would take minutes): an
    HTTP server's /health is asked up to 1 + len(`backoff_s`) times, `backoff_s` seconds apart, `timeout_s` each."""
    if tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/") + "/health"
        problem = _health_problem(url, timeout_s)
        for pause in backoff_s:
            if problem is None:
                return
            time.sleep(pause)
            problem = _health_problem(url, timeout_s)
        if problem is None:
            return
        raise TrackingUnavailableError(
            f"MLflow tracking server at {tracking_uri} is unreachable ({problem}). Start it, e.g. "
            "`mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`, "
            "or unset MLFLOW_TRACKING_URI to use the local store ./mlflow.db"
        )
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise TrackingUnavailableError(
                f"MLflow tracking store {tracking_uri}: folder {folder} does not exist; create it or point "
                "MLFLOW_TRACKING_URI at an existing folder"
            )


def mlflow_client(tracking_uri: str) -> MlflowClient:
    """A client of the store at `tracking_uri`, model registry included: without an explicit registry MLflow takes
    the process-wide one, which a connect to another store leaves behind (a champion then seems to have vanished)."""
    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def _client(config: TrackingConfig) -> MlflowClient:
    return mlflow_client(config.tracking_uri)


#: Transport failures as the MLflow client reports them once its own retries are spent (see rest_utils.http_request).
_TRANSPORT_FAILURES = ("API request to", "Max retries exceeded", "timeout exception", "Connection refused", "Read timed out")


def _transport_failure(error: BaseException) -> bool:
    """Whether `error` (from the MLflow client) says the server did not answer, rather than answering no."""
    if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError)):
        return True
    if isinstance(error, requests.exceptions.HTTPError):
        return error.response is None or error.response.status_code >= 500
    return isinstance(error, MlflowException) and any(text in error.message for text in _TRANSPORT_FAILURES)


def unavailable(error: BaseException) -> TrackingUnavailableError:
    """The TrackingUnavailableError for a transport failure of the MLflow client: it names the server, the cause
    (shortened) and the settings that bound the wait."""
    text = str(getattr(error, "message", error)).splitlines()[0]
    request = re.search(r"API request to (https?://[^/\s]+)(/[^?\s]*)\S* failed", text)
    cause = text.split("Caused by ", 1)[1].removesuffix(")") if "Caused by " in text else text
    cause = cause if len(cause) <= 200 else cause[:200] + "..."
    return TrackingUnavailableError(
        f"MLflow tracking server at {request.group(1) if request else mlflow.get_tracking_uri()} did not answer"
        f"{' ' + request.group(2) if request else ''} after {os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '7')} "
        f"retries ({cause}). Check that it runs, and that its artifact store (S3) answers: the server proxies every "
        "artifact. Settings: MLFLOW_TRACKING_URI; MLFLOW_HTTP_REQUEST_TIMEOUT and MLFLOW_HTTP_REQUEST_MAX_RETRIES bound the wait"
    )


def _tracking_errors(function: Callable[P, R]) -> Callable[P, R]:
    """`function` with transport failures of the MLflow client turned into TrackingUnavailableError (the message
    names the server and the settings; no traceback in the CLI). Other errors pass unchanged."""
    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except (MlflowException, requests.exceptions.RequestException) as error:
            if _transport_failure(error):
                raise unavailable(error) from error
            raise

    return wrapper


@_tracking_errors
def connect(config: TrackingConfig) -> str:
    """Point MLflow at `config.tracking_uri`, check it answers, end the runs left RUNNING by dead processes of this
    host (`scanflow.orphans.mark_orphans`), and return the experiment id (created if new)."""
    check_reachable(config.tracking_uri)
    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.set_registry_uri(config.tracking_uri)
    client = _client(config)
    experiment = client.get_experiment_by_name(config.experiment_name)
    if experiment is None:
        return client.create_experiment(config.experiment_name, artifact_location=config.artifact_root)
    mark_orphans(config.tracking_uri, experiment.experiment_id)
    return experiment.experiment_id


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's advice that does not apply here: the pyfunc code is Scanflow's own, its schema is the explicit
    tensor signature, and a dataset path is a local file."""
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)

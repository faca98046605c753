"""One real Prefect server (`prefect server start` with its services: UI, events, automations; ~20-40 s to start
here) for every flow test of the session, on a free 127.0.0.1 port with a database of its own."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_server(tmp_path_factory):
    """The session's server, which refuses API calls without its auth string; yields its API URL. The URL and the
    auth string are exported as PREFECT_API_URL and PREFECT_API_AUTH_STRING, so the subprocesses tests start
    (`scanflow` commands, served deployments, workers) get them from the environment."""
    from scanflow.local import start_prefect_server
    from scanflow.local_auth import new_prefect_auth_string

    folder = tmp_path_factory.mktemp("prefect")
    auth_string = new_prefect_auth_string()
    server = start_prefect_server(log_dir=folder, home=folder / "home", auth_string=auth_string)
    try:
        with using_prefect_api(server.api_url, auth_string):
            yield server.api_url
    finally:
        server.stop()


@contextlib.contextmanager
def using_prefect_api(api_url: str, auth_string: str | None = None) -> Iterator[None]:
    """Point this process at the Prefect API `api_url` (with its `auth_string`): PREFECT_API_URL and
    PREFECT_API_AUTH_STRING in the environment (for subprocesses), the settings context and, as Prefect's test
    harness does, the global settings context, so threads started by the code under test (the simulated human
    answering a pause) talk to it too. On exit the log and event senders are flushed (before the server goes away)
    and everything is restored."""
    from prefect.context import _temporary_global_settings_context, get_settings_context
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    exported = {"PREFECT_API_URL": api_url, **({"PREFECT_API_AUTH_STRING": auth_string} if auth_string else {})}
    saved = {name: os.environ.get(name) for name in exported}
    os.environ.update(exported)
    updates = {PREFECT_API_URL: api_url, **({PREFECT_API_AUTH_STRING: auth_string} if auth_string else {})}
    try:
        with temporary_settings(updates=updates), _temporary_global_settings_context(get_settings_context()):
            try:
                yield
            finally:
                _drain_prefect_workers()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _drain_prefect_workers() -> None:
    """Flush the background log and event senders before their server goes away (as Prefect's test harness does)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(Exception):
        APILogWorker.drain_all(timeout=10)
    with contextlib.suppress(Exception):
        EventsWorker.drain_all(timeout=10)


@contextlib.contextmanager
def digits_champion(mlflow_store: str, stem: str, epochs: int = 15, autoencoder_epochs: int = 10) -> Iterator[dict[str, str]]:
    """Train a digits champion (with its detector) under model names and an experiment of its own; yields the
    environment that points at them, restoring the previous environment afterwards. Fewer `epochs` give a weaker
    classifier, enough for tests that need a champion but not its accuracy."""
    from flows.train import train_flow

    env = {"MLFLOW_TRACKING_URI": mlflow_store, "SCANFLOW_MODEL_NAME": f"{stem}-classifier", "SCANFLOW_EXPERIMENT": stem}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        train_flow(dataset="digits", epochs=epochs, autoencoder_epochs=autoencoder_epochs, latent_dim=8)
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture()
def env(champion, monkeypatch):
    """The test module's `champion` environment, set for one test."""
    for key, value in champion.items():
        monkeypatch.setenv(key, value)
    return champion


def paused_child_of(run_name: str):
    """(the flow run named `run_name`, its child paused for a decision) once both exist (300 s at most each), on the
    Prefect API this process is pointed at."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from flows.supervise import paused_child

    deadline, parent = time.monotonic() + 300, None
    with get_client(sync_client=True) as client:
        while parent is None and time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name])))
            parent = runs[0].id if runs else None
            time.sleep(0.5)
    return parent, paused_child(parent, timeout_s=300)

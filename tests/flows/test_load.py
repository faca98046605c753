"""Load on one Prefect server running on PostgreSQL (as production deployments do): 20 detect runs at once, each on
its own batch, while 5 supervise loops pause on their decision forms at once and are answered one by one, each
with its own decision. None is lost, none gets another's verdict or answer (tests/flows/load.py says how each is
checked). Timings are a benchmark's business: `python -m benchmarks.load`."""

from __future__ import annotations

import os
import threading

import pytest

from tests.flows.conftest import digits_champion, using_prefect_api
from tests.flows.load import LOOP_ACTION, check_detects, check_loops, run_detects, run_loops, write_batches, write_loops
from tests.postgres import PostgresUnavailableError, postgres_bin_dir, postgres_cluster, query

pytestmark = pytest.mark.slow

N_DETECTS, N_LOOPS, BUDGET = 20, 5, 5


@pytest.fixture(scope="module")
def postgres():
    """A private PostgreSQL cluster with a `prefect` database."""
    try:
        postgres_bin_dir()
    except PostgresUnavailableError as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must provide PostgreSQL: {error}")
        pytest.skip(str(error))
    with postgres_cluster(database="prefect") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def prefect_server(postgres, tmp_path_factory):
    """This module's Prefect server, its database on `postgres` (in place of the session's SQLite server)."""
    from scanflow.local import start_prefect_server
    from scanflow.local_auth import new_prefect_auth_string

    folder = tmp_path_factory.mktemp("prefect-postgres")
    auth_string = new_prefect_auth_string()
    server = start_prefect_server(log_dir=folder, home=folder / "home", auth_string=auth_string,
                                  env={"PREFECT_API_DATABASE_CONNECTION_URL": postgres.url})
    try:
        assert not (folder / "home" / "prefect.db").exists(), "the server made a SQLite database instead of using PostgreSQL"
        with using_prefect_api(server.api_url, auth_string):
            yield server.api_url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def champion(mlflow_store, prefect_server):
    """A quickly trained digits champion: these runs need verdicts that differ, not an accurate classifier."""
    with digits_champion(mlflow_store, "load", epochs=4, autoencoder_epochs=4) as env:
        yield env


def test_20_detect_runs_and_5_paused_loops_each_get_their_own_verdict_and_answer(env, postgres, tmp_path):
    batches = write_batches(tmp_path / "batches", "load", N_DETECTS, size=30, budget=BUDGET)
    # The set-up can tell runs apart: every corrupted batch drifts, and no two batches share a verdict.
    assert all(batch.expected["is_drift"] for batch in batches if batch.corruption), [b.expected for b in batches]
    assert len({(b.expected["statistic"], b.expected["n_critical"], tuple(b.expected["selected_indices"])) for b in batches}) == N_DETECTS
    loops = write_loops(tmp_path / "loops", "load-loop", N_LOOPS, size=40)

    detects: dict[str, object] = {}
    detecting = threading.Thread(target=lambda: detects.update(zip(("records", "seconds"), run_detects(batches, "load-test", BUDGET))))
    detecting.start()
    timings, problems = run_loops(loops, "load-test", BUDGET, pause_timeout_s=600, wait_s=300)
    detecting.join(timeout=600)

    assert problems == []
    detect_check = check_detects(batches, detects["records"])
    assert detect_check.lost == [] and detect_check.mixed == []
    assert len(detects["records"]) == N_DETECTS
    loop_check = check_loops(loops, timings)
    assert loop_check.lost == [] and loop_check.mixed == []
    assert all(t.paused_after_s is not None and t.answered_s is not None for t in timings)
    assert {t.record.result["batches"][0]["decision"] for t in timings} == {LOOP_ACTION}
    # The server kept them in PostgreSQL: every detect run and every loop, once, COMPLETED.
    names = query(postgres, "SELECT name FROM flow_run WHERE name LIKE 'load-test-%' AND state_type = 'COMPLETED'")
    assert sorted(names) == sorted([r.name for r in detects["records"]] + [t.record.name for t in timings])

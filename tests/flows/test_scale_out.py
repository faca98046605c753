"""Batch scoring fans out: the same verdicts from a thread pool and from a local Dask cluster of worker processes
on 127.0.0.1, the Dask tasks demonstrably run in other processes."""

from __future__ import annotations

import os

import pytest

from flows.score import score_batches_flow
from scanflow.stream import make_stream, read_stream
from tests.flows.conftest import digits_champion

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def champion(mlflow_store):
    with digits_champion(mlflow_store, "scale-out") as env:
        yield env


def test_dask_workers_give_the_verdicts_of_the_thread_pool(env, tmp_path):
    make_stream(tmp_path / "stream", "digits", n_batches=4, batch_size=80, drift_at=2, corruption="impulse_noise", severity=5)
    paths = [batch.path for batch in read_stream(tmp_path / "stream")]
    threaded = score_batches_flow(batch_paths=paths, threads=2)
    distributed = score_batches_flow(batch_paths=paths, dask_workers=2)
    # The verdicts themselves: both corrupted batches alarm; a clean one may alarm by chance (alpha 0.05 each; the
    # digits champion's false-alarm rate on 200 clean windows of 80 measured 0.015-0.05), both would be a bug.
    verdicts = [v["is_drift"] for v in threaded]
    assert verdicts[2:] == [True, True] and sum(verdicts[:2]) <= 1, [v["p_value"] for v in threaded]
    assert [(v["batch_id"], v["is_drift"], v["p_value"]) for v in distributed] == [(v["batch_id"], v["is_drift"], v["p_value"]) for v in threaded]
    assert {v["worker_pid"] for v in threaded} == {os.getpid()}
    assert os.getpid() not in {v["worker_pid"] for v in distributed}

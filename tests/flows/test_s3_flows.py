"""Batches in S3 (a real SeaweedFS): predict and detect read s3://bucket/key through a ScanflowStorage block and
write what they served and found back into the bucket."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import SecretStr

from blocks import ScanflowStorage
from flows.detect import detect_flow
from flows.predict import predict_flow
from scanflow.errors import ScanflowError
from scanflow.stream import make_stream, read_stream
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.flows.conftest import digits_champion

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def champion(mlflow_store):
    with digits_champion(mlflow_store, "s3-flows") as env:
        yield env


@pytest.fixture(scope="module")
def storage(s3_server):
    block = ScanflowStorage(bucket="s3-flows", endpoint_url=s3_server.endpoint_url, aws_access_key_id=S3_ACCESS_KEY,
                            aws_secret_access_key=SecretStr(S3_SECRET_KEY), prefix="prod")
    block.save("s3-flows", overwrite=True)
    store = block.store()
    store.ensure_bucket()
    return store


def test_a_batch_in_s3_is_served_and_tested_with_both_records_in_the_bucket(env, storage, tmp_path):
    make_stream(tmp_path / "stream", "digits", n_batches=2, batch_size=100, drift_at=1, corruption="impulse_noise", severity=5)
    drifted = read_stream(tmp_path / "stream")[1]
    uri = storage.put_array(storage.key("batches", "b-s3.npy"), np.load(drifted.path))

    served = predict_flow(batch_path=uri, batch_id="b-s3", storage="s3-flows")
    record = storage.get_json("prod/predictions/b-s3.json")
    assert record["labels"] == served["labels"] and record["model_version"] == served["model_version"] and record["batch"] == uri

    verdict = detect_flow(batch_path=uri, batch_id="b-s3", storage="s3-flows", report=False, responder="none")
    stored = storage.get_json("prod/detections/b-s3.json")
    assert verdict["is_drift"] and stored["is_drift"] and stored["p_value"] == verdict["p_value"]
    assert [row["batch_index"] for row in stored["critical_rows"]] == [row["batch_index"] for row in verdict["critical_rows"]]


def test_an_s3_batch_without_storage_settings_says_how_to_configure_it(env, monkeypatch):
    monkeypatch.delenv("SCANFLOW_S3_BUCKET", raising=False)
    with pytest.raises(ScanflowError, match=r"s3://s3-flows/prod/batches/x.npy is in S3 but no storage is configured: pass storage="):
        predict_flow(batch_path="s3://s3-flows/prod/batches/x.npy")


def test_a_missing_s3_batch_is_named(env, storage):
    with pytest.raises(ScanflowError, match=r"s3://s3-flows/prod/batches/missing.npy does not exist"):
        predict_flow(batch_path="s3://s3-flows/prod/batches/missing.npy", storage="s3-flows")

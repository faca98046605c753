"""Batches in S3 (a real SeaweedFS): predict and detect read s3://bucket/key through a ScanflowStorage block and
write what they served and found back into the bucket; supervise hands the steps its batches in the bucket; flow
results persist to the bucket through prefect-aws; a restart of the S3 server between two batches loses nothing."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import SecretStr

from prefect.client.orchestration import get_client

from blocks import ScanflowStorage
from flows.detect import detect_flow
from flows.predict import predict_flow
from flows.supervise import supervise_flow
from scanflow.errors import ScanflowError
from scanflow.local import start_seaweedfs
from scanflow.storage import StorageUnavailableError
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
    assert verdict.is_drift and stored["is_drift"] and stored["p_value"] == verdict.p_value
    assert [row["batch_index"] for row in stored["critical_rows"]] == [row.batch_index for row in verdict.critical_rows]


def test_an_s3_batch_without_storage_settings_says_how_to_configure_it(env, monkeypatch):
    monkeypatch.delenv("SCANFLOW_S3_BUCKET", raising=False)
    with pytest.raises(ScanflowError, match=r"s3://s3-flows/prod/batches/x.npy is in S3 but no storage is configured: pass storage="):
        predict_flow(batch_path="s3://s3-flows/prod/batches/x.npy")


def test_a_missing_s3_batch_is_named(env, storage):
    with pytest.raises(ScanflowError, match=r"s3://s3-flows/prod/batches/missing.npy does not exist"):
        predict_flow(batch_path="s3://s3-flows/prod/batches/missing.npy", storage="s3-flows")


def test_supervise_hands_its_steps_the_batches_in_the_bucket(env, storage, tmp_path):
    summary = supervise_flow(stream_dir=str(tmp_path / "stream"), demo=True, dataset="digits", n_batches=1, batch_size=60,
                             drift_at=1, storage="s3-flows")
    (row,) = summary["batches"]
    uploaded = [key for key in storage.keys("prod/batches/") if key.startswith(f"prod/batches/{row['batch']}-")]
    assert len(uploaded) == 1, uploaded
    record = storage.get_json(f"prod/predictions/{row['batch']}.json")
    assert record["batch"] == storage.uri(uploaded[0])
    assert np.array_equal(storage.get_array(uploaded[0]), np.load(read_stream(tmp_path / "stream")[0].path))


def test_a_flow_result_persisted_to_the_bucket_is_read_back_through_the_api(env, storage, tmp_path):
    block = ScanflowStorage.load("s3-flows")
    block.result_storage().save("s3-flows-results", overwrite=True)
    make_stream(tmp_path / "stream", "digits", n_batches=1, batch_size=50, drift_at=1)
    state = predict_flow.with_options(result_storage="s3-bucket/s3-flows-results")(
        batch_path=read_stream(tmp_path / "stream")[0].path, batch_id="b-result", return_state=True
    )
    served = state.result()
    assert [key for key in storage.keys("prod/prefect-results/")], "no result object in the bucket"
    with get_client(sync_client=True) as client:
        stored_state = client.read_flow_run(state.state_details.flow_run_id).state
    assert stored_state.result()["labels"] == served["labels"]


def test_nothing_is_lost_when_the_s3_server_restarts_between_two_batches(env, tmp_path):
    """Batch 0 is served and tested, the server stops (a step then fails naming the endpoint, and writes nothing),
    comes back on its data, and batch 1 is served and tested: every record of both batches is in the bucket."""
    make_stream(tmp_path / "stream", "digits", n_batches=2, batch_size=60, drift_at=1, corruption="impulse_noise", severity=5)
    batches = read_stream(tmp_path / "stream")
    server = start_seaweedfs(tmp_path / "s3", S3_ACCESS_KEY, S3_SECRET_KEY)
    try:
        block = ScanflowStorage(bucket="restart-flows", endpoint_url=server.endpoint_url, aws_access_key_id=S3_ACCESS_KEY,
                                aws_secret_access_key=SecretStr(S3_SECRET_KEY), prefix="prod")
        block.save("s3-restart", overwrite=True)
        store = block.store()
        store.ensure_bucket()
        uris = [store.put_array(store.key("batches", f"{b.batch_id}.npy"), np.load(b.path)) for b in batches]
        first = predict_flow(batch_path=uris[0], batch_id="r0", storage="s3-restart")
        detect_flow(batch_path=uris[0], batch_id="r0", storage="s3-restart", report=False, responder="none")
    finally:
        server.stop()
    with pytest.raises(StorageUnavailableError, match=rf"cannot reach the S3 endpoint of bucket 'restart-flows' at {server.endpoint_url}"):
        predict_flow(batch_path=uris[1], batch_id="r1", storage="s3-restart")
    server = start_seaweedfs(tmp_path / "s3", S3_ACCESS_KEY, S3_SECRET_KEY, ports=server.ports)
    try:
        predict_flow(batch_path=uris[1], batch_id="r1", storage="s3-restart")
        verdict = detect_flow(batch_path=uris[1], batch_id="r1", storage="s3-restart", report=False, responder="none")
        assert sorted(store.keys("prod/predictions/")) == ["prod/predictions/r0.json", "prod/predictions/r1.json"]
        assert sorted(store.keys("prod/detections/")) == ["prod/detections/r0.json", "prod/detections/r1.json"]
        assert store.get_json("prod/predictions/r0.json")["labels"] == first["labels"]
        assert store.get_json("prod/detections/r1.json")["is_drift"] == verdict.is_drift is True
    finally:
        server.stop()


def _png_batch_in_s3(store, prefix: str, images: np.ndarray, labels: np.ndarray, classes) -> None:
    """One batch of PNG files in class sub-folders under s3://BUCKET/PREFIX (ImageFolder layout)."""
    import io

    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels)):
        data = io.BytesIO()
        Image.fromarray(image[0]).save(data, format="PNG")
        store.put_bytes(f"{prefix}/{classes[int(label)]}/{i:03d}.png", data.getvalue(), "image/png")


def test_a_stream_of_image_folders_in_s3_is_supervised_batch_by_batch_and_a_rerun_takes_only_the_new_ones(env, storage, tmp_path, monkeypatch):
    """`supervise --stream s3://bucket/prefix/`: each new sub-prefix of PNG files is a batch; a second run (as the
    schedule makes) takes only the new one; the bucket's objects under the stream are never written."""
    from scanflow import tracking
    from scanflow.config import TrackingConfig
    from scanflow.data import load_train_test

    monkeypatch.setenv("SCANFLOW_CACHE_DIR", str(tmp_path / "cache"))
    _, test = load_train_test("digits", seed=0)
    order = np.random.default_rng(1).permutation(len(test))
    classes, images, labels = test.info.classes, test.images.numpy()[order], test.labels.numpy()[order]
    for b in range(2):
        _png_batch_in_s3(storage, f"photos/day-{b}", images[b * 50:(b + 1) * 50], labels[b * 50:(b + 1) * 50], classes)
    stream = storage.uri("photos/")
    objects = {key: storage._call("head_object", Bucket=storage.config.bucket, Key=key)["ETag"] for key in storage.keys("photos/")}

    first = supervise_flow(stream=stream, human="oracle", budget=10, storage="s3-flows")["batches"]
    assert [r["batch"] for r in first] == ["day-0", "day-1"]
    assert all(r["accuracy_before"] > 0.7 for r in first)

    _png_batch_in_s3(storage, "photos/day-2", images[100:150], labels[100:150], classes)
    second = supervise_flow(stream=stream, human="oracle", budget=10, storage="s3-flows")["batches"]
    assert [r["batch"] for r in second] == ["day-0", "day-1", "day-2"] and second[:2] == first
    config = TrackingConfig.from_env()
    client = tracking.mlflow_client(config.tracking_uri)
    experiment = client.get_experiment_by_name(config.experiment_name).experiment_id
    detected = [r.data.tags["scanflow.batch_id"] for r in client.search_runs([experiment], "tags.`scanflow.kind` = 'detect'", max_results=1000)]
    assert sorted(b for b in detected if b.startswith("day-")) == ["day-0", "day-1", "day-2"]  # each batch tested once
    after = {key: storage._call("head_object", Bucket=storage.config.bucket, Key=key)["ETag"] for key in storage.keys("photos/")}
    assert {k: v for k, v in after.items() if "/day-2/" not in k} == objects  # nothing written where the team's files are

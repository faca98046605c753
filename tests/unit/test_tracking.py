"""MLflow tracking against a real SQLite store: runs, lineage, registration with alias, served-model interface."""

from __future__ import annotations

import socket
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from scanflow import tracking
from scanflow.config import TrackingConfig
from scanflow.errors import ModelNotFoundError, TrackingUnavailableError
from scanflow.models import Autoencoder, Classifier
from scanflow.tracking import mlflow_client, registry


@pytest.fixture(scope="module")
def small_models(digits):
    train, _ = digits
    torch.manual_seed(0)
    classifier = Classifier(1, 8, 8, 10)
    classifier.set_normalization(train.images)
    return classifier.eval(), Autoencoder(1, 8, 8, latent_dim=8).eval()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_server_fails_fast_with_the_fix():
    config = TrackingConfig(tracking_uri=f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(TrackingUnavailableError, match=r"MLflow tracking server at http://127\.0\.0\.1:\d+ is unreachable .*unset MLFLOW_TRACKING_URI"):
        tracking.connect(config)


def test_missing_store_folder_is_named(tmp_path):
    config = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")
    with pytest.raises(TrackingUnavailableError, match="folder .*nope does not exist"):
        tracking.connect(config)


def test_training_run_records_params_metrics_and_dataset_lineage(tracking_config, digits):
    train, _ = digits
    with tracking.tracked_run(tracking_config, run_name="unit", tags={"k": "v"}) as run_id:
        tracking.log_params(run_id, {"epochs": 3})
        for epoch in (1, 2):
            tracking.log_metrics(run_id, {"loss": 1.0 / epoch}, step=epoch)
        tracking.log_dataset(run_id, train, context="training")
    run = mlflow_client(tracking_config.tracking_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "3"
    assert run.data.tags["k"] == "v"
    history = mlflow_client(tracking_config.tracking_uri).get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5)]
    inputs = run.inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["digits:train"]
    assert inputs[0].tags[0].value == "training"


def test_failed_body_marks_the_run_failed(tracking_config):
    with pytest.raises(RuntimeError):
        with tracking.tracked_run(tracking_config) as run_id:
            raise RuntimeError("boom")
    assert mlflow_client(tracking_config.tracking_uri).get_run(run_id).info.status == "FAILED"


def test_register_sets_champion_and_serves_uint8_in_int64_out(tracking_config, digits, small_models):
    train, test = digits
    classifier, autoencoder = small_models
    with tracking.tracked_run(tracking_config) as run_id:
        versions = tracking.register_models(run_id, tracking_config, classifier, autoencoder, train)
    client = mlflow_client(tracking_config.tracking_uri)
    champion = client.get_model_version_by_alias(tracking_config.classifier_name, "champion")
    assert str(champion.version) == versions.classifier_version
    assert champion.tags[tracking.AUTOENCODER_VERSION_TAG] == versions.autoencoder_version
    assert str(client.get_model_version_by_alias(tracking_config.autoencoder_name, "champion").version) == versions.autoencoder_version

    served = mlflow.pyfunc.load_model(f"models:/{tracking_config.classifier_name}@champion")
    images = test.images[:20].numpy()
    labels = served.predict(images)
    assert labels.dtype == np.int64 and labels.shape == (20,)
    assert np.array_equal(labels, classifier.predict(test.images[:20]).numpy())

    latent = mlflow.pyfunc.load_model(f"models:/{tracking_config.autoencoder_name}@champion").predict(images)
    assert latent.shape == (20, 8) and latent.dtype == np.float32

    loaded = tracking.load_models(tracking_config)
    assert loaded.classifier_version == versions.classifier_version
    assert torch.equal(loaded.classifier.predict(test.images), classifier.predict(test.images))


def test_a_failed_registration_leaves_nothing_half_registered(tracking_config, digits, small_models, monkeypatch):
    train, _ = digits
    classifier, autoencoder = small_models
    real_log = tracking.registry._log_pyfunc

    def fail_on_classifier(name, *args, **kwargs):
        if name == "classifier":
            raise OSError("disk full")
        return real_log(name, *args, **kwargs)

    monkeypatch.setattr(tracking.registry, "_log_pyfunc", fail_on_classifier)  # where register_models looks it up
    with tracking.tracked_run(tracking_config) as run_id, pytest.raises(OSError, match="disk full"):
        tracking.register_models(run_id, tracking_config, classifier, autoencoder, train)
    client = mlflow_client(tracking_config.tracking_uri)
    assert client.search_model_versions(f"name='{tracking_config.autoencoder_name}'") == []
    with pytest.raises(ModelNotFoundError, match="has the alias .champion..*scanflow train"):
        tracking.load_models(tracking_config)


def test_models_are_stored_as_code_and_weights_without_pickle(tracking_config, digits, small_models, tmp_path):
    train, _ = digits
    classifier, autoencoder = small_models
    with tracking.tracked_run(tracking_config) as run_id:
        versions = tracking.register_models(run_id, tracking_config, classifier, autoencoder, train)
    local = mlflow.artifacts.download_artifacts(versions.classifier_uri, dst_path=str(tmp_path))
    files = {p.name for p in Path(local).rglob("*") if p.is_file()}
    assert "pyfunc_model.py" in files and "classifier.pt" in files
    assert not [name for name in files if name.endswith((".pkl", ".pickle", ".cloudpickle"))]
    assert "python_model" not in (Path(local) / "MLmodel").read_text().replace("python_model_code", "")


def _artifact_dir(client, name: str, version: str) -> Path:
    """Where the files of a registered version live in the local artifact store (to plant a file, as an attacker
    with write access to the store would)."""
    source = client.get_model_version(name, version).source
    location = mlflow.get_logged_model(source.removeprefix("models:/")).artifact_location
    return Path(location.removeprefix("file://"))


class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_tampered_artifact_is_refused_by_name_and_never_run(tracking_config, digits, small_models, tmp_path):
    import pickle

    from scanflow.artifacts import TamperedArtifactError
    from scanflow.drift.baselines import PixelStatsDetector

    train, test = digits
    classifier, autoencoder = small_models
    detector = PixelStatsDetector(calibration_windows=20).fit(train.images, info=train.info)
    with tracking.tracked_run(tracking_config) as run_id:
        versions = tracking.register_models(run_id, tracking_config, classifier, autoencoder, train, detector=detector)
    assert tracking.load_models(tracking_config).classifier_version == versions.classifier_version
    assert tracking.load_detector(tracking_config)[1] == versions.classifier_version
    assert tracking.load_served_model(tracking_config).model.predict(test.images[:5].numpy()).shape == (5,)
    # Loaded once per process, but each caller gets a detector of its own: another false-alarm rate stays its own.
    first, _ = tracking.load_detector(tracking_config)
    first.at_alpha(0.5)
    second, _ = tracking.load_detector(tracking_config)
    assert second is not first and second.alpha == detector.alpha != 0.5

    client = mlflow_client(tracking_config.tracking_uri)
    planted = _artifact_dir(client, tracking_config.classifier_name, versions.classifier_version) / "artifacts" / "classifier.pt"
    torch.manual_seed(1)
    Classifier(1, 8, 8, 10).save(planted)
    expected = rf"model {tracking_config.classifier_name} version {versions.classifier_version} differs from what was logged \(changed: artifacts/classifier.pt\)"
    with pytest.raises(TamperedArtifactError, match=expected):
        tracking.load_models(tracking_config)
    # A process that has already loaded the version keeps the copy it verified: nothing of the planted file is read.
    served = tracking.load_served_model(tracking_config).model
    assert served.predict(test.images[:5].numpy()).shape == (5,)
    registry._LOADED_VERSIONS.clear()  # as in a new process
    with pytest.raises(TamperedArtifactError, match=expected):
        tracking.load_served_model(tracking_config)

    marker = tmp_path / "planted-code-ran"
    run_artifacts = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    (run_artifacts / tracking.DETECTOR_ARTIFACT_PATH / tracking.DETECTOR_FILE).write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(TamperedArtifactError, match=r"the detector of .* differs from what was logged \(changed: detector.pt\)"):
        tracking.load_detector(tracking_config)
    assert not marker.exists()

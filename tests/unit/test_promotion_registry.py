"""Challengers, promotion and rollback against a real SQLite MLflow registry; served filter versions."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from scanflow import tracking
from scanflow.cli import main
from scanflow.drift.autoencoder import fit_detector
from scanflow.errors import ModelNotFoundError
from scanflow.improve import FilteredClassifier
from scanflow.models import Autoencoder, Classifier, Denoiser
from scanflow.tracking import mlflow_client


@pytest.fixture(scope="module")
def models(digits):
    train, test = digits
    torch.manual_seed(0)
    classifier = Classifier(1, 8, 8, 10)
    classifier.set_normalization(train.images)
    autoencoder = Autoencoder(1, 8, 8, latent_dim=8)
    detector = fit_detector(classifier.eval(), autoencoder.eval(), train, test)
    return classifier, autoencoder, detector


@pytest.fixture()
def champion(tracking_config, models, digits):
    train, _ = digits
    classifier, autoencoder, detector = models
    with tracking.tracked_run(tracking_config, "train") as run_id:
        versions = tracking.register_models(run_id, tracking_config, classifier, autoencoder, train, detector=detector)
    return versions


def test_challenger_promotion_and_rollback_move_only_the_alias(tracking_config, champion, models, digits):
    train, _ = digits
    client = mlflow_client(tracking_config.tracking_uri)
    with tracking.tracked_run(tracking_config, "improve-test") as run_id:
        retrained = Classifier(1, 8, 8, 10)
        version = tracking.register_candidate(run_id, tracking_config, retrained, train.info, champion.classifier_version, detector=models[2])
    name = tracking_config.classifier_name
    assert str(client.get_model_version_by_alias(name, "challenger").version) == version
    assert tracking.champion_version(tracking_config) == champion.classifier_version
    tags = tracking.version_tags(tracking_config, version)
    assert tags["scanflow.kind"] == "retrain" and tags["scanflow.parent_version"] == champion.classifier_version
    assert tags["scanflow.autoencoder_version"] == champion.autoencoder_version
    assert tags["scanflow.detector_uri"].startswith(f"runs:/{run_id}/")

    previous = tracking.promote(tracking_config, version, "beats the champion")
    assert previous == champion.classifier_version
    assert tracking.champion_version(tracking_config) == version
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(name, "challenger")
    assert tracking.load_detector(tracking_config)[1] == version

    assert main(["rollback"]) == 0
    assert tracking.champion_version(tracking_config) == champion.classifier_version
    assert tracking.version_tags(tracking_config, version)["scanflow.rolled_back"] == "true"
    with pytest.raises(ModelNotFoundError, match="replaced no earlier champion: nothing to roll back to"):
        tracking.rollback(tracking_config)
    assert tracking.rollback(tracking_config, to_version=version) == (champion.classifier_version, version)
    with pytest.raises(ModelNotFoundError, match="has no version 99"):
        tracking.rollback(tracking_config, to_version="99")


def test_a_filter_version_serves_like_any_classifier(tracking_config, champion, models, digits):
    train, test = digits
    classifier, _, detector = models
    torch.manual_seed(0)  # an untrained denoiser: its output, and so the share rejected, depends on its init
    filtered = FilteredClassifier(classifier, Denoiser(1, 8, 8), detector, reject_threshold=detector.clean_score_quantile(0.5), gate_threshold=0.0)
    with tracking.tracked_run(tracking_config, "improve-test") as run_id:
        version = tracking.register_candidate(run_id, tracking_config, filtered, train.info, champion.classifier_version)
    tags = tracking.version_tags(tracking_config, version)
    assert tags["scanflow.kind"] == "filter" and tags["scanflow.filter"] == "denoiser+reject"
    assert tags["scanflow.detector_uri"] == tracking.version_tags(tracking_config, champion.classifier_version)["scanflow.detector_uri"]
    served = mlflow.pyfunc.load_model(f"models:/{tracking_config.classifier_name}/{version}")
    labels = served.predict(test.images[:40].numpy())
    assert labels.dtype == np.int64 and labels.shape == (40,)
    assert np.array_equal(labels, filtered.predict(test.images[:40]).numpy())
    assert (labels == -1).any() and (labels >= 0).any()
    assert tracking.load_input_filter(tracking_config) is None
    tracking.promote(tracking_config, version, "test")
    loaded = tracking.load_models(tracking_config)
    assert loaded.is_filtered and loaded.classifier_version == version
    input_filter = tracking.load_input_filter(tracking_config)
    assert input_filter.gate_threshold == 0.0
    assert torch.equal(input_filter.clean(test.images[:40]), filtered.clean(test.images[:40]))


def test_a_score_gated_filter_serves_and_loads_its_gate(tracking_config, champion, models, digits):
    train, test = digits
    classifier, _, detector = models
    torch.manual_seed(0)
    threshold = detector.clean_score_quantile(0.5)
    filtered = FilteredClassifier(classifier, Denoiser(1, 8, 8), gate_threshold=1.0, gate_scorer=detector, gate_score_threshold=threshold)
    images = test.images[:40]
    passed = (filtered.clean(images) == images).flatten(1).all(dim=1)
    assert 0 < passed.sum() < len(images)  # the size gate passes all: only the score decides
    with tracking.tracked_run(tracking_config, "improve-test") as run_id:
        version = tracking.register_candidate(run_id, tracking_config, filtered, train.info, champion.classifier_version)
    tags = tracking.version_tags(tracking_config, version)
    assert tags["scanflow.filter"] == "denoiser" and float(tags["scanflow.filter_score_gate"]) == threshold
    served = mlflow.pyfunc.load_model(f"models:/{tracking_config.classifier_name}/{version}")
    assert np.array_equal(served.predict(images.numpy()), filtered.predict(images).numpy())
    tracking.promote(tracking_config, version, "test")
    input_filter = tracking.load_input_filter(tracking_config)
    assert input_filter.gate_score_threshold == threshold
    assert torch.equal(input_filter.clean(images), filtered.clean(images))


def test_a_failed_registration_leaves_no_version_behind(tracking_config, champion, models, digits, monkeypatch):
    train, _ = digits
    client = mlflow_client(tracking_config.tracking_uri)
    before = {str(v.version) for v in client.search_model_versions(f"name='{tracking_config.classifier_name}'")}

    def refuse(*args, **kwargs):
        raise RuntimeError("registry went away")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refuse)
    with pytest.raises(RuntimeError, match="registry went away"), tracking.tracked_run(tracking_config, "improve-test") as run_id:
        tracking.register_candidate(run_id, tracking_config, Classifier(1, 8, 8, 10), train.info, champion.classifier_version, detector=models[2])
    monkeypatch.undo()
    after = {str(v.version) for v in client.search_model_versions(f"name='{tracking_config.classifier_name}'")}
    assert after == before
    assert tracking.champion_version(tracking_config) == champion.classifier_version


def test_the_champion_is_read_from_its_own_store_whichever_store_the_process_used_last(tracking_config, champion, models, digits, tmp_path):
    """MLflow keeps one process-wide registry; a supervise run that had connected to another store lost its
    champion ("no version has the alias 'champion'") until every registry read named its store."""
    from scanflow.config import TrackingConfig

    other = TrackingConfig(f"sqlite:///{tmp_path / 'other.db'}", "other", "other-classifier", "other-autoencoder")
    tracking.connect(other)
    assert tracking.has_champion(tracking_config) and tracking.champion_version(tracking_config) == champion.classifier_version
    assert not tracking.has_champion(other)
    assert tracking.champion_version_or_none(other) is None
    assert tracking.champion_version_or_none(tracking_config) == champion.classifier_version
    tracking.connect(other)
    assert tracking.load_detector(tracking_config)[1] == champion.classifier_version
    assert mlflow_client(tracking_config.tracking_uri).get_model_version(tracking_config.classifier_name, champion.classifier_version)


def test_a_training_of_another_dataset_or_shape_may_replace_the_champion_only_when_forced(tracking_config, champion):
    from scanflow.data import dataset_info
    from scanflow.errors import ChampionMismatchError

    tags = tracking.version_tags(tracking_config, champion.classifier_version)
    assert (tags["scanflow.dataset"], tags["scanflow.input_shape"]) == ("digits", "1x8x8")
    assert tracking.ModelContract.from_tags(tags) == tracking.ModelContract.of(dataset_info("digits"))
    tracking.check_champion_replaceable(tracking_config, dataset_info("digits"))  # same contract: a normal retraining
    with pytest.raises(ChampionMismatchError, match=rf"^{tracking_config.classifier_name} v{champion.classifier_version}, the "
                       r"champion, was trained on digits \(10 classes: 0, 1, .*; input 1x8x8\); this training is on mnist "
                       r"\(10 classes: .*; input 1x28x28\), another dataset and input shape\. .*pass --force"):
        tracking.check_champion_replaceable(tracking_config, dataset_info("mnist"))
    tracking.check_champion_replaceable(tracking_config, dataset_info("fashion-mnist"), force=True)


def test_a_version_older_than_the_contract_tags_is_judged_by_its_dataset_name():
    from scanflow.data import dataset_info

    fashion = dataset_info("fashion-mnist")
    assert tracking.ModelContract.from_tags({"scanflow.dataset": "fashion-mnist"}) == tracking.ModelContract.of(fashion)
    assert tracking.ModelContract.from_tags(tracking.contract_tags(fashion)) == tracking.ModelContract.of(fashion)
    assert tracking.ModelContract.from_tags({"scanflow.dataset": "my-own-data"}) is None
    assert tracking.ModelContract.from_tags({}) is None
    digits = tracking.ModelContract.of(dataset_info("digits"))
    assert digits.differences(tracking.ModelContract.of(fashion)) == ["dataset", "class set", "input shape"]


def test_rollback_and_promote_refuse_versions_that_did_not_finish_logging_or_were_never_judged(tracking_config, champion, models, digits):
    from scanflow.errors import UnusableVersionError

    train, _ = digits
    client = mlflow_client(tracking_config.tracking_uri)
    name = tracking_config.classifier_name
    with tracking.tracked_run(tracking_config, "improve-test") as run_id:
        version = tracking.register_candidate(run_id, tracking_config, Classifier(1, 8, 8, 10), train.info, champion.classifier_version)
    with pytest.raises(UnusableVersionError, match=rf"^{name} v{version} cannot become champion: it is a retrain challenger nobody judged"):
        tracking.rollback(tracking_config, to_version=version)
    client.delete_model_version_tag(name, version, tracking.DIGESTS_TAG)
    with pytest.raises(UnusableVersionError, match=rf"^{name} v{version} cannot be promoted: it has no scanflow.sha256 tag"):
        tracking.promote(tracking_config, version, "a test")
    tracking.record_verdict(tracking_config, version, "promoted")
    with pytest.raises(UnusableVersionError, match=rf"^{name} v{version} cannot become champion: it has no scanflow.sha256 tag"):
        tracking.rollback(tracking_config, to_version=version)
    assert tracking.champion_version(tracking_config) == champion.classifier_version
    assert "scanflow.rolled_back" not in tracking.version_tags(tracking_config, champion.classifier_version)

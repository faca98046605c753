"""Adopted models: versions registered in MLflow by someone else (any flavour) that Scanflow supervises. Resolving a
`models:/` URI, reading what a version's MLmodel declares, loading it as a `ForeignClassifier`, registering its
adoption (autoencoder, detector, contract, reference), and logging a retrained or filtered adopted model.

Built on `scanflow.tracking.registry`; the registry's loaders import from here inside their functions, when a version
turns out to be adopted.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from scanflow.artifacts import digests_tag, file_digests, verify_digests
from scanflow.config import CHAMPION_ALIAS, TrackingConfig
from scanflow.drift.base import Detector
from scanflow.errors import ModelNotFoundError, ScanflowError
from scanflow.models import Autoencoder, Denoiser
from scanflow.serving import AUTOENCODER_ARTIFACT, DENOISER_ARTIFACT, AutoencoderModel, autoencoder_signature
from scanflow.tags import (
    ADOPTED_FROM_TAG,
    ADOPTED_TAG,
    ADOPTION_RUN_TAG,
    AUTOENCODER_VERSION_TAG,
    CONTRACT_TAG,
    DATASET_TAG,
    DETECTOR_DIGEST_TAG,
    DETECTOR_TAG,
    DIGESTS_TAG,
    FILTER_GATE_TAG,
    FILTER_TAG,
    PREVIOUS_CHAMPION_TAG,
    REFERENCE_TAG,
    VERDICT_TAG,
)
from scanflow.tracking.client import _client, _quiet_mlflow, check_reachable, mlflow_client
from scanflow.tracking.registry import (
    _download_verified,
    _log_pyfunc,
    _record_digests,
    _requirements,
    champion_version_or_none,
    contract_tags,
)
from scanflow.tracking.runs import _active_run, log_detector


def resolve_model_uri(tracking_uri: str, model_uri: str) -> Any:
    """The registered version a `models:/NAME/VERSION` or `models:/NAME@ALIAS` URI names (ModelNotFoundError
    otherwise: adoption supervises registered versions only)."""
    from scanflow.adopt import AdoptionError

    match = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([A-Za-z0-9_-]+))", model_uri)
    if match is None:
        raise AdoptionError(
            f"{model_uri!r} is not a registered model version: pass models:/NAME/VERSION or models:/NAME@ALIAS "
            "(register a run's model first with mlflow.register_model)"
        )
    check_reachable(tracking_uri)
    client = mlflow_client(tracking_uri)
    name, version, alias = match.groups()
    try:
        return client.get_model_version(name, version) if version else client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        raise ModelNotFoundError(f"{model_uri} is not in the registry at {tracking_uri}: check the name and version") from error


def model_declarations(tracking_uri: str, version: Any) -> tuple[set[str], Any, dict[str, Any]]:
    """What a registered version's MLmodel declares: its flavours, signature and metadata."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with _quiet_mlflow():
        info = mlflow.models.get_model_info(f"models:/{version.name}/{version.version}")
    return set(info.flavors), info.signature, dict(info.metadata or {})


def load_foreign_classifier(tracking_uri: str, version: Any, contract: Any, verify: bool = True) -> Any:
    """A registered adopted model as a `ForeignClassifier` (for a filtered version, the model behind the filter),
    with its embedding model when the contract names one; with `verify`, its files are checked against the sha256
    recorded at adoption first (TamperedArtifactError). The embedding model's files are always checked."""
    client = mlflow_client(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        if verify:
            local = _download_verified(client, version.name, version, tmp)
        else:
            local = mlflow.artifacts.download_artifacts(f"models:/{version.name}/{version.version}", dst_path=tmp)
        return with_embedder(_adopted_parts(local, version, contract)[0], tracking_uri)


def embedding_model_digests(tracking_uri: str, model_uri: str) -> str:
    """The sha256 record of the files of the registered model `model_uri` (what `load_embedder` checks later)."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        return digests_tag(file_digests(mlflow.artifacts.download_artifacts(model_uri, dst_path=tmp)))


def load_embedder(tracking_uri: str, contract: Any) -> Any:
    """The contract's embedding model as its MLflow pyfunc, after checking its files against the sha256 recorded at
    adoption (TamperedArtifactError naming what changed; nothing of a changed file is loaded)."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(contract.embedding_model, dst_path=tmp)
        verify_digests(local, contract.embedding_model_sha256, f"the embedding model {contract.embedding_model}")
        with _quiet_mlflow():
            return mlflow.pyfunc.load_model(local)


def with_embedder(classifier: Any, tracking_uri: str) -> Any:
    """`classifier` (a `ForeignClassifier`) given its contract's embedding model, when it names one."""
    if classifier.contract.embedding_model is not None and classifier.embedder is None:
        classifier.embedder = load_embedder(tracking_uri, classifier.contract)
    return classifier


def _adopted_contract(version: Any) -> Any:
    from scanflow.adopt import InputContract

    text = version.tags.get(CONTRACT_TAG)
    return None if text is None else InputContract.from_json(text)


def register_adoption(
    run_id: str, config: TrackingConfig, version: Any, contract: Any, autoencoder: Autoencoder, detector: Detector,
    info: Any, reference: Any,
) -> str:
    """Log the autoencoder and the detector fitted for an adopted `version`, tag the version with them, its contract,
    its `reference` (a `ReferenceRecord`) and its files' sha256, and point `champion` at it; returns the supervised version of `config.classifier_name`
    (`version` itself, or a new version on its source when the names differ). All or nothing: on failure what this
    call created and tagged is removed again and no alias moves."""
    client = _client(config)
    name = config.classifier_name
    created: list[tuple[str, str]] = []
    tagged: list[str] = []
    new_model = False
    try:
        if version.name != name:  # supervised under another name: a new entry on the same source, nothing copied
            try:
                client.get_registered_model(name)
            except MlflowException:
                client.create_registered_model(name)
                new_model = True
            version = client.create_model_version(name, version.source, run_id=version.run_id, tags={ADOPTED_FROM_TAG: f"models:/{version.name}/{version.version}"})
            created.append((name, str(version.version)))
        number = str(version.version)
        detector_uri, detector_digest = log_detector(run_id, detector)
        with _active_run(run_id):
            ae_info = _log_pyfunc(
                "autoencoder", AutoencoderModel(info), {AUTOENCODER_ARTIFACT: autoencoder},
                autoencoder_signature(info, autoencoder.latent_dim), config.autoencoder_name, {DATASET_TAG: info.name},
            )
        ae_version = str(ae_info.registered_model_version)
        created.append((config.autoencoder_name, ae_version))
        _record_digests(client, config.autoencoder_name, ae_version)
        tags = {
            ADOPTED_TAG: contract.flavour, CONTRACT_TAG: contract.to_json(), REFERENCE_TAG: reference.to_json(), AUTOENCODER_VERSION_TAG: ae_version,
            DETECTOR_TAG: detector_uri, DETECTOR_DIGEST_TAG: detector_digest, **contract_tags(info),
            ADOPTION_RUN_TAG: run_id, VERDICT_TAG: "adopted",
        }
        for key, value in tags.items():
            client.set_model_version_tag(name, number, key, value)
            tagged.append(key)
        _record_digests(client, name, number)
        tagged.append(DIGESTS_TAG)
        previous = champion_version_or_none(config)
        if previous is not None and previous != number:
            client.set_model_version_tag(name, number, PREVIOUS_CHAMPION_TAG, previous)
            tagged.append(PREVIOUS_CHAMPION_TAG)
        client.set_registered_model_alias(config.autoencoder_name, CHAMPION_ALIAS, ae_version)
        client.set_registered_model_alias(name, CHAMPION_ALIAS, number)
    except BaseException:
        for key in tagged:
            with contextlib.suppress(MlflowException):
                client.delete_model_version_tag(name, number, key)
        for model, created_version in created:
            with contextlib.suppress(MlflowException):
                client.delete_model_version(model, created_version)
        if new_model:
            with contextlib.suppress(MlflowException):
                client.delete_registered_model(name)
        raise
    return number


def _log_foreign_pytorch(config: TrackingConfig, parent: Any, candidate: Any) -> Any:
    """Log a retrained adopted module as the pytorch flavour, with its parent version's signature and metadata, and
    register it under `config.classifier_name` (into the active run)."""
    from mlflow import pytorch as mlflow_pytorch

    if candidate.contract.flavour != "pytorch":
        raise ScanflowError(f"only a pytorch module can be retrained and logged, not a {candidate.contract.flavour} model")
    _, signature, metadata = model_declarations(config.tracking_uri, parent)
    with _quiet_mlflow():
        return mlflow_pytorch.log_model(
            candidate.model, name="classifier", signature=signature, metadata=metadata or None,
            serialization_format="pickle", pip_requirements=_requirements(), registered_model_name=config.classifier_name,
        )


def _log_filtered_foreign(config: TrackingConfig, parent: Any, candidate: Any) -> Any:
    """Log a filter in front of an adopted model (`scanflow.serving.FilteredForeignModel`): the denoiser, and the
    adopted model's own directory (the parent's, or the one inside a filtered parent) copied unchanged, with the
    parent's signature and metadata, so the new version takes and gives what the adopted model does."""
    from scanflow.serving import FOREIGN_MODEL_ARTIFACT, FilteredForeignModel

    if candidate.scorer is not None:
        raise ScanflowError("a filter in front of an adopted model cannot reject images: its answers keep the model's own form")
    if candidate.gate_scorer is not None:
        raise ScanflowError("a filter in front of an adopted model gates by correction size only: its detector needs the model's answers")
    _, signature, metadata = model_declarations(config.tracking_uri, parent)
    with tempfile.TemporaryDirectory() as tmp:
        downloaded = _foreign_model_dir(_download_verified(_client(config), config.classifier_name, parent, os.path.join(tmp, "parent")), parent)
        # A folder artifact keeps its own name under artifacts/: the name the loader looks for.
        model_dir = shutil.copytree(downloaded, Path(tmp) / FOREIGN_MODEL_ARTIFACT)
        return _log_pyfunc(
            "filtered-classifier", FilteredForeignModel(candidate.classifier.contract, candidate.gate_threshold),
            {DENOISER_ARTIFACT: candidate.denoiser}, signature, config.classifier_name,
            paths={FOREIGN_MODEL_ARTIFACT: str(model_dir)}, metadata=metadata,
        )


def _foreign_model_dir(local: str, version: Any) -> Path:
    """The adopted model's own MLflow model directory inside a downloaded version: the version itself, or for a
    filtered one the copy it carries."""
    from scanflow.serving import FOREIGN_MODEL_ARTIFACT

    if FILTER_TAG not in version.tags:
        return Path(local)
    return Path(local) / "artifacts" / FOREIGN_MODEL_ARTIFACT


def _adopted_parts(local: str, version: Any, contract: Any) -> tuple[Any, Denoiser | None, float | None]:
    """(the adopted model as a `ForeignClassifier`, the denoiser in front of it or None, the filter's gate) from a
    downloaded version."""
    from scanflow.adopt import ForeignClassifier, load_foreign_model

    with _quiet_mlflow():
        classifier = ForeignClassifier(load_foreign_model(str(_foreign_model_dir(local, version)), contract), contract)
    if FILTER_TAG not in version.tags:
        return classifier, None, None
    denoiser = Denoiser.load(next(Path(local).rglob(f"{DENOISER_ARTIFACT}.pt")))
    gate = version.tags.get(FILTER_GATE_TAG, "none")
    return classifier, denoiser, None if gate == "none" else float(gate)

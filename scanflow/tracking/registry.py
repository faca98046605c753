"""The model registry: what a version was trained for (`ModelContract`), registering a training's models and an
improvement's candidate, aliases and the champion, promotion, verdicts and rollback, and loading a version back
(Scanflow models, its detector, the served pyfunc, its input filter).

Models are logged as MLflow pyfuncs from code (`scanflow/pyfunc_model.py`) over Scanflow's own weight files,
with explicit pip requirements (no requirement inference, no `torch.export`); a version loads wherever Scanflow is
installed. The sha256 of every stored file is recorded in the registry at logging and checked before loading
(`TamperedArtifactError`); see docs/decisions/0003-no-code-from-storage.md. Adopted models (registered elsewhere,
then supervised) are in `scanflow.tracking.adopted`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from scanflow.artifacts import digests_tag, file_digests, verify_digests
from scanflow.config import CHALLENGER_ALIAS, CHAMPION_ALIAS, TrackingConfig
from scanflow.data import DatasetInfo, LabeledImages, dataset_info
from scanflow.drift.base import Detector
from scanflow.errors import (
    ChampionMismatchError,
    ModelNotFoundError,
    TrackingUnavailableError,
    UnknownDatasetError,
    UnusableVersionError,
)
from scanflow.models import Autoencoder, Classifier, Denoiser, SavableModel
from scanflow.serving import (
    AUTOENCODER_ARTIFACT,
    CLASSIFIER_ARTIFACT,
    CONFIG_ARTIFACT,
    DENOISER_ARTIFACT,
    GATE_DETECTOR_ARTIFACT,
    PYFUNC_CODE,
    REJECTION_DETECTOR_ARTIFACT,
    AutoencoderModel,
    ClassifierModel,
    FilteredClassifierModel,
    autoencoder_signature,
    classifier_signature,
)
from scanflow.tags import (
    ADOPTED_TAG,
    AUTOENCODER_VERSION_TAG,
    CLASSES_TAG,
    CONTRACT_TAG,
    DATASET_TAG,
    DETECTOR_DIGEST_TAG,
    DETECTOR_TAG,
    DIGESTS_TAG,
    FILTER_GATE_TAG,
    FILTER_SCORE_GATE_TAG,
    FILTER_TAG,
    INPUT_SHAPE_TAG,
    KIND_TAG,
    PARENT_TAG,
    PREVIOUS_CHAMPION_TAG,
    PROMOTION_REASON_TAG,
    REFERENCE_TAG,
    ROLLED_BACK_TAG,
    RUN_ID_TAG,
    VERDICT_TAG,
)
from scanflow.tracking.client import _client, _quiet_mlflow, _tracking_errors, _transport_failure, check_reachable, unavailable
from scanflow.tracking.runs import _active_run, download_run_artifact, log_detector


@dataclass(frozen=True)
class ModelContract:
    """What a classifier was trained for: dataset, class names in label order, input shape (C, H, W) in pixels."""

    dataset: str
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]

    @classmethod
    def of(cls, info: DatasetInfo) -> "ModelContract":
        return cls(info.name, tuple(info.classes), tuple(info.image_shape))

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> "ModelContract | None":
        """The contract recorded on a registered version; for a version older than the classes and shape tags, the
        one of its dataset's name. None when the version names no dataset Scanflow knows."""
        name = tags.get(DATASET_TAG)
        if name is None:
            return None
        try:
            known: DatasetInfo | None = dataset_info(name)
        except UnknownDatasetError:
            known = None
        classes = tuple(json.loads(tags[CLASSES_TAG])) if CLASSES_TAG in tags else (known.classes if known else None)
        shape = (tuple(int(n) for n in tags[INPUT_SHAPE_TAG].split("x")) if INPUT_SHAPE_TAG in tags
                 else (known.image_shape if known else None))
        if classes is None or shape is None:
            return None
        return cls(name, tuple(classes), shape)  # type: ignore[arg-type]

    def describe(self) -> str:
        """E.g. "digits (10 classes: 0, 1, ..., 9; input 1x8x8)"."""
        shown = ", ".join(self.classes[:10]) + (f", ... ({len(self.classes)} in all)" if len(self.classes) > 10 else "")
        return f"{self.dataset} ({len(self.classes)} classes: {shown}; input {'x'.join(map(str, self.input_shape))})"

    def differences(self, other: "ModelContract") -> list[str]:
        """What differs from `other`, among 'dataset', 'class set' and 'input shape'."""
        pairs = (("dataset", self.dataset, other.dataset), ("class set", self.classes, other.classes),
                 ("input shape", self.input_shape, other.input_shape))
        return [what for what, mine, theirs in pairs if mine != theirs]


def contract_tags(info: DatasetInfo) -> dict[str, str]:
    """The version tags that record what a model was trained for (`ModelContract.from_tags` reads them back)."""
    return {DATASET_TAG: info.name, CLASSES_TAG: json.dumps(list(info.classes)),
            INPUT_SHAPE_TAG: "x".join(str(n) for n in info.image_shape)}


def check_champion_replaceable(config: TrackingConfig, info: DatasetInfo, force: bool = False) -> None:
    """Refuse (ChampionMismatchError) a training on `info` that would take the champion alias from a classifier
    trained on another dataset, class set or input shape, unless `force`. Reads the registry only: call it before
    the training's run is created. A registry without a champion, or a champion of the same contract, passes."""
    if force:
        return
    try:
        current = _version_by_alias(config, CHAMPION_ALIAS)
    except ModelNotFoundError:
        return
    theirs, ours = ModelContract.from_tags(current.tags), ModelContract.of(info)
    if theirs is None or not ours.differences(theirs):
        return
    raise ChampionMismatchError(
        f"{config.classifier_name} v{current.version}, the champion, was trained on {theirs.describe()}; this training "
        f"is on {ours.describe()}, another {' and '.join(ours.differences(theirs))}. Registering it would replace that "
        "champion: pass --force (train_flow(force=True)) to replace it, or set SCANFLOW_MODEL_NAME to another name to keep both"
    )


@dataclass(frozen=True)
class RegisteredVersions:
    """The registry entries one training created: model name -> version, and the classifier's model URI."""

    classifier_name: str
    classifier_version: str
    autoencoder_name: str
    autoencoder_version: str
    classifier_uri: str


def _requirements() -> list[str]:
    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
    ]


def _log_pyfunc(
    name: str, wrapper: Any, artifacts: Mapping[str, SavableModel | Detector], signature: Any,
    registered_model_name: str, model_tags: Mapping[str, str] | None = None, paths: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Any:
    """Log `wrapper` (a `scanflow.serving` wrapper) as models-from-code, with each artifact saved by its own `save`
    (artifact key = file stem) and each of `paths` (a file or folder) copied as it is, and register it."""
    with tempfile.TemporaryDirectory() as tmp, _quiet_mlflow():
        files = {key: str(obj.save(Path(tmp) / f"{key}.pt")) for key, obj in artifacts.items()}
        files.update(paths or {})
        # The wrapper's config travels as an artifact file: MLflow would also copy a `model_config` into run params.
        files[CONFIG_ARTIFACT] = str(Path(tmp) / f"{CONFIG_ARTIFACT}.json")
        Path(files[CONFIG_ARTIFACT]).write_text(json.dumps(wrapper.model_config()))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(PYFUNC_CODE),
            artifacts=files,
            signature=signature,
            pip_requirements=_requirements(),
            registered_model_name=registered_model_name,
            tags=dict(model_tags or {}),
            metadata=dict(metadata) if metadata else None,
        )


def _record_digests(client: MlflowClient, name: str, version: str) -> None:
    """Tag a registered version with the sha256 of every file of its model, as stored."""
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp)
        client.set_model_version_tag(name, version, DIGESTS_TAG, digests_tag(file_digests(local)))


def _download_verified(client: MlflowClient, name: str, version: Any, dst: str) -> str:
    """Download version `version` (a ModelVersion) of `name` into `dst` and check its files against the recorded
    sha256s; raises TamperedArtifactError naming what changed."""
    local = mlflow.artifacts.download_artifacts(f"models:/{name}/{version.version}", dst_path=dst)
    verify_digests(local, version.tags.get(DIGESTS_TAG), f"model {name} version {version.version}")
    return local


@_tracking_errors
def register_models(
    run_id: str,
    config: TrackingConfig,
    classifier: Classifier,
    autoencoder: Autoencoder,
    data: LabeledImages,
    tags: Mapping[str, str] | None = None,
    alias: str | None = CHAMPION_ALIAS,
    detector: Detector | None = None,
) -> RegisteredVersions:
    """Log both models (and the fitted detector that watches them) to the run, register the models and point
    `alias` at the new versions.

    All or nothing: if any step fails, the versions this call created are deleted again and the alias stays
    where it was, so the registry never holds half of a training.
    """
    client = _client(config)
    created: list[tuple[str, str]] = []
    model_tags = {**contract_tags(data.info), **(tags or {})}
    try:
        detector_uri, detector_digest = log_detector(run_id, detector) if detector is not None else (None, None)
        with _active_run(run_id):
            ae_info = _log_pyfunc(
                "autoencoder", AutoencoderModel(data.info), {AUTOENCODER_ARTIFACT: autoencoder},
                autoencoder_signature(data.info, autoencoder.latent_dim), config.autoencoder_name, model_tags,
            )
            created.append((config.autoencoder_name, str(ae_info.registered_model_version)))
            clf_info = _log_pyfunc(
                "classifier", ClassifierModel(data.info), {CLASSIFIER_ARTIFACT: classifier},
                classifier_signature(data.info), config.classifier_name, model_tags,
            )
            created.append((config.classifier_name, str(clf_info.registered_model_version)))
        ae_version, clf_version = created[0][1], created[1][1]
        client.set_model_version_tag(config.classifier_name, clf_version, AUTOENCODER_VERSION_TAG, ae_version)
        detector_tags = {DETECTOR_TAG: detector_uri, DETECTOR_DIGEST_TAG: detector_digest} if detector_uri else {}
        for key, value in {**model_tags, **detector_tags}.items():
            client.set_model_version_tag(config.classifier_name, clf_version, key, str(value))
        for name, version in created:
            _record_digests(client, name, version)
        if alias:
            client.set_registered_model_alias(config.autoencoder_name, alias, ae_version)
            client.set_registered_model_alias(config.classifier_name, alias, clf_version)
    except BaseException:
        for name, version in created:
            with contextlib.suppress(MlflowException):
                client.delete_model_version(name, version)
        raise
    return RegisteredVersions(
        classifier_name=config.classifier_name,
        classifier_version=clf_version,
        autoencoder_name=config.autoencoder_name,
        autoencoder_version=ae_version,
        classifier_uri=f"models:/{config.classifier_name}/{clf_version}",
    )


#: What MLflow answers for a registered model, or an alias, that does not exist.
_NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _version_by_alias(config: TrackingConfig, alias: str) -> Any:
    check_reachable(config.tracking_uri)
    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.set_registry_uri(config.tracking_uri)
    try:
        return _client(config).get_model_version_by_alias(config.classifier_name, alias)
    except MlflowException as error:
        if _transport_failure(error):
            raise unavailable(error) from error
        if error.error_code not in _NOT_FOUND_CODES:
            raise TrackingUnavailableError(
                f"MLflow at {config.tracking_uri} failed to say which version of {config.classifier_name!r} has the "
                f"alias {alias!r} ({error.error_code}: {error.message}); check the server's log and retry"
            ) from error
        raise ModelNotFoundError(
            f"no version of {config.classifier_name!r} has the alias {alias!r} in {config.tracking_uri}: "
            "train one with `scanflow train` (or check MLFLOW_TRACKING_URI / SCANFLOW_MODEL_NAME)"
        ) from error


def _required_tag(config: TrackingConfig, version: Any, tag: str, meaning: str) -> str:
    value = version.tags.get(tag)
    if value is None:
        raise ModelNotFoundError(
            f"{config.classifier_name} version {version.version} has no {tag} tag ({meaning}): "
            "retrain with `scanflow train`"
        )
    return value


@dataclass(frozen=True)
class LoadedModels:
    """A registered classifier version and the autoencoder registered with it."""

    classifier: Classifier
    autoencoder: Autoencoder
    classifier_version: str
    autoencoder_version: str
    dataset: str = "default"
    denoiser: Denoiser | None = None
    gate_threshold: float | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    gate_detector: Detector | None = None
    gate_score_threshold: float | None = None

    @property
    def is_filtered(self) -> bool:
        return self.denoiser is not None

    @property
    def input_filter(self) -> Any:
        """The version as it serves when it filters its inputs (a `FilteredClassifier`: its `clean` gives what the
        classifier sees, its `predict` what the pyfunc answers, rejection aside), or None for a plain classifier."""
        if self.denoiser is None:
            return None
        from scanflow.improve.filter import FilteredClassifier

        return FilteredClassifier(self.classifier, self.denoiser, gate_threshold=self.gate_threshold,
                                  gate_scorer=self.gate_detector, gate_score_threshold=self.gate_score_threshold)


@_tracking_errors
def load_models(config: TrackingConfig, alias: str = CHAMPION_ALIAS) -> LoadedModels:
    """Load the classifier at `alias` and the autoencoder version recorded beside it, as Scanflow models."""
    from scanflow.tracking.adopted import _adopted_contract, _adopted_parts, with_embedder

    version = _version_by_alias(config, alias)
    ae_version = _required_tag(config, version, AUTOENCODER_VERSION_TAG, "it was not registered by Scanflow")
    client = _client(config)
    contract = _adopted_contract(version)
    if contract is not None:
        with tempfile.TemporaryDirectory() as tmp:
            ae_model = client.get_model_version(config.autoencoder_name, ae_version)
            ae_dir = _download_verified(client, config.autoencoder_name, ae_model, os.path.join(tmp, "ae"))
            autoencoder = Autoencoder.load(next(Path(ae_dir).rglob(f"{AUTOENCODER_ARTIFACT}.pt")))
            local = _download_verified(client, config.classifier_name, version, os.path.join(tmp, "clf"))
            classifier, denoiser, gate = _adopted_parts(local, version, contract)
        classifier = with_embedder(classifier, config.tracking_uri)
        return LoadedModels(classifier, autoencoder, str(version.version), str(ae_version), version.tags.get(DATASET_TAG, "default"),
                            denoiser, gate, dict(version.tags))
    with tempfile.TemporaryDirectory() as tmp:
        clf_dir = _download_verified(client, config.classifier_name, version, os.path.join(tmp, "clf"))
        ae_model = client.get_model_version(config.autoencoder_name, ae_version)
        ae_dir = _download_verified(client, config.autoencoder_name, ae_model, os.path.join(tmp, "ae"))
        classifier = Classifier.load(next(Path(clf_dir).rglob(f"{CLASSIFIER_ARTIFACT}.pt")))
        autoencoder = Autoencoder.load(next(Path(ae_dir).rglob(f"{AUTOENCODER_ARTIFACT}.pt")))
        denoiser_file = next(Path(clf_dir).rglob(f"{DENOISER_ARTIFACT}.pt"), None)
        denoiser = Denoiser.load(denoiser_file) if denoiser_file is not None else None
        score_gate = version.tags.get(FILTER_SCORE_GATE_TAG)
        gate_detector = Detector.load(next(Path(clf_dir).rglob(f"{GATE_DETECTOR_ARTIFACT}.pt"))) if score_gate else None
    gate = version.tags.get(FILTER_GATE_TAG, "none")
    return LoadedModels(
        classifier, autoencoder, str(version.version), str(ae_version), version.tags.get(DATASET_TAG, "default"),
        denoiser, None if gate == "none" else float(gate), dict(version.tags), gate_detector,
        float(score_gate) if score_gate else None,
    )


#: How many loaded versions (served models, detectors) a process keeps (`_loaded_once`).
LOADED_VERSIONS_KEPT = 8
_LOADED_VERSIONS: OrderedDict[tuple[str, ...], Any] = OrderedDict()
_LOADED_LOCK = threading.Lock()


def _loaded_once(kind: str, config: TrackingConfig, version: Any, load: Callable[[], Any]) -> Any:
    """What `load()` gives for this registered version, loaded (downloaded, digest-checked, deserialised) once per
    process: a loop asks for the champion at every batch, and a version's files never change once registered. The key
    holds the version's run and creation time besides its number, so a model deleted and registered again under the
    same name and number is loaded anew. The LOADED_VERSIONS_KEPT most recent are kept."""
    key = (kind, config.tracking_uri, config.classifier_name, str(version.version), str(version.run_id),
           str(version.creation_timestamp))
    with _LOADED_LOCK:  # threads of one process (a task runner's) may ask at once; two may load, one is kept
        if key in _LOADED_VERSIONS:
            _LOADED_VERSIONS.move_to_end(key)
            return _LOADED_VERSIONS[key]
    loaded = load()
    with _LOADED_LOCK:
        _LOADED_VERSIONS[key] = loaded
        while len(_LOADED_VERSIONS) > LOADED_VERSIONS_KEPT:
            _LOADED_VERSIONS.popitem(last=False)
    return loaded


@_tracking_errors
def load_detector(config: TrackingConfig, alias: str = CHAMPION_ALIAS) -> tuple[Detector, str]:
    """The detector logged beside the classifier version at `alias`, and that version; its file is checked against
    the sha256 recorded at logging (TamperedArtifactError when it differs). Each call gets a detector of its own (a
    shallow copy of the one loaded once per process, `_loaded_once`), so `at_alpha` on it changes no other caller's."""
    from scanflow.tracking.adopted import _adopted_contract, load_foreign_classifier

    version = _version_by_alias(config, alias)
    uri = _required_tag(config, version, DETECTOR_TAG, "no drift detector was logged beside it")

    def load() -> Detector:
        with tempfile.TemporaryDirectory() as tmp:
            path = download_run_artifact(config.tracking_uri, uri, tmp)
            verify_digests(tmp, version.tags.get(DETECTOR_DIGEST_TAG), f"the detector of {config.classifier_name} version {version.version} ({uri})")
            detector = Detector.load(path)
        contract = _adopted_contract(version)
        if contract is not None:  # an adopted model's detector is stored without it: its own loader brings it
            detector.classifier = load_foreign_classifier(config.tracking_uri, version, contract)
        return detector

    return copy.copy(_loaded_once(f"detector:{uri}", config, version, load)), str(version.version)


# ------------------------------------------------------------------------------------- improvement and promotion


@_tracking_errors
def register_candidate(
    run_id: str,
    config: TrackingConfig,
    candidate: Any,
    info: Any,
    champion_version: str,
    detector: Detector | None = None,
    tags: Mapping[str, str] | None = None,
    alias: str = CHALLENGER_ALIAS,
) -> str:
    """Log an improved model (a retrained `Classifier`, a `FilteredClassifier`, or a retrained adopted model: a
    `ForeignClassifier`) as a new version of the classifier, next to the champion's autoencoder, and point `alias`
    at it. Returns the new version. A retrained adopted model is logged in its own flavour (pytorch, with the
    parent's signature and metadata) and keeps the parent's input contract and reference.

    A candidate brings its refitted `detector` (a filtered one's watches the cleaned images, fitted on cleaned clean
    images); without one the champion's detector is reused. All or nothing, like `register_models`.
    """
    from scanflow.adopt import ForeignClassifier
    from scanflow.improve.filter import FilteredClassifier
    from scanflow.tracking.adopted import _log_filtered_foreign, _log_foreign_pytorch

    client = _client(config)
    champion = client.get_model_version(config.classifier_name, champion_version)
    ae_version = _required_tag(config, champion, AUTOENCODER_VERSION_TAG, "it was not registered by Scanflow")
    created: str | None = None
    try:
        if detector is not None:
            detector_uri, detector_digest = log_detector(run_id, detector)
        else:
            detector_uri = _required_tag(config, champion, DETECTOR_TAG, "no drift detector was logged beside it")
            detector_digest = _required_tag(config, champion, DETECTOR_DIGEST_TAG, "its detector's sha256 was not recorded")
        is_filter = isinstance(candidate, FilteredClassifier)
        version_tags = {
            **{k: v for k, v in champion.tags.items() if k in (DATASET_TAG, CLASSES_TAG, INPUT_SHAPE_TAG, ADOPTED_TAG, CONTRACT_TAG, REFERENCE_TAG)},
            **(tags or {}),
            KIND_TAG: "filter" if is_filter else "retrain",
            PARENT_TAG: str(champion_version),
            AUTOENCODER_VERSION_TAG: str(ae_version),
            DETECTOR_TAG: detector_uri,
            DETECTOR_DIGEST_TAG: detector_digest,
            RUN_ID_TAG: run_id,
        }
        with _active_run(run_id):
            if is_filter:
                version_tags[FILTER_TAG] = "denoiser" + ("+reject" if candidate.scorer is not None else "")
                version_tags[FILTER_GATE_TAG] = "none" if candidate.gate_threshold is None else repr(float(candidate.gate_threshold))
                if candidate.gate_scorer is not None:
                    version_tags[FILTER_SCORE_GATE_TAG] = repr(float(candidate.gate_score_threshold))
            if is_filter and isinstance(candidate.classifier, ForeignClassifier):
                model_info = _log_filtered_foreign(config, champion, candidate)
            elif is_filter:
                artifacts = {CLASSIFIER_ARTIFACT: candidate.classifier, DENOISER_ARTIFACT: candidate.denoiser}
                if candidate.scorer is not None:
                    artifacts[REJECTION_DETECTOR_ARTIFACT] = candidate.scorer
                if candidate.gate_scorer is not None:
                    artifacts[GATE_DETECTOR_ARTIFACT] = candidate.gate_scorer
                model_info = _log_pyfunc(
                    "filtered-classifier",
                    FilteredClassifierModel(info, candidate.reject_threshold, candidate.gate_threshold, candidate.gate_score_threshold), artifacts,
                    classifier_signature(info), config.classifier_name,
                )
            elif isinstance(candidate, ForeignClassifier):
                model_info = _log_foreign_pytorch(config, champion, candidate)
            else:
                model_info = _log_pyfunc(
                    "classifier", ClassifierModel(info), {CLASSIFIER_ARTIFACT: candidate},
                    classifier_signature(info), config.classifier_name,
                )
        created = str(model_info.registered_model_version)
        for key, value in version_tags.items():
            client.set_model_version_tag(config.classifier_name, created, key, str(value))
        _record_digests(client, config.classifier_name, created)
        client.set_registered_model_alias(config.classifier_name, alias, created)
    except BaseException:
        if created is not None:
            with contextlib.suppress(MlflowException):
                client.delete_model_version(config.classifier_name, created)
        raise
    return created


@_tracking_errors
def load_input_filter(config: TrackingConfig, alias: str = CHAMPION_ALIAS) -> Any:
    """`LoadedModels.input_filter` of the version at `alias`, downloading its models only when it filters. The drift
    detector of a filtered version watches the cleaned images."""
    if FILTER_TAG not in _version_by_alias(config, alias).tags:
        return None
    return load_models(config, alias).input_filter


@_tracking_errors
def version_tags(config: TrackingConfig, version: str) -> dict[str, str]:
    return dict(_client(config).get_model_version(config.classifier_name, str(version)).tags)


@_tracking_errors
def champion_version_or_none(config: TrackingConfig) -> str | None:
    """The champion's classifier version, None when no version has the alias yet (one registry read; an unreachable
    or failing store still raises)."""
    try:
        return str(_version_by_alias(config, CHAMPION_ALIAS).version)
    except ModelNotFoundError:
        return None


@_tracking_errors
def has_champion(config: TrackingConfig) -> bool:
    """Whether the classifier has a version with the champion alias (the store is checked to be reachable)."""
    return champion_version_or_none(config) is not None


@_tracking_errors
def champion_version(config: TrackingConfig) -> str:
    """The classifier version the champion alias points at."""
    return str(_version_by_alias(config, CHAMPION_ALIAS).version)


@_tracking_errors
def promote(config: TrackingConfig, version: str, reason: str) -> str:
    """Make `version` the champion (its autoencoder alias first, then the classifier's, the switch itself);
    returns the version it replaced, remembered on the new champion for `rollback`. Refuses (UnusableVersionError)
    a version without its `scanflow.sha256` tag: its logging did not finish."""
    client = _client(config)
    previous = champion_version(config)
    target = client.get_model_version(config.classifier_name, version)
    ae_version = _required_tag(config, target, AUTOENCODER_VERSION_TAG, "it was not registered by Scanflow")
    if DIGESTS_TAG not in target.tags:
        raise UnusableVersionError(
            f"{config.classifier_name} v{version} cannot be promoted: it has no {DIGESTS_TAG} tag, so its logging did not "
            "finish and its files could not be checked on load; register it again (`scanflow improve` or `scanflow train`)"
        )
    client.set_model_version_tag(config.classifier_name, version, PREVIOUS_CHAMPION_TAG, previous)
    client.set_model_version_tag(config.classifier_name, version, PROMOTION_REASON_TAG, reason[:4000])
    client.set_registered_model_alias(config.autoencoder_name, CHAMPION_ALIAS, ae_version)
    client.set_registered_model_alias(config.classifier_name, CHAMPION_ALIAS, version)
    with contextlib.suppress(MlflowException):
        if str(client.get_model_version_by_alias(config.classifier_name, CHALLENGER_ALIAS).version) == str(version):
            client.delete_registered_model_alias(config.classifier_name, CHALLENGER_ALIAS)
    return previous


def record_verdict(config: TrackingConfig, version: str, outcome: str) -> None:
    """Tag classifier `version` with its promotion verdict (`PromotionVerdict.outcome`): it was judged."""
    _client(config).set_model_version_tag(config.classifier_name, str(version), VERDICT_TAG, outcome)


def _check_restorable(client: MlflowClient, config: TrackingConfig, target: Any) -> None:
    """Refuse (UnusableVersionError) a version that may not become champion again: one that did not finish logging
    (status READY, its run FINISHED, its `scanflow.sha256` tag present) or that nobody judged (a `scanflow.verdict`
    on the version or its improve run, or a promotion; a trained version counts as judged by its training)."""
    name = f"{config.classifier_name} v{target.version}"
    fix = "roll back to a version that finished logging and was judged (a trained one, or a challenger with a verdict)"
    status = str(target.status)
    if status != "READY":
        raise UnusableVersionError(f"{name} cannot become champion: its registration is {status}, not READY; {fix}")
    if DIGESTS_TAG not in target.tags:
        raise UnusableVersionError(f"{name} cannot become champion: it has no {DIGESTS_TAG} tag, so its logging did not "
                                   f"finish and its files cannot be checked on load; {fix}")
    run = None
    if target.run_id:
        try:
            run = client.get_run(target.run_id)
        except MlflowException:
            run = None
    if run is None or run.info.status != "FINISHED":
        state = "missing" if run is None else run.info.status
        raise UnusableVersionError(f"{name} cannot become champion: the run that logged it ({target.run_id or 'none'}) is "
                                   f"{state}, not FINISHED, so the version may be incomplete; {fix}")
    trained = KIND_TAG not in target.tags  # `register_models` (a training) sets no kind; `register_candidate` does
    promoted = PROMOTION_REASON_TAG in target.tags  # `promote` runs only on a verdict
    if not (trained or promoted or VERDICT_TAG in target.tags or VERDICT_TAG in run.data.tags):
        raise UnusableVersionError(f"{name} cannot become champion: it is a {target.tags[KIND_TAG]} challenger nobody judged (no "
                                   f"{VERDICT_TAG} tag on it or its run {target.run_id}); {fix}")


@_tracking_errors
def rollback(config: TrackingConfig, to_version: str | None = None) -> tuple[str, str]:
    """Point the champion alias back at the version the current champion replaced (or at `to_version`).
    Returns (from_version, to_version). Refuses (UnusableVersionError) a version that did not finish logging or was
    never judged (see `_check_restorable`), before any alias or tag is written."""
    client = _client(config)
    current = _version_by_alias(config, CHAMPION_ALIAS)
    if to_version is None:
        to_version = current.tags.get(PREVIOUS_CHAMPION_TAG)
        if to_version is None:
            raise ModelNotFoundError(
                f"{config.classifier_name} v{current.version} replaced no earlier champion: nothing to roll back to "
                "(name a version with --to)"
            )
    try:
        target = client.get_model_version(config.classifier_name, str(to_version))
    except MlflowException as error:
        raise ModelNotFoundError(f"{config.classifier_name} has no version {to_version}: list them in the MLflow UI") from error
    ae_version = _required_tag(config, target, AUTOENCODER_VERSION_TAG, "it was not registered by Scanflow")
    _required_tag(config, target, DETECTOR_TAG, "no drift detector was logged beside it")
    if str(target.version) == str(current.version):
        raise ModelNotFoundError(f"{config.classifier_name} v{to_version} already is the champion")
    _check_restorable(client, config, target)
    client.set_model_version_tag(config.classifier_name, str(current.version), ROLLED_BACK_TAG, "true")
    client.set_registered_model_alias(config.autoencoder_name, CHAMPION_ALIAS, ae_version)
    client.set_registered_model_alias(config.classifier_name, CHAMPION_ALIAS, str(target.version))
    return str(current.version), str(target.version)


@dataclass(frozen=True)
class ServedModel:
    """A registered classifier version loaded as its MLflow pyfunc (what a serving endpoint runs)."""

    model: Any
    version: str
    info: Any


@_tracking_errors
def load_served_model(config: TrackingConfig, alias: str = CHAMPION_ALIAS) -> ServedModel:
    """The pyfunc of the classifier at `alias`, with the dataset description it was trained for; loaded once per
    process and version (`_loaded_once`)."""
    from scanflow.data import dataset_info
    from scanflow.tracking.adopted import _adopted_contract, _adopted_parts

    version = _version_by_alias(config, alias)
    contract = _adopted_contract(version)
    if contract is not None:
        from scanflow.adopt import AdoptedServing
        from scanflow.improve.filter import FilteredClassifier

        def load_adopted() -> Any:
            with tempfile.TemporaryDirectory() as tmp:
                local = _download_verified(_client(config), config.classifier_name, version, tmp)
                classifier, denoiser, gate = _adopted_parts(local, version, contract)
            served = FilteredClassifier(classifier, denoiser, gate_threshold=gate) if denoiser is not None else classifier
            return AdoptedServing(served)

        info = contract.info(config.classifier_name, f"models:/{config.classifier_name}/{version.version}")
        return ServedModel(_loaded_once("served-adopted", config, version, load_adopted), str(version.version), info)

    def load() -> Any:
        with tempfile.TemporaryDirectory() as tmp, _quiet_mlflow():
            local = _download_verified(_client(config), config.classifier_name, version, tmp)
            return mlflow.pyfunc.load_model(local)

    model = _loaded_once("served", config, version, load)
    return ServedModel(model, str(version.version), dataset_info(version.tags.get(DATASET_TAG, "default")))

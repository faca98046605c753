"""Every MLflow call Scanflow makes: connection, runs, metrics, dataset lineage, logged models, registry aliases.

Models are logged as MLflow pyfuncs from code (`scanflow/pyfunc_model.py`) over Scanflow's own weight files,
with explicit pip requirements (no requirement inference, no `torch.export`); a version loads wherever Scanflow is
installed. The sha256 of every stored file is recorded in the registry at logging and checked before loading
(`TamperedArtifactError`); see docs/decisions/0003-no-code-from-storage.md. Functions take a `run_id` rather than relying on MLflow's thread-local active run, so Prefect tasks may log into
a run their flow opened.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import mlflow
import numpy as np
import requests
import torch
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from scanflow.artifacts import digests_tag, file_digests, sha256_file, verify_digests
from scanflow.config import CHALLENGER_ALIAS, CHAMPION_ALIAS, TrackingConfig
from scanflow.data import DatasetInfo, LabeledImages, dataset_info
from scanflow.drift.base import Detector
from scanflow.drift.known import KnownShift
from scanflow.errors import (
    ChampionMismatchError,
    ModelNotFoundError,
    ScanflowError,
    ServiceUnavailableError,
    TrackingUnavailableError,
    UnknownDatasetError,
    UnusableVersionError,
)
from scanflow.orphans import could_not_end, mark_orphans, owner_tags
from scanflow.models import Autoencoder, Classifier, Denoiser, SavableModel
from scanflow.serving import (
    AUTOENCODER_ARTIFACT,
    CLASSIFIER_ARTIFACT,
    CONFIG_ARTIFACT,
    DENOISER_ARTIFACT,
    PYFUNC_CODE,
    REJECTION_DETECTOR_ARTIFACT,
    AutoencoderModel,
    ClassifierModel,
    FilteredClassifierModel,
    autoencoder_signature,
    classifier_signature,
)
from scanflow.tags import (
    ABORTED_REASON_TAG,
    ABORTED_TAG,
    ADOPTED_TAG,
    ADOPTED_FROM_TAG,
    ADOPTION_RUN_TAG,
    AUTOENCODER_VERSION_TAG,
    BATCH_ID_TAG,
    CLASSES_TAG,
    CONTRACT_TAG,
    DATASET_TAG,
    DETECTOR_DIGEST_TAG,
    DETECTOR_NAME_TAG,
    DETECTOR_TAG,
    DIGESTS_TAG,
    FILTER_GATE_TAG,
    FILTER_TAG,
    INPUT_SHAPE_TAG,
    IS_DRIFT_TAG,
    KIND_TAG,
    KNOWN_SHIFT_TAG_PREFIX,
    MODEL_VERSION_TAG,
    PARENT_TAG,
    PREVIOUS_CHAMPION_TAG,
    PROMOTION_REASON_TAG,
    REFERENCE_TAG,
    ROLLED_BACK_TAG,
    RUN_ID_TAG,
    VERDICT_TAG,
)

DETECTOR_ARTIFACT_PATH = "detector"
DETECTOR_FILE = "detector.pt"

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


@contextlib.contextmanager
def tracked_run(
    config: TrackingConfig, run_name: str | None = None, tags: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Open an MLflow run (a training, a detected batch, a decision...) tagged with its owner process
    (`scanflow.orphans`); yields its run id; ends it FINISHED, or FAILED if the body raises (tagged
    `scanflow.aborted=true` with the message when a ScanflowError, bad input, ended it).

    When the server does not answer at the end, the run is left to `mark_orphans` (the next connect, here or in a
    later process, ends it FAILED) and the body's own error is raised, not the failed ending's."""
    experiment_id = connect(config)
    client = _client(config)
    run = _tracking_errors(client.create_run)(experiment_id, run_name=run_name, tags={**owner_tags(), **(tags or {})})
    run_id = run.info.run_id
    try:
        yield run_id
    except BaseException as error:
        if isinstance(error, TrackingUnavailableError):
            could_not_end(run_id)  # the server just failed to answer: no further minute spent on it
        else:
            if isinstance(error, ScanflowError) and not isinstance(error, ServiceUnavailableError):
                # Bad input found only after the run was opened: the run says so, and is never mistaken for a result.
                with contextlib.suppress(Exception):
                    client.set_tag(run_id, ABORTED_TAG, "true")
                    client.set_tag(run_id, ABORTED_REASON_TAG, str(error)[:4000])
            try:
                client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            except (MlflowException, requests.exceptions.RequestException) as ending:
                if not _transport_failure(ending):
                    raise
                could_not_end(run_id)
        raise
    try:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    except (MlflowException, requests.exceptions.RequestException) as error:
        if _transport_failure(error):
            could_not_end(run_id)
            raise unavailable(error) from error
        raise


@contextlib.contextmanager
def _active_run(run_id: str) -> Iterator[None]:
    """Make `run_id` MLflow's active run in this thread for fluent calls (log_model, log_input).

    Leaving re-marks the run RUNNING: its final status is set once, by `tracked_run`.
    """
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    # A caller's own `mlflow.set_experiment` (a script that also logs its models) would make MLflow refuse a run of
    # Scanflow's experiment: the caller's choice is set aside for this block and restored after it.
    from mlflow.tracking import fluent

    saved_experiment, saved_env = fluent._active_experiment_id, os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    fluent._active_experiment_id = None
    try:
        mlflow.start_run(run_id=run_id)
        try:
            yield
        finally:
            mlflow.end_run(status=RunStatus.to_string(RunStatus.RUNNING))
    finally:
        fluent._active_experiment_id = saved_experiment
        if saved_env is not None:
            os.environ["MLFLOW_EXPERIMENT_ID"] = saved_env


@_tracking_errors
def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    MlflowClient().log_batch(run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()])


@_tracking_errors
def log_metrics(run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    MlflowClient().log_batch(
        run_id,
        metrics=[
            mlflow.entities.Metric(key, float(value), int(mlflow.utils.time.get_current_time_millis()), step or 0)
            for key, value in metrics.items()
        ],
    )


@_tracking_errors
def set_tags(run_id: str, tags: Mapping[str, str]) -> None:
    MlflowClient().log_batch(run_id, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()])


@_tracking_errors
def log_dataset(run_id: str, data: LabeledImages, context: str) -> None:
    """Record which images a run used (`mlflow.log_input`): name, split, source and a content digest."""
    with _quiet_mlflow():
        dataset = mlflow.data.from_numpy(
            features=data.images.numpy(),
            targets=data.labels.numpy(),
            source=_dataset_source(data),
            name=f"{data.info.name}:{data.split}",
        )
    with _active_run(run_id):
        mlflow.log_input(dataset, context=context, tags={"source": data.info.source})


def _dataset_source(data: LabeledImages) -> Any:
    from mlflow.data.code_dataset_source import CodeDatasetSource

    if Path(data.info.source).exists():
        return data.info.source
    # Bundled data (scikit-learn's digits) has no file to point at: record where it comes from instead.
    return CodeDatasetSource(tags={"origin": data.info.source})


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

        return FilteredClassifier(self.classifier, self.denoiser, gate_threshold=self.gate_threshold)


@_tracking_errors
def load_models(config: TrackingConfig, alias: str = CHAMPION_ALIAS) -> LoadedModels:
    """Load the classifier at `alias` and the autoencoder version recorded beside it, as Scanflow models."""
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
    gate = version.tags.get(FILTER_GATE_TAG, "none")
    return LoadedModels(
        classifier, autoencoder, str(version.version), str(ae_version), version.tags.get(DATASET_TAG, "default"),
        denoiser, None if gate == "none" else float(gate), dict(version.tags),
    )


@_tracking_errors
def download_run_artifact(tracking_uri: str, uri: str, dst: str) -> str:
    """Download `runs:/RUN_ID/PATH` into `dst` from the run's own artifact store; returns the local path.

    MLflow's `runs:/` resolver also looks for a logged model of that name, and when both fail it says only that the
    path may be wrong: a store that did not answer looked like a missing file. Here its error comes through."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    run_id, _, path = uri.removeprefix("runs:/").partition("/")
    if not uri.startswith("runs:/") or not run_id or not path:
        raise ModelNotFoundError(f"{uri!r} is not a runs:/RUN_ID/PATH artifact URI: retrain with `scanflow train`")
    artifact_uri = mlflow_client(tracking_uri).get_run(run_id).info.artifact_uri
    folder, _, name = path.rpartition("/")
    # The repository of the artifact's folder: the file lands as dst/NAME, as with the runs:/ resolver.
    repository = get_artifact_repository(f"{artifact_uri}/{folder}" if folder else artifact_uri, tracking_uri=tracking_uri)
    return repository.download_artifacts(name, dst)


def log_detector(run_id: str, detector: Detector) -> tuple[str, str]:
    """Save a fitted detector into the run's artifacts; returns its `runs:/` URI and its sha256 (a `digests_tag`)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = detector.save(Path(tmp) / DETECTOR_FILE)
        digest = digests_tag({DETECTOR_FILE: sha256_file(path)})
        MlflowClient().log_artifact(run_id, str(path), artifact_path=DETECTOR_ARTIFACT_PATH)
    return f"runs:/{run_id}/{DETECTOR_ARTIFACT_PATH}/{DETECTOR_FILE}", digest


@_tracking_errors
def load_detector(config: TrackingConfig, alias: str = CHAMPION_ALIAS) -> tuple[Detector, str]:
    """The detector logged beside the classifier version at `alias`, and that version; its file is checked against
    the sha256 recorded at logging (TamperedArtifactError when it differs)."""
    version = _version_by_alias(config, alias)
    uri = _required_tag(config, version, DETECTOR_TAG, "no drift detector was logged beside it")
    with tempfile.TemporaryDirectory() as tmp:
        path = download_run_artifact(config.tracking_uri, uri, tmp)
        verify_digests(tmp, version.tags.get(DETECTOR_DIGEST_TAG), f"the detector of {config.classifier_name} version {version.version} ({uri})")
        detector = Detector.load(path)
    contract = _adopted_contract(version)
    if contract is not None:  # an adopted model's detector is stored without it: its own loader brings it
        detector.classifier = load_foreign_classifier(config.tracking_uri, version, contract)
    return detector, str(version.version)


@_tracking_errors
def log_detection(config: TrackingConfig, summary: Mapping[str, Any], grid_png: bytes | None = None, extra_tags: Mapping[str, str] | None = None) -> str:
    """One MLflow run per detected batch: verdict as metrics and tags (plus `extra_tags`, e.g. the Prefect flow run),
    the JSON summary and the critical-sample grid as artifacts. Returns the run id (the Evidently report is added
    later with `log_artifact_file`)."""
    tags = {
        **(extra_tags or {}),
        KIND_TAG: "detect",
        BATCH_ID_TAG: str(summary["batch_id"]),
        MODEL_VERSION_TAG: str(summary["model_version"]),
        IS_DRIFT_TAG: str(bool(summary["is_drift"])).lower(),
        DETECTOR_NAME_TAG: str(summary["detector"]),
    }
    with tracked_run(config, f"detect-{summary['batch_id']}", tags) as run_id:
        client = _client(config)
        log_metrics(run_id, {k: float(summary[k]) for k in ("statistic", "p_value", "threshold", "n_critical", "n")})
        client.log_dict(run_id, dict(summary), "drift_result.json")
        if grid_png is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "critical_samples.png"
                path.write_bytes(grid_png)
                client.log_artifact(run_id, str(path))
    return run_id


@_tracking_errors
def log_artifact_file(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    MlflowClient().log_artifact(run_id, str(path), artifact_path=artifact_path)



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
            if is_filter and isinstance(candidate.classifier, ForeignClassifier):
                model_info = _log_filtered_foreign(config, champion, candidate)
            elif is_filter:
                artifacts = {CLASSIFIER_ARTIFACT: candidate.classifier, DENOISER_ARTIFACT: candidate.denoiser}
                if candidate.scorer is not None:
                    artifacts[REJECTION_DETECTOR_ARTIFACT] = candidate.scorer
                model_info = _log_pyfunc(
                    "filtered-classifier", FilteredClassifierModel(info, candidate.reject_threshold, candidate.gate_threshold), artifacts,
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


KNOWN_SHIFT_ARTIFACT = "known-shift.npz"


@_tracking_errors
def log_known_shift(config: TrackingConfig, shift: KnownShift) -> None:
    """Keep `shift` as `known-shift.npz` in its decision's run and list that run on the classifier version it
    applies to (tag `scanflow.known_shift.<batch_id>` = run id): the version's detector will not ask about it again."""
    client = _client(config)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / KNOWN_SHIFT_ARTIFACT
        path.write_bytes(shift.to_bytes())
        client.log_artifact(shift.mlflow_run_id, str(path))
    key = KNOWN_SHIFT_TAG_PREFIX + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in shift.batch_id)
    client.set_model_version_tag(config.classifier_name, shift.model_version, key, shift.mlflow_run_id)


@_tracking_errors
def known_shifts(config: TrackingConfig, version: str) -> list[KnownShift]:
    """The shifts decided about for classifier `version` (see `log_known_shift`), in batch id order."""
    run_ids = [run_id for key, run_id in sorted(version_tags(config, version).items()) if key.startswith(KNOWN_SHIFT_TAG_PREFIX)]
    return [_known_shift_record(config.tracking_uri, run_id) for run_id in run_ids]


@functools.lru_cache(maxsize=256)
def _known_shift_record(tracking_uri: str, run_id: str) -> KnownShift:
    """One run's known-shift record, downloaded once per process: a record never changes after it is logged (the
    version's tags, read every time, say which records exist)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = download_run_artifact(tracking_uri, f"runs:/{run_id}/{KNOWN_SHIFT_ARTIFACT}", tmp)
        shift = KnownShift.from_bytes(Path(path).read_bytes())
    shift.signature.flags.writeable = False
    return shift


@_tracking_errors
def log_json(run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
    MlflowClient().log_dict(run_id, dict(data), artifact_file)


@dataclass(frozen=True)
class ServedModel:
    """A registered classifier version loaded as its MLflow pyfunc (what a serving endpoint runs)."""

    model: Any
    version: str
    info: Any


@_tracking_errors
def load_served_model(config: TrackingConfig, alias: str = CHAMPION_ALIAS) -> ServedModel:
    """The pyfunc of the classifier at `alias`, with the dataset description it was trained for."""
    from scanflow.data import dataset_info

    version = _version_by_alias(config, alias)
    contract = _adopted_contract(version)
    if contract is not None:
        from scanflow.adopt import AdoptedServing
        from scanflow.improve.filter import FilteredClassifier

        with tempfile.TemporaryDirectory() as tmp:
            local = _download_verified(_client(config), config.classifier_name, version, tmp)
            classifier, denoiser, gate = _adopted_parts(local, version, contract)
        served = FilteredClassifier(classifier, denoiser, gate_threshold=gate) if denoiser is not None else classifier
        info = contract.info(config.classifier_name, f"models:/{config.classifier_name}/{version.version}")
        return ServedModel(AdoptedServing(served), str(version.version), info)
    with tempfile.TemporaryDirectory() as tmp, _quiet_mlflow():
        local = _download_verified(_client(config), config.classifier_name, version, tmp)
        model = mlflow.pyfunc.load_model(local)
    return ServedModel(model, str(version.version), dataset_info(version.tags.get(DATASET_TAG, "default")))


@_tracking_errors
def log_predictions(
    config: TrackingConfig, batch_id: str, model_version: str, labels: np.ndarray, classes: Sequence[str],
    tags: Mapping[str, str] | None = None,
) -> str:
    """One MLflow run per predicted batch: the labels (CSV: batch index, label, class name) and their lineage."""
    run_tags = {KIND_TAG: "predict", BATCH_ID_TAG: batch_id, MODEL_VERSION_TAG: model_version, **(tags or {})}
    with tracked_run(config, f"predict-{batch_id}", run_tags) as run_id:
        log_metrics(run_id, {"n": float(len(labels)), "n_rejected": float(np.sum(labels < 0))})
        rows = ["batch_index,label,class"] + [
            f"{i},{int(label)},{classes[int(label)] if label >= 0 else 'rejected'}" for i, label in enumerate(labels)
        ]
        _client(config).log_text(run_id, "\n".join(rows) + "\n", "predictions.csv")
    return run_id


# ------------------------------------------------------------------------------------------ adopted models
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
    """A registered adopted model as a `ForeignClassifier` (for a filtered version, the model behind the filter);
    with `verify`, its files are checked against the sha256 recorded at adoption first (TamperedArtifactError)."""
    client = mlflow_client(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        if verify:
            local = _download_verified(client, version.name, version, tmp)
        else:
            local = mlflow.artifacts.download_artifacts(f"models:/{version.name}/{version.version}", dst_path=tmp)
        return _adopted_parts(local, version, contract)[0]


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

"""Every MLflow call Scanflow makes: connection, runs, metrics, dataset lineage, logged models, registry aliases.

- :mod:`scanflow.tracking.client`: talking to the server: reachability, `mlflow_client` (the only place an
  `MlflowClient` is made), `connect`, and transport failures as `TrackingUnavailableError`;
- :mod:`scanflow.tracking.runs`: tracked runs and what is logged into them: params, metrics, tags, datasets, JSON and
  artifact files, detectors, detections, predictions, known-shift records;
- :mod:`scanflow.tracking.registry`: the model registry: contracts, registering models and candidates, aliases and
  the champion, promotion, verdicts, rollback, loading models, detectors, served models and input filters; every
  stored file is checked against the sha256 recorded at logging (`TamperedArtifactError`);
- :mod:`scanflow.tracking.adopted`: adopted models, registered elsewhere and supervised by Scanflow.

Everything that was importable from ``scanflow.tracking`` still is.
"""

from scanflow.tags import AUTOENCODER_VERSION_TAG, DIGESTS_TAG, KNOWN_SHIFT_TAG_PREFIX
from scanflow.tracking.adopted import (
    embedding_model_digests,
    load_foreign_classifier,
    model_declarations,
    register_adoption,
    resolve_model_uri,
)
from scanflow.tracking.client import REACHABLE_BACKOFF_S, check_reachable, connect, mlflow_client, unavailable
from scanflow.tracking.registry import (
    LoadedModels,
    ModelContract,
    RegisteredVersions,
    ServedModel,
    champion_version,
    champion_version_or_none,
    check_champion_replaceable,
    contract_tags,
    has_champion,
    load_detector,
    load_input_filter,
    load_models,
    load_served_model,
    promote,
    record_verdict,
    register_candidate,
    register_models,
    rollback,
    version_tags,
)
from scanflow.tracking.runs import (
    DETECTOR_ARTIFACT_PATH,
    DETECTOR_FILE,
    KNOWN_SHIFT_ARTIFACT,
    download_run_artifact,
    known_shifts,
    log_artifact_file,
    log_dataset,
    log_detection,
    log_detector,
    log_json,
    log_known_shift,
    log_metrics,
    log_params,
    log_predictions,
    set_tags,
    tracked_run,
)

__all__ = [
    "AUTOENCODER_VERSION_TAG", "DETECTOR_ARTIFACT_PATH", "DETECTOR_FILE", "DIGESTS_TAG", "KNOWN_SHIFT_ARTIFACT",
    "KNOWN_SHIFT_TAG_PREFIX", "REACHABLE_BACKOFF_S", "LoadedModels", "ModelContract", "RegisteredVersions", "ServedModel",
    "champion_version", "champion_version_or_none", "check_champion_replaceable", "check_reachable", "connect",
    "contract_tags", "download_run_artifact", "has_champion", "known_shifts", "load_detector", "load_foreign_classifier", "embedding_model_digests",
    "load_input_filter", "load_models", "load_served_model", "log_artifact_file", "log_dataset", "log_detection",
    "log_detector", "log_json", "log_known_shift", "log_metrics", "log_params", "log_predictions", "mlflow_client",
    "model_declarations", "promote", "record_verdict", "register_adoption", "register_candidate", "register_models",
    "resolve_model_uri", "rollback", "set_tags", "tracked_run", "unavailable", "version_tags",
]

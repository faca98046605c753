"""The adopt flow: put a registered model Scanflow did not train under supervision.

Run it as `scanflow adopt MODEL_URI --reference PATH` or as the `adopt` deployment. Everything is checked before
anything is written: the model's declarations against the flags, the reference images against the contract, and
the model's output on a few of them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.retries import IO_RETRIES
from flows.settings import storage_store, tracking_config
from scanflow import tracking as scanflow_tracking
from scanflow.adopt import (
    AdoptionError,
    ForeignClassifier,
    adoption_epochs,
    InputContract,
    ReferenceRecord,
    check_outputs,
    actions_for,
    detector_components,
    parse_size,
    reference_splits,
    resolve_contract,
)
from scanflow.config import TrackingConfig
from scanflow.drift.autoencoder import AutoencoderDetector
from scanflow.images import ImageContract, ImageSet, read_images
from scanflow.models import Autoencoder
from scanflow.train import TrainConfig, train_autoencoder
from scanflow.tags import ADOPTED_FROM_TAG, KIND_TAG


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def resolve_version(config: TrackingConfig, model_uri: str) -> Any:
    return scanflow_tracking.resolve_model_uri(config.tracking_uri, model_uri)


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def embedder_digests(config: TrackingConfig, model_uri: str) -> str:
    return scanflow_tracking.embedding_model_digests(config.tracking_uri, model_uri)


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def read_contract(config: TrackingConfig, version: Any, **flags: Any) -> InputContract:
    flavours, signature, metadata = scanflow_tracking.model_declarations(config.tracking_uri, version)
    contract = resolve_contract(flavours, signature, metadata, **flags)
    print(f"input contract: {contract.channels}x{contract.height}x{contract.width}, {len(contract.classes)} classes, "
          f"mean {list(contract.mean)}, std {list(contract.std)}, output {contract.output} ({contract.flavour})"
          + (f", embedding layer {contract.embedding!r}" if contract.embedding else "")
          + (f", embedding model {contract.embedding_model}" if contract.embedding_model else ""))
    return contract


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def read_reference(source: str, contract: InputContract, on_bad: str, storage: str | None) -> ImageSet:
    images = read_images(source, ImageContract(contract.channels, contract.height, contract.width), classes=contract.classes,
                         on_bad=on_bad, store=storage_store(storage))
    print(f"reference: {len(images)} images from {source}" + "".join(f"; {line}" for line in images.describe()))
    return images


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def load_model(config: TrackingConfig, version: Any, contract: InputContract) -> ForeignClassifier:
    return scanflow_tracking.load_foreign_classifier(config.tracking_uri, version, contract, verify=False)


@task(cache_policy=NO_CACHE)
def fit_models(classifier: ForeignClassifier, reference: ImageSet, info: Any, epochs: int | None, seed: int) -> tuple[Autoencoder, AutoencoderDetector]:
    fit, calibration = reference_splits(reference.images, reference.labels, info, seed)
    autoencoder, history = train_autoencoder(fit, TrainConfig(epochs=epochs or adoption_epochs(len(fit)), seed=seed), progress=False)
    print(f"autoencoder: {len(history)} epochs on {len(fit)} reference images, final loss {history[-1].loss:.5f}")
    detector = AutoencoderDetector(classifier, autoencoder, components=detector_components(classifier.contract), seed=seed)
    detector.fit(fit.images, calibration=calibration.images, info=info)
    print(f"detector fitted ({classifier.evidence}); calibrated on {len(calibration)} held-out reference images")
    return autoencoder, detector


@task(cache_policy=NO_CACHE)
def register(run_id: str, config: TrackingConfig, version: Any, contract: InputContract, autoencoder: Autoencoder,
             detector: AutoencoderDetector, info: Any, reference: ReferenceRecord) -> str:
    return scanflow_tracking.register_adoption(run_id, config, version, contract, autoencoder, detector, info, reference)


@flow(name="adopt", log_prints=True, persist_result=True, result_serializer="json")
def adopt_flow(
    model_uri: str,
    reference: str,
    classes: list[str] | None = None,
    input_size: str | None = None,
    channels: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    output: str | None = None,
    on_bad: str = "refuse",
    autoencoder_epochs: int | None = None,
    seed: int = 0,
    name: str | None = None,
    tracking: str | None = None,
    storage: str | None = None,
    embedding_layer: str | None = None,
    embedding_model: str | None = None,
) -> dict:
    """Adopt `model_uri` (models:/NAME/VERSION or models:/NAME@ALIAS) under `name` (default: the model's registered
    name; commands then find it with SCANFLOW_MODEL_NAME=name): fit the autoencoder and the detector on the
    `reference` images (a folder, .npy/.npz or s3:// prefix), log them, and make the version the champion.
    Flags complete what the model's signature and metadata do not declare; a contradiction is refused.
    `embedding_layer`: a pytorch model's layer (a `named_modules()` name) whose output the detector also watches.
    `embedding_model`: instead, a registered MLflow model (models:/NAME/VERSION or @ALIAS, pinned to its version)
    that maps the model's input to its embedding [N, D], for a model whose layers Scanflow cannot read (a pyfunc)."""
    config = tracking_config(tracking)
    version = resolve_version(config, model_uri)
    config = config.for_model(name or version.name)
    flags = {"classes": tuple(classes) if classes else None, "input_size": parse_size(input_size) if input_size else None,
             "channels": channels, "mean": tuple(mean) if mean else None, "std": tuple(std) if std else None, "output": output,
             "embedding": embedding_layer}
    if embedding_model is not None:
        embedder = resolve_version(config, embedding_model)
        flags["embedding_model"] = f"models:/{embedder.name}/{embedder.version}"
        flags["embedding_model_sha256"] = embedder_digests(config, flags["embedding_model"])
    contract = read_contract(config, version, **flags)
    images = read_reference(reference, contract, on_bad, storage)
    info = contract.info(config.classifier_name, model_uri)
    classifier = load_model(config, version, contract)
    check_outputs(classifier, images.images)
    autoencoder, detector = fit_models(classifier, images, info, autoencoder_epochs, seed)
    tags = {"prefect.flow_run_id": str(flow_run.id or ""), KIND_TAG: "adopt", ADOPTED_FROM_TAG: model_uri}
    with scanflow_tracking.tracked_run(config, run_name=f"adopt-{config.classifier_name}", tags=tags) as run_id:
        scanflow_tracking.log_params(run_id, {"model_uri": model_uri, "reference": reference, "n_reference": len(images),
                                              "contract": contract.to_json()[:6000], "evidence": classifier.evidence})
        record = ReferenceRecord.of(images, on_bad)
        supervised = register(run_id, config, version, contract, autoencoder, detector, info, record)
    actions, actions_note = actions_for(contract, record)
    summary = {
        "model": config.classifier_name, "version": supervised, "adopted_from": model_uri, "mlflow_run_id": run_id,
        "reference_images": len(images), "conversions": list(images.describe()), "evidence": classifier.evidence,
        "contract": contract.to_json(), "actions": list(actions), "actions_note": actions_note,
    }
    create_markdown_artifact(
        f"# Adopted {model_uri}\n\n`{config.classifier_name}` v{supervised} is the champion, watched by a detector fitted on "
        f"{len(images)} reference images ({classifier.evidence}).", key="adopt-summary", description="what the adoption did")
    print(f"{model_uri} is now supervised as {config.classifier_name} v{supervised} @champion")
    return summary


__all__ = ["adopt_flow", "AdoptionError"]

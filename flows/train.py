"""The train flow: load data, train classifier, train autoencoder, evaluate, fit the drift detector, register.

Run it as `python flows/train.py [DATASET]`, `scanflow train`, or as the `train` deployment.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.retries import IO_RETRIES
from flows.settings import tracking_config
from scanflow import tracking as scanflow_tracking
from scanflow.config import TrackingConfig
from scanflow.data import DatasetInfo, LabeledImages, hold_out_calibration, load_train_test
from scanflow.drift.autoencoder import AutoencoderDetector, fit_detector
from scanflow.evaluate import Evaluation, evaluate_classifier
from scanflow.models import Autoencoder, Classifier
from scanflow.train import EpochMetrics, TrainConfig, train_autoencoder, train_classifier
from scanflow.tags import DATASET_TAG, RUN_ID_TAG, TEST_ACCURACY_TAG


@task(cache_policy=NO_CACHE)
def load_data(dataset: str, data_dir: str | None, allow_download: bool, seed: int) -> tuple[LabeledImages, LabeledImages, LabeledImages]:
    train, test = load_train_test(dataset, data_dir=data_dir, allow_download=allow_download, seed=seed)
    fit, calibration = hold_out_calibration(train, seed=seed)
    print(
        f"{train.info.name}: {len(fit)} training images, {len(calibration)} held out to calibrate the drift detector, "
        f"{len(test)} test images, from {train.info.source}"
    )
    return fit, calibration, test


def _epoch_logger(run_id: str, prefix: str, epochs: int, progress_id) -> callable:
    def on_epoch(metrics: EpochMetrics) -> None:
        scanflow_tracking.log_metrics(run_id, metrics.as_metrics(prefix), step=metrics.epoch)
        update_progress_artifact(artifact_id=progress_id, progress=100.0 * metrics.epoch / epochs)
        print(f"{prefix} epoch {metrics.epoch}/{epochs}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.as_metrics(prefix).items()))

    return on_epoch


@task(cache_policy=NO_CACHE)
def train_classifier_step(train: LabeledImages, test: LabeledImages, config: TrainConfig, run_id: str) -> Classifier:
    epochs = config.resolved_epochs(len(train))
    scanflow_tracking.log_params(run_id, {f"classifier_{k}": v for k, v in config.as_params(len(train)).items()})
    progress = create_progress_artifact(0.0, key="classifier-training", description="classifier epochs done")
    model, _ = train_classifier(train, config, validation=test, on_epoch=_epoch_logger(run_id, "classifier", epochs, progress))
    return model


@task(cache_policy=NO_CACHE)
def train_autoencoder_step(train: LabeledImages, config: TrainConfig, latent_dim: int, run_id: str) -> Autoencoder:
    epochs = config.resolved_epochs(len(train))
    params = {**config.as_params(len(train)), "latent_dim": latent_dim}
    scanflow_tracking.log_params(run_id, {f"autoencoder_{k}": v for k, v in params.items()})
    progress = create_progress_artifact(0.0, key="autoencoder-training", description="autoencoder epochs done")
    model, _ = train_autoencoder(train, config, latent_dim, on_epoch=_epoch_logger(run_id, "autoencoder", epochs, progress))
    return model


@task(cache_policy=NO_CACHE)
def evaluate_step(classifier: Classifier, autoencoder: Autoencoder, test: LabeledImages, run_id: str) -> Evaluation:
    evaluation = evaluate_classifier(classifier, test)
    reconstruction = float(autoencoder.reconstruction_error(test.images).mean())
    scanflow_tracking.log_metrics(run_id, {"test_accuracy": evaluation.accuracy, "test_reconstruction_mse": reconstruction})
    print(f"test accuracy {evaluation.accuracy:.4f} on {evaluation.n} images; autoencoder test MSE {reconstruction:.5f}")
    return evaluation


@task(cache_policy=NO_CACHE)
def fit_detector_step(
    classifier: Classifier, autoencoder: Autoencoder, train: LabeledImages, calibration: LabeledImages, seed: int, run_id: str
) -> AutoencoderDetector:
    detector = fit_detector(classifier, autoencoder, train, calibration, seed=seed)
    scanflow_tracking.log_params(run_id, {"detector": detector.name, "detector_alpha": detector.alpha, "detector_sample_fpr": detector.sample_fpr})
    scanflow_tracking.log_metrics(run_id, {"detector_sample_threshold": detector.sample_threshold})
    return detector


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def check_champion_step(config: TrackingConfig, info: DatasetInfo, force: bool) -> None:
    """Refuse to replace a champion of another dataset, class set or input shape unless `force` (before any run)."""
    scanflow_tracking.check_champion_replaceable(config, info, force)


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def register_step(
    run_id: str, config: TrackingConfig, classifier: Classifier, autoencoder: Autoencoder,
    detector: AutoencoderDetector, train: LabeledImages, evaluation: Evaluation,
) -> scanflow_tracking.RegisteredVersions:
    tags = {TEST_ACCURACY_TAG: f"{evaluation.accuracy:.4f}", RUN_ID_TAG: run_id}
    return scanflow_tracking.register_models(run_id, config, classifier, autoencoder, train, tags=tags, detector=detector)


@flow(name="train", log_prints=True, persist_result=True, result_serializer="json")
def train_flow(
    dataset: str = "default",
    epochs: int | None = None,
    autoencoder_epochs: int | None = None,
    latent_dim: int = 32,
    seed: int = 0,
    data_dir: str | None = None,
    allow_download: bool = False,
    register_models: bool = True,
    tracking: str | None = None,
    force: bool = False,
    model: str | None = None,
) -> dict:
    """Train the classifier and its autoencoder on `dataset`, fit their drift detector, track the run in MLflow and
    register both models as champion (the detector is logged beside them).

    `epochs=None` trains for about 150k images (3 epochs of Fashion-MNIST), `autoencoder_epochs=None` twice as
    long. `tracking` names an MLflowTracking block (default: the environment). Returns a JSON-able summary.

    Before the training's run is created, a registering training refuses (ChampionMismatchError) to replace a
    champion trained on another dataset, class set or input shape; `force=True` replaces it. `model`: the registered
    classifier's name (default: the tracking settings'; its autoencoder is named after it).
    """
    config = tracking_config(tracking)
    config = config.for_model(model) if model else config
    train, calibration, test = load_data(dataset, data_dir, allow_download, seed)
    if register_models:
        check_champion_step(config, train.info, force)
    prefect_tags = {"prefect.flow_run_id": str(flow_run.id or ""), DATASET_TAG: train.info.name}
    with scanflow_tracking.tracked_run(config, run_name=f"train-{train.info.name}", tags=prefect_tags) as run_id:
        scanflow_tracking.log_dataset(run_id, train, context="training")
        scanflow_tracking.log_dataset(run_id, calibration, context="calibration")
        scanflow_tracking.log_dataset(run_id, test, context="evaluation")
        classifier = train_classifier_step(train, test, TrainConfig(epochs=epochs, seed=seed), run_id)
        autoencoder = train_autoencoder_step(train, TrainConfig(epochs=autoencoder_epochs, seed=seed).for_autoencoder(len(train)), latent_dim, run_id)
        evaluation = evaluate_step(classifier, autoencoder, test, run_id)
        detector = fit_detector_step(classifier, autoencoder, train, calibration, seed, run_id)
        versions = register_step(run_id, config, classifier, autoencoder, detector, train, evaluation) if register_models else None
    summary = {
        "dataset": train.info.name,
        "test_split": test.split,
        "test_accuracy": evaluation.accuracy,
        "mlflow_run_id": run_id,
        "tracking_uri": config.tracking_uri,
        "experiment": config.experiment_name,
        "registered": asdict(versions) if versions else None,
        "prefect_flow_run_id": str(flow_run.id or ""),
    }
    create_markdown_artifact(_summary_markdown(summary), key="train-summary", description="what this training produced")
    return summary


def _summary_markdown(summary: dict) -> str:
    registered = summary["registered"]
    lines = [
        f"# Training on {summary['dataset']}",
        "",
        "| what | value |",
        "|---|---|",
        f"| test accuracy | {summary['test_accuracy']:.4f} ({summary['test_split']}) |",
        f"| MLflow run | `{summary['mlflow_run_id']}` in experiment `{summary['experiment']}` |",
        f"| tracking URI | `{summary['tracking_uri']}` |",
    ]
    if registered:
        lines.append(f"| classifier | `{registered['classifier_name']}` v{registered['classifier_version']} @champion |")
        lines.append(f"| autoencoder | `{registered['autoencoder_name']}` v{registered['autoencoder_version']} @champion |")
    return "\n".join(lines)


if __name__ == "__main__":
    result = train_flow(dataset=sys.argv[1] if len(sys.argv) > 1 else "default")
    print(result)

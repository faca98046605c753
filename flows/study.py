"""The seed study as a flow (`scanflow study`, `python -m benchmarks.study`): per seed a champion trained by the
train flow, then per corruption and severity a stream whose batches go through the detect flow, the oracle's
decision through the improve flow, and every remedy measured against the same holdout (`scanflow.study`).

Phases: champion (train flow, under the study's own registered name so a user's champion is never touched),
references (baseline detectors and the fold filters), cells, publish (tables and plots to `out_dir`, one MLflow run
of kind `study`, Prefect artifacts). After each cell the champion alias is put back on the seed's champion, so
every cell starts from the same model; no known shift is recorded.
"""

from __future__ import annotations

import base64
import math
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.detect import detect_flow
from flows.improve import improve_flow
from flows.retries import IO_RETRIES
from flows.settings import tracking_config
from flows.train import train_flow
from scanflow import study
from scanflow import tracking as scanflow_tracking
from scanflow.config import CHALLENGER_ALIAS, CHAMPION_ALIAS, TrackingConfig
from scanflow.corruptions import corrupt
from scanflow.data import LabeledImages, hold_out_calibration, load_train_test
from scanflow.drift.base import Detector
from scanflow.errors import ScanflowError
from scanflow.tags import KIND_TAG


def study_model_name(dataset: str) -> str:
    """The registered classifier a study trains and decides on: its own, never the user's champion."""
    return f"scanflow-study-{dataset}-classifier"


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def restore_champion(config: TrackingConfig, version: str) -> None:
    """Point `champion` back at the seed's champion `version` when a cell's challenger was promoted."""
    if scanflow_tracking.champion_version(config) != version:
        scanflow_tracking.rollback(config, to_version=version)


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def challenger_accuracy(config: TrackingConfig, version: str, promoted: bool, holdout: LabeledImages,
                        corrupted_holdout: torch.Tensor) -> tuple[float, float]:
    """The decision's challenger `version` as it would serve (its registered pyfunc, at `champion` when promoted,
    else at `challenger`) on the corrupted and the clean holdout: accuracy fractions, a rejected image (-1) wrong."""
    served = scanflow_tracking.load_served_model(config, CHAMPION_ALIAS if promoted else CHALLENGER_ALIAS)
    if str(served.version) != str(version):
        raise ScanflowError(f"the {'champion' if promoted else 'challenger'} alias points at v{served.version}, not at the "
                            f"cell's challenger v{version}: another run changed {config.classifier_name} during the study")
    return study.holdout_accuracy(lambda images: served.model.predict(images.numpy()), holdout, corrupted_holdout)


@dataclass(frozen=True)
class SeedContext:
    """What every cell of one seed shares: the champion (its classifier, detector and registered version), its
    replay images, the seed's stream source and holdout, the fitted baselines, the fold filters, and where the
    dataset's files are (`None`: the usual places)."""

    classifier: Any
    detector: Detector
    replay: LabeledImages
    split: study.StudySplit
    baselines: Mapping[str, Detector]
    filters: Mapping[int, Any]
    tracking_config: TrackingConfig
    champion_version: str
    data_dir: str | None


def run_cell(config: study.StudyConfig, seed: int, corruption: str, severity: int, context: SeedContext,
             tracking: str | None, model: str, work: Path) -> study.CellResult:
    """One cell: the stream's batches through the detect flow, the oracle's decision on the first drifted corrupted
    batch through the improve flow, then the remedies and the baselines measured on the holdout."""
    seconds: dict[str, float] = {}
    stream = study.cell_stream(context.split, corruption, severity, config, seed)
    holdout = context.split.holdout
    corrupted_holdout = corrupt(holdout.images, corruption, severity, seed=seed * 1000 + 999)
    verdicts, reports, paths = [], [], []
    for i, batch in enumerate(stream.batches):
        batch_id = f"study-s{seed}-{corruption}-{severity}-{i}"
        path = work / f"{batch_id}.npy"
        np.save(path, batch.numpy())
        report = study.timed(seconds, "detect", lambda: detect_flow(
            batch_path=str(path), batch_id=batch_id, report=False, responder="none", recognise_known=False, tracking=tracking, model=model))
        accuracy = float((context.classifier.predict(batch) == stream.labels[i]).float().mean())
        verdicts.append(study.BatchVerdict(batch_id, stream.corrupted[i], report.is_drift, report.p_value, report.statistic, accuracy))
        reports.append(report)
        paths.append(path)
    flagged = [i for i, v in enumerate(verdicts) if v.corrupted and v.is_drift]
    if flagged:
        i = flagged[0]
        report = reports[i]
        shown = list(report.selected_indices)
        labels = [int(stream.labels[i][row]) for row in shown]  # the oracle: the true labels of what it is shown
        improvement = study.timed(seconds, "improve", lambda: improve_flow(
            batch_path=str(paths[i]), shown_indices=shown, action=report.recommended_action, labels=labels,
            note="study: simulated person (true labels)", decided_by="oracle", batch_id=verdicts[i].batch_id,
            seed=seed, remember_shift=False, data_dir=context.data_dir, tracking=tracking, model=model,
            steps=study.decision_steps(config, report.recommended_action)))
        served = (study.timed(seconds, "challenger", lambda: challenger_accuracy(
            context.tracking_config, improvement.challenger_version, improvement.promoted, holdout, corrupted_holdout))
            if improvement.challenger_version else (math.nan, math.nan))
        decision = study.DecisionRecord(verdicts[i].batch_id, report.recommended_action, len(labels),
                                        improvement.challenger_version, improvement.promoted, improvement.reason, served)
        restore_champion(context.tracking_config, context.champion_version)
    else:
        decision = study.DecisionRecord("", "none", 0, None, False, "no corrupted batch was flagged: nobody was asked")
    accuracy = study.measure_remedies(
        context.classifier, context.detector, context.replay, stream.corrupted_part(holdout.info), holdout,
        corrupted_holdout, study.filter_for(context.filters, corruption), config, seed, seconds)
    auroc = study.timed(seconds, "sample auroc", lambda: study.sample_auroc(context.detector, holdout.images, corrupted_holdout))
    rates, alarms = study.timed(seconds, "baselines", lambda: study.baseline_rates(context.baselines, stream))
    rate, alarm = study.detection_rates(verdicts)
    cell = study.CellResult(config.dataset, seed, corruption, severity, tuple(verdicts), decision, auroc, accuracy,
                            {study.SCANFLOW: rate, **rates}, {study.SCANFLOW: alarm, **alarms}, seconds)
    print(f"{corruption} severity {severity}, seed {seed}: flagged {rate:.2f} of corrupted batches, decision {decision.action}"
          f"{' (promoted)' if decision.promoted else ''}; corrupted accuracy " +
          ", ".join(f"{k} {v[0]:.3f}" for k, v in accuracy.items()))
    return cell


def prepare_seed(config: study.StudyConfig, seed: int, tracking: str | None, model: str, data_dir: str | None,
                 epochs: int | None, autoencoder_epochs: int | None) -> SeedContext:
    """The seed's champion (trained now by the train flow), its data splits, baselines and fold filters."""
    summary = train_flow(dataset=config.dataset, epochs=epochs, autoencoder_epochs=autoencoder_epochs, seed=seed, data_dir=data_dir,
                         tracking=tracking, force=True, model=model)
    tracking_settings = tracking_config(tracking).for_model(model)
    models = scanflow_tracking.load_models(tracking_settings)
    detector, _ = scanflow_tracking.load_detector(tracking_settings)
    train, test = load_train_test(config.dataset, data_dir=data_dir, seed=seed)
    replay, calibration = hold_out_calibration(train, seed=seed)
    split = study.split_test_images(test, config, seed)
    print(f"seed {seed}: champion v{models.classifier_version} (test accuracy {summary['test_accuracy']:.4f}); "
          f"stream source {len(split.stream)}, holdout {len(split.holdout)} test images")
    baselines = study.fit_baselines(config.baselines, models.classifier, models.autoencoder, replay, calibration, seed)
    filters = study.fold_filters(models.classifier, replay, calibration, config.corruptions, config.denoiser_steps, seed,
                                 detector)
    return SeedContext(models.classifier, detector, replay, split, baselines, filters, tracking_settings, models.classifier_version,
                       data_dir)


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def log_study_run(tracking_settings: TrackingConfig, paths: list[Path], headline: study.Headline, dataset: str) -> str:
    """One MLflow run of kind `study` holding the report, the table, the figures and the headline metrics."""
    tags = {KIND_TAG: "study", "prefect.flow_run_id": str(flow_run.id or "")}
    with scanflow_tracking.tracked_run(tracking_settings, f"study-{dataset}", tags) as run_id:
        for path in paths:
            scanflow_tracking.log_artifact_file(run_id, path, artifact_path="study")
        scanflow_tracking.log_metrics(run_id, {key: float(value) for key, value in asdict(headline).items()})
    return run_id


@flow(name="study", log_prints=True)
def study_flow(
    dataset: str = "digits",
    quick: bool = True,
    corruptions: list[str] | None = None,
    severities: list[int] | None = None,
    budgets: list[int] | None = None,
    seeds: list[int] | None = None,
    batch_size: int | None = None,
    holdout_size: int | None = None,
    retrain_steps: int | None = None,
    denoiser_steps: int | None = None,
    baselines: list[str] | None = None,
    epochs: int | None = None,
    autoencoder_epochs: int | None = None,
    out_dir: str = "study-results",
    data_dir: str | None = None,
    tracking: str | None = None,
) -> study.StudyOutcome:
    """Run the study (see the module docstring) and publish it; the options override the quick (or full) set, and
    `epochs`/`autoencoder_epochs` the train flow's. `dataset` is any dataset `scanflow datasets` lists, or `rgb`:
    CIFAR-10 when its files are here, else the offline RGB set (the run says which). Returns where the results went
    and the headline (`StudyOutcome`). Raises ScanflowError for a configuration that cannot run, before any training."""
    config = study.config_for(dataset, quick, corruptions=corruptions, severities=severities, budgets=budgets, seeds=seeds,
                              batch_size=batch_size, holdout_size=holdout_size, retrain_steps=retrain_steps,
                              denoiser_steps=denoiser_steps, baselines=baselines)
    choice = study.dataset_choice(dataset, data_dir)[1]
    config = replace(config, dataset=study.check_fits(config, data_dir))
    dataset = config.dataset
    model = study_model_name(dataset)
    print(f"study: {config.describe()}; registered model {model}. {choice}".rstrip())
    cells: list[study.CellResult] = []
    alpha = 0.05
    with tempfile.TemporaryDirectory(prefix="scanflow-study-") as work:
        for seed in config.seeds:
            context = prepare_seed(config, seed, tracking, model, data_dir, epochs, autoencoder_epochs)
            alpha = context.detector.alpha
            for corruption in config.corruptions:
                for severity in config.severities:
                    cells.append(run_cell(config, seed, corruption, severity, context, tracking, model, Path(work)))
    figures = study.study_figures(cells, config, alpha)
    provenance = f"{choice} Champion: `{model}` trained by the train flow per seed; the person is simulated (true labels).".lstrip()
    report = study.markdown_report(cells, config, provenance, study.command_line(config, quick),
                                   figures=[name for name in figures if name.endswith(".png")])
    paths = study.write_outputs(Path(out_dir), report, study.cells_csv(cells, config), figures)
    headline = study.headline(cells, config.budgets)
    run_id = log_study_run(tracking_config(tracking).for_model(model), paths, headline, dataset)
    picture = base64.b64encode(figures["budget.png"]).decode("ascii")
    create_markdown_artifact(report.split("## Detection")[0] + f"\n![accuracy against labels](data:image/png;base64,{picture})\n",
                             key="study", description=f"the study on {dataset}")
    create_table_artifact(study.table_rows(cells), key="study-cells", description="one row per cell and seed")
    print(f"study written to {Path(out_dir).resolve()} and logged to MLflow run {run_id}")
    return study.StudyOutcome(str(Path(out_dir).resolve()), run_id, len(cells), headline, tuple(path.name for path in paths),
                              str(flow_run.id or ""))


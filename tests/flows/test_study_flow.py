"""`scanflow study` end to end on the bundled digits with two corruptions: the real train, detect and improve flows
on the session's Prefect server and MLflow store; its tables, plots and MLflow run; and its refusals."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

SCANFLOW = str(Path(sys.executable).with_name("scanflow"))
EXPERIMENT = "t-study"
FIGURES = [f"{name}.{fmt}" for name in ("budget", "stream", "detection", "remedies") for fmt in ("png", "svg")]


def _run(args: list[str], mlflow_store: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "SCANFLOW_EXPERIMENT": EXPERIMENT,
           "SCANFLOW_MODEL_NAME": "t-study-users-own-classifier"}
    return subprocess.run([SCANFLOW, "study", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _study_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return [] if experiment is None else client.search_runs([experiment.experiment_id], "tags.`scanflow.kind` = 'study'")


@pytest.fixture(scope="module")
def study_run(mlflow_store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    result = _run(["--dataset", "digits", "--quick", "--corruptions", "shot_noise,rotate", "--severities", "3", "--budgets", "10,20",
                   "--batch-size", "50", "--holdout-size", "200", "--retrain-steps", "50", "--denoiser-steps", "100",
                   "--epochs", "15", "--autoencoder-epochs", "10", "--out", "results"], mlflow_store, folder)
    return result, folder / "results"


def test_the_study_writes_its_tables_and_every_plot(study_run):
    result, out = study_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert f"study of 2 cells written to {out}" in result.stdout
    assert "Retrain with the person's 20 labels recovers" in result.stdout and "Scanflow flags" in result.stdout
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert len(data) > 10_000, name
        assert data.startswith(b"\x89PNG\r\n\x1a\n") if name.endswith(".png") else b"<svg" in data[:2000], name
    rows = list(csv.DictReader((out / "cells.csv").open()))
    assert [(r["corruption"], r["severity"], r["seed"]) for r in rows] == [("shot_noise", "3", "0"), ("rotate", "3", "0")]
    for row in rows:
        fractions = {k: float(v) for k, v in row.items() if k.startswith(("corrupted_", "clean_", "rate_", "false_alarms_"))
                     and not k.endswith("_challenger")}
        assert len(fractions) == 2 * 8 + 2 * 5 and all(0.0 <= v <= 1.0 for v in fractions.values()), fractions
        # The decision's challenger as it serves, on the same holdouts (empty without a challenger).
        served = [row["corrupted_challenger"], row["clean_challenger"]]
        assert all(0.0 <= float(v) <= 1.0 for v in served) if row["challenger_version"] else served == ["", ""], row
        assert row["decision"] in ("filter", "retrain", "ignore", "none") and 0.5 <= float(row["sample_auroc"]) <= 1.0
        assert float(row["clean_none"]) > 0.85, "the champion must be a working classifier for the remedies to mean anything"
        assert float(row["corrupted_ceiling"]) >= float(row["corrupted_none"]) - 0.05
        if row["decision"] != "none":
            assert int(row["labels_given"]) > 0 and row["challenger_version"]
    report = (out / "study.md").read_text()
    assert report.startswith("# Study: digits") and "## Headline" in report and "![budget.png](budget.png)" in report
    assert "| promoted | challenger % (corrupted / clean) |" in report
    assert "Command: `scanflow study --dataset digits --quick --corruptions shot_noise,rotate --budgets 10,20 --batch-size 50" in report


def test_the_study_is_one_mlflow_run_and_leaves_the_champions_as_they_were(study_run, mlflow_store):
    result, out = study_run
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(mlflow_store)
    (run,) = _study_runs(client)
    assert run.info.status == "FINISHED" and run.info.run_name == "study-digits"
    logged = {artifact.path.removeprefix("study/") for artifact in client.list_artifacts(run.info.run_id, "study")}
    assert logged == {"study.md", "cells.csv", *FIGURES}
    assert 0.0 <= run.data.metrics["detection_rate"] <= 1.0 and run.data.metrics["budget"] == 20
    # The study decided on its own registered model, never the user's, and put its champion back after each cell.
    assert client.search_model_versions("name = 't-study-users-own-classifier'") == []
    model = "scanflow-study-digits-classifier"
    assert str(client.get_model_version_by_alias(model, "champion").version) == "1"
    challengers = [v for v in client.search_model_versions(f"name = '{model}'") if str(v.version) != "1"]
    decided = [r for r in csv.DictReader((out / "cells.csv").open()) if r["decision"] in ("filter", "retrain")]
    assert len(challengers) == len(decided)
    # The oracle's decisions ran at the study's own budget (--retrain-steps 50: 25 per round; --denoiser-steps 100).
    experiment = client.get_experiment_by_name(EXPERIMENT)
    improve_runs = client.search_runs([experiment.experiment_id], "tags.`scanflow.kind` = 'improve'")
    assert sorted(r.data.tags["scanflow.action"] for r in improve_runs) == sorted(r["decision"] for r in decided)
    for improve in improve_runs:
        key, steps = ("retrain_steps", "25") if improve.data.tags["scanflow.action"] == "retrain" else ("denoiser_steps", "100")
        assert improve.data.params[key] == steps, improve.data.params


def test_a_study_that_cannot_run_is_refused_with_its_fix_and_nothing_written(mlflow_store, tmp_path):
    client = MlflowClient(mlflow_store)
    before = len(_study_runs(client)), len(client.search_registered_models())
    result = _run(["--dataset", "digits", "--quick"], mlflow_store, tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip() == ("scanflow: error: digits has 359 test images: a stream of 600 and a holdout of at least 50 "
                                     "do not fit; lower --batch-size")
    result = _run(["--dataset", "digits", "--budgets", "50,20"], mlflow_store, tmp_path, timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == "scanflow: error: label budgets must be increasing positive counts, got 50, 20"
    assert (len(_study_runs(client)), len(client.search_registered_models())) == before
    assert list(tmp_path.iterdir()) == []

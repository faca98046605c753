"""The study's arithmetic, tables and plots on fixed cells, and its configuration refusals (no flow runs here; the
end-to-end study is tests/flows/test_study_flow.py)."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re

import pytest
import torch

from scanflow import study
from scanflow.corruptions import CORRUPTIONS
from scanflow.data import dataset_info
from scanflow.data.datasets import LabeledImages
from scanflow.errors import ScanflowError
from scanflow.plots import budget_figure, detection_heatmap, remedy_figure, stream_figure, study_stream_rows

BUDGETS = (10, 20)


def _cell(corruption: str, severity: int, seed: int = 0, none: float = 0.5, person: float = 0.8, filtered: float = 0.7,
          ceiling: float = 0.9, flagged: bool = True, promoted: bool = True) -> study.CellResult:
    verdicts = (study.BatchVerdict(f"{corruption}-{severity}-0", False, False, 0.4, 1.0, 0.96),
                study.BatchVerdict(f"{corruption}-{severity}-1", True, flagged, 0.001 if flagged else 0.3, 9.0, none))
    decision = (study.DecisionRecord(verdicts[1].batch_id, "retrain", 10, "2", promoted, "better", (person - 0.1, 0.93)) if flagged
                else study.DecisionRecord("", "none", 0, None, False, "not flagged"))
    accuracy = {"none": (none, 0.95), "person-10": (person - 0.05, 0.94), "person-20": (person, 0.94), "random-10": (0.6, 0.94),
                "random-20": (0.65, 0.94), "pseudo": (0.55, 0.95), "filter": (filtered, 0.948), "ceiling": (ceiling, 0.95)}
    rates = {"scanflow": 1.0 if flagged else 0.0, "quota": 0.5, "bbsd": 0.0, "mmd": 1.0, "pixel_stats": 0.5}
    alarms = {name: 0.0 for name in rates}
    return study.CellResult("digits", seed, corruption, severity, verdicts, decision, 0.9, accuracy, rates, alarms, {"detect": 1.5})


CELLS = [_cell("shot_noise", 1, flagged=False), _cell("shot_noise", 3), _cell("rotate", 3, person=0.85, filtered=0.5)]
CONFIG = study.StudyConfig("digits", corruptions=("shot_noise", "rotate"), severities=(1, 3), budgets=BUDGETS, batch_size=50,
                           holdout_size=100)


def test_the_budget_figure_draws_each_family_with_every_method():
    figure = budget_figure(CELLS, BUDGETS)
    assert [axis.get_title() for axis in figure.axes] == ["noise (1 corruption(s))", "geometric (1 corruption(s))"]
    noise = figure.axes[0]
    assert len(noise.get_lines()) == 6
    person = noise.get_lines()[0]
    assert list(person.get_xdata()) == list(BUDGETS) and list(person.get_ydata()) == pytest.approx([75.0, 80.0])
    assert [t.get_text() for t in noise.get_xticklabels()] == ["10", "20"] and noise.get_xticklabels(minor=True) == []
    assert [t.get_text() for t in figure.axes[-1].get_legend().get_texts()] == [
        "person's labels", "random labels", "pseudo-labels", "filter", "all labelled", "nothing done"]


def test_the_detection_heatmap_has_a_panel_per_detector_and_a_cell_per_corruption_and_severity():
    figure = detection_heatmap(CELLS, ["scanflow", "bbsd"])
    panels = [axis for axis in figure.axes if axis.get_title()]
    assert [axis.get_title() for axis in panels] == ["scanflow", "bbsd"]
    grid = panels[0].get_images()[0].get_array().filled(math.nan)
    assert grid.shape == (2, 2)
    assert grid[0, 0] == 0.0 and grid[0, 1] == 1.0 and grid[1, 1] == 1.0 and math.isnan(grid[1, 0])
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["shot_noise", "rotate"]


def test_the_remedy_figure_compares_retrain_and_filter_per_corruption():
    axis = remedy_figure(CELLS, 20).axes[0]
    retrain, filtered = axis.containers
    assert [bar.get_height() for bar in retrain] == pytest.approx([30.0, 35.0])
    assert [bar.get_height() for bar in filtered] == pytest.approx([20.0, 0.0])
    assert [t.get_text() for t in axis.get_legend().get_texts()] == ["all labelled", "retrain, 20 labels", "filter"]


def test_the_study_stream_marks_the_decision_on_the_batch_it_was_taken_on():
    rows = study_stream_rows(CELLS)
    assert len(rows) == 6 and [r["drift"] for r in rows] == ["no", "no", "no", "yes", "no", "yes"]
    assert [r["decision"] for r in rows] == ["-", "-", "-", "retrain", "-", "retrain"]
    top, bottom = stream_figure(rows, 0.05).axes
    assert [t.get_text() for t in top.texts] == ["retrain", "retrain"]
    assert list(bottom.get_lines()[0].get_ydata()) == [0.96, 0.5, 0.96, 0.5, 0.96, 0.5]


@pytest.mark.parametrize("draw", [lambda: budget_figure([], BUDGETS), lambda: detection_heatmap([], ["scanflow"]),
                                  lambda: remedy_figure([], 20)])
def test_no_cells_is_refused_by_name(draw):
    with pytest.raises(ValueError, match="no study cells to draw"):
        draw()


def test_the_headline_averages_the_recovered_gap_and_counts_filter_wins():
    line = study.headline(CELLS, BUDGETS)
    assert line.recovered_gap == pytest.approx((0.75 + 0.75 + 0.875) / 3)
    assert line.filter_wins == 0 and line.filter_cells == 3
    assert line.filter_clean_cost == pytest.approx(0.2)
    assert line.detection_rate == pytest.approx(2 / 3) and line.false_alarm_rate == 0.0


def test_a_cell_without_a_gap_to_the_ceiling_is_left_out_of_the_recovered_share():
    assert study.recovered_gap(_cell("fog", 1, none=0.9, ceiling=0.902), "person-20") is None


def test_intervals_over_seeds_use_student_t():
    assert study.mean_interval([0.5]) == (0.5, 0.0)
    mean, half = study.mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / math.sqrt(3))


def test_the_report_and_the_csv_hold_every_column():
    every = dataclasses.replace(study.quick_config("digits"), corruptions=tuple(CORRUPTIONS))
    assert study.command_line(every, quick=True) == "scanflow study --dataset digits --quick --corruptions all"
    assert study.command_line(dataclasses.replace(every, corruptions=tuple(reversed(CORRUPTIONS))), quick=True).count(",") == 14
    report = study.markdown_report(CELLS, CONFIG, "provenance.", study.command_line(CONFIG, quick=True), figures=["budget.png"])
    assert "Command: `scanflow study --dataset digits --quick --corruptions shot_noise,rotate --severities 1,3 --budgets 10,20 --batch-size 50 --holdout-size 100`" in report
    assert "![budget.png](budget.png)" in report and "## Headline" in report
    assert "| rotate | 3 | 0.001 | 0.900 | 1.00 | 0.50 | 0.00 | 1.00 | 0.50 | 0.00 | retrain | 10 | yes | 75.0 / 93.0 |" in report
    assert "| shot_noise | 1 | 0.3 | 0.900 | 0.00 | 0.50 | 0.00 | 1.00 | 0.50 | 0.00 | none | 0 | - | - |" in report
    assert "retrain, person's labels B=20" in report and "retrain, all labelled (ceiling)" in report
    rows = list(csv.DictReader(io.StringIO(study.cells_csv(CELLS, CONFIG))))
    assert len(rows) == 3 and rows[0]["decision"] == "none" and rows[1]["promoted"] == "true"
    assert {"rate_scanflow", "rate_mmd", "corrupted_person-20", "clean_filter", "seconds_detect", "family"} <= set(rows[0])
    assert rows[2]["corrupted_person-20"] == "0.8500" and rows[2]["family"] == "geometric"
    assert (rows[2]["corrupted_challenger"], rows[2]["clean_challenger"]) == ("0.7500", "0.9300")
    assert (rows[0]["corrupted_challenger"], rows[0]["clean_challenger"]) == ("", "")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"corruptions": ("smudge",)}, "unknown corruption(s) smudge: choose from shot_noise"),
    ({"severities": (0, 3)}, "severities must be among 1..5, got 0, 3"),
    ({"budgets": (50, 20)}, "label budgets must be increasing positive counts, got 50, 20"),
    ({"budgets": (500,), "batch_size": 100}, "a budget of 500 labels exceeds the 200 corrupted stream images"),
    ({"seeds": (0, 0)}, "seeds must be distinct and at least one, got [0, 0]"),
    ({"baselines": ("ks",)}, "unknown baseline(s) ks: choose from quota, bbsd, mmd, pixel_stats"),
])
def test_a_study_that_cannot_run_is_refused_before_anything_runs(overrides, message):
    with pytest.raises(ScanflowError, match=f"^{re.escape(message)}"):
        study.StudyConfig("digits", **overrides)


def test_the_stream_is_clean_then_corrupted_and_disjoint_from_the_holdout():
    info = dataset_info("digits")
    images = torch.arange(400 * 64, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(400, 1, 8, 8)
    test = LabeledImages(images, torch.arange(400) % 10, info, "test")
    config = study.StudyConfig("digits", batch_size=50, budgets=(10, 20), holdout_size=100)
    split = study.split_test_images(test, config, seed=1)
    assert len(split.stream) == 150 and len(split.holdout) == 100
    stream = study.cell_stream(split, "shot_noise", 3, config, seed=1)
    assert stream.corrupted == (False, True, True)
    assert torch.equal(stream.batches[0], split.stream.images[:50]) and not torch.equal(stream.batches[1], split.stream.images[50:100])
    assert torch.equal(stream.corrupted_part(info).labels, split.stream.labels[50:])
    with pytest.raises(ScanflowError, match="digits has 180 test images: a stream of 150 and a holdout of at least 50 do not fit"):
        study.split_test_images(test.subset(range(180)), config, seed=1)


def test_the_rgb_study_uses_cifar10_where_its_files_are_and_says_which(tmp_path, monkeypatch):
    monkeypatch.delenv("SCANFLOW_DATA_DIR", raising=False)
    name, note = study.dataset_choice("rgb", tmp_path)
    assert name == "fashion-rgb" and note.startswith("RGB set: fashion-rgb (Fashion-MNIST rendered 32x32 RGB with seeded colours), "
                                                     "because CIFAR-10's files are not here (")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / stem).write_bytes(b"x")
    name, note = study.dataset_choice("RGB", tmp_path)
    assert name == "cifar10" and note == f"RGB set: CIFAR-10 from {folder.resolve()} (CIFAR-10-C corruptions)."
    assert study.dataset_choice("Fashion_MNIST", tmp_path) == ("fashion-mnist", "")


def test_every_study_figure_is_written_as_a_valid_png_and_svg():
    figures = study.study_figures(CELLS, CONFIG, alpha=0.05)
    assert list(figures) == [f"{name}.{fmt}" for name in study.FIGURES for fmt in ("png", "svg")]
    for name, data in figures.items():
        assert len(data) > 10_000, name
        assert data.startswith(b"\x89PNG\r\n\x1a\n") if name.endswith(".png") else b"<svg" in data[:2000], name


def test_the_table_artifact_has_a_row_per_cell_with_its_decision_and_accuracy():
    rows = study.table_rows(CELLS)
    assert [(r["corruption"], r["severity"], r["decision"], r["flagged"]) for r in rows] == [
        ("shot_noise", 1, "none", 0.0), ("shot_noise", 3, "retrain", 1.0), ("rotate", 3, "retrain", 1.0)]
    assert rows[2]["acc person-20"] == 0.85 and rows[2]["acc filter"] == 0.5 and rows[0]["acc none"] == 0.5


def test_the_cli_and_the_flow_build_one_config_from_their_options():
    quick = study.config_for("digits", True, budgets=[10, 20], seeds=None, batch_size=50)
    assert quick == study.StudyConfig("digits", budgets=(10, 20), batch_size=50)
    full = study.config_for("mnist", False, severities=[2])
    assert full.severities == (2,) and full.seeds == (0, 1, 2) and len(full.corruptions) == 15


def test_the_oracles_decision_runs_at_the_studys_own_step_budget():
    """The person's column in the tables and the decision the improve flow carries out train alike: a retrain runs
    half of `retrain_steps` in each of its two rounds, a filter's denoiser `denoiser_steps`."""
    config = study.quick_config("digits", retrain_steps=50, denoiser_steps=120)
    assert study.decision_steps(config, "retrain") == 25 and study.decision_steps(config, "filter") == 120
    assert study.decision_steps(study.quick_config("digits", retrain_steps=1), "retrain") == 1


def test_holdout_accuracy_counts_a_rejected_image_as_wrong_for_tensors_and_arrays():
    info = dataset_info("digits")
    holdout = LabeledImages(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 2, 3]), info, "test")
    corrupted = torch.full((4, 1, 8, 8), 9, dtype=torch.uint8)

    def predict(images: torch.Tensor) -> torch.Tensor:  # right on clean images, -1 (rejected) on two corrupted ones
        return torch.tensor([0, 1, 2, 3]) if int(images[0, 0, 0, 0]) == 0 else torch.tensor([0, -1, -1, 3])

    assert study.holdout_accuracy(predict, holdout, corrupted) == (0.5, 1.0)
    assert study.holdout_accuracy(lambda images: predict(images).numpy(), holdout, corrupted) == (0.5, 1.0)

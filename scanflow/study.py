"""The seed study: a registered champion meets one stream per corruption and severity that turns corrupted, a
simulated person (the oracle) answers each drift, and every remedy is measured on the same held-out images.

This module holds what the study computes and writes; `flows/study.py` runs it through the real train, detect
and improve flows and the registry. Per cell (dataset, seed, corruption, severity) it records the detect flow's
verdict and p-value per batch, the sample AUROC (clean holdout against its corrupted copy), the decision taken
and the labels it asked for, the promoted challenger, and the accuracy on the corrupted and on the clean
holdout of: nothing done, retrain with the person's labels of B typical drifted samples (Scanflow's retrain),
retrain with B random labels, retrain on the champion's own guesses (pseudo-labels), the filter, and retrain with
the whole corrupted stream labelled (the ceiling). Baseline detectors are measured on the same batches.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from scanflow.corruptions import CORRUPTIONS, corrupt, corruption_names
from scanflow.data import LabeledImages
from scanflow.drift.base import Detector
from scanflow.errors import ScanflowError

#: One corruption per family (noise, blur, geometric, artefact, weather): the quick study's and the test's default.
ONE_PER_FAMILY = ("shot_noise", "glass_blur", "rotate", "stripe", "fog")
#: Two folds of corruptions; the filter judged on a corruption is trained on the other fold only, so the study never
#: measures a denoiser on a corruption it was trained to remove. Every family has members in both folds.
FOLDS = (
    ("shot_noise", "glass_blur", "shear", "scale", "stripe", "dotted_line", "brightness", "fog"),
    ("impulse_noise", "motion_blur", "rotate", "translate", "zigzag", "canny_edges", "spatter"),
)
#: Method keys of the accuracy columns; budget-dependent ones are suffixed with the budget (`person-100`).
NONE, PERSON, RANDOM, PSEUDO, FILTER, CEILING = "none", "person", "random", "pseudo", "filter", "ceiling"
METHOD_TITLES = {NONE: "nothing done", PERSON: "retrain, person's labels", RANDOM: "retrain, random labels",
                 PSEUDO: "retrain, pseudo-labels", FILTER: "filter", CEILING: "retrain, all labelled (ceiling)"}
#: Baseline detectors measured beside Scanflow's on the same batches (`scanflow.drift.baselines`).
BASELINES = ("quota", "bbsd", "mmd", "pixel_stats")
SCANFLOW = "scanflow"
#: The study's figures, each written as PNG and SVG.
FIGURES = ("budget", "stream", "detection", "remedies")
#: `--dataset rgb`: CIFAR-10 where its files are present, else the offline RGB set (`dataset_choice`).
RGB = "rgb"
#: Two-sided 95 % Student t quantiles by degrees of freedom (seeds - 1), for the intervals over seeds.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


@dataclass(frozen=True)
class StudyConfig:
    """What one study covers. Sizes are images; `retrain_steps` and `denoiser_steps` are optimisation steps."""

    dataset: str
    corruptions: tuple[str, ...] = ONE_PER_FAMILY
    severities: tuple[int, ...] = (3,)
    budgets: tuple[int, ...] = (20, 50, 100)
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 200
    clean_batches: int = 1
    corrupted_batches: int = 2
    holdout_size: int = 1000
    retrain_steps: int = 100
    denoiser_steps: int = 600
    baselines: tuple[str, ...] = BASELINES

    def __post_init__(self) -> None:
        """Raises ScanflowError naming the value and the fix; nothing has run yet."""
        unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
        if unknown or not self.corruptions:
            raise ScanflowError(f"unknown corruption(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(corruption_names())}")
        if not self.severities or any(s not in range(1, 6) for s in self.severities):
            raise ScanflowError(f"severities must be among 1..5, got {', '.join(map(str, self.severities)) or '(none)'}")
        if not self.budgets or min(self.budgets) < 1 or list(self.budgets) != sorted(set(self.budgets)):
            raise ScanflowError(f"label budgets must be increasing positive counts, got {', '.join(map(str, self.budgets)) or '(none)'}")
        if max(self.budgets) > self.corrupted_batches * self.batch_size:
            raise ScanflowError(f"a budget of {max(self.budgets)} labels exceeds the {self.corrupted_batches * self.batch_size} corrupted "
                                "stream images: lower the budget or raise the batch size")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ScanflowError(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        if self.batch_size < 10 or self.clean_batches < 1 or self.corrupted_batches < 1 or self.holdout_size < 50:
            raise ScanflowError("the stream needs batches of at least 10 images, one clean and one corrupted batch, and a holdout of "
                                f"at least 50 images; got batch size {self.batch_size}, {self.clean_batches} clean and "
                                f"{self.corrupted_batches} corrupted batches, holdout {self.holdout_size}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ScanflowError(f"unknown baseline(s) {', '.join(unknown)}: choose from {', '.join(BASELINES)}")

    @property
    def stream_size(self) -> int:
        return (self.clean_batches + self.corrupted_batches) * self.batch_size

    def describe(self) -> str:
        return (f"{self.dataset}: {len(self.corruptions)} corruptions x severities {','.join(map(str, self.severities))}; "
                f"stream of {self.clean_batches} clean then {self.corrupted_batches} corrupted batches of {self.batch_size}; "
                f"holdout {self.holdout_size}; label budgets {','.join(map(str, self.budgets))}; retrain {self.retrain_steps} "
                f"steps, denoiser {self.denoiser_steps} steps; seeds {','.join(map(str, self.seeds))}")


def quick_config(dataset: str, **overrides: Any) -> StudyConfig:
    """`scanflow study --quick`: one corruption per family at severity 3, one seed, 100 retraining steps. Most of a
    cell's time is its retrains: two per budget (the person's in two rounds), pseudo-labels and the ceiling."""
    return StudyConfig(dataset, **overrides)


def full_config(dataset: str, **overrides: Any) -> StudyConfig:
    """The full study: every corruption at every severity, three seeds, longer training."""
    values = {"corruptions": corruption_names(), "severities": (1, 2, 3, 4, 5), "budgets": (20, 50, 100, 200),
              "seeds": (0, 1, 2), "corrupted_batches": 3, "retrain_steps": 300, "denoiser_steps": 1500}
    return StudyConfig(dataset, **{**values, **overrides})


def config_for(dataset: str, quick: bool, **overrides: Any) -> StudyConfig:
    """The quick or full set for `dataset` with `overrides` (`None` values ignored, lists taken as tuples), as the
    CLI and the flow both receive them. Raises ScanflowError for a configuration that cannot run."""
    given = {key: tuple(value) if isinstance(value, list) else value for key, value in overrides.items() if value is not None}
    return (quick_config if quick else full_config)(dataset, **given)


# ------------------------------------------------------------------------------------------------- the data
@dataclass(frozen=True)
class StudySplit:
    """The test images of one seed cut into the stream's source (uint8, labelled) and a disjoint holdout."""

    stream: LabeledImages
    holdout: LabeledImages


def split_test_images(test: LabeledImages, config: StudyConfig, seed: int) -> StudySplit:
    """A seeded permutation of `test`: the first `stream_size` images feed every cell's stream, the next (at most
    `holdout_size`) are the holdout. Raises ScanflowError when `test` is too small, naming the sizes to lower."""
    if len(test) < config.stream_size + 50:
        raise ScanflowError(f"{config.dataset} has {len(test)} test images: a stream of {config.stream_size} and a holdout of at least 50 "
                            "do not fit; lower --batch-size")
    order = np.random.default_rng(seed).permutation(len(test))
    holdout = order[config.stream_size:config.stream_size + config.holdout_size]
    return StudySplit(test.subset(order[:config.stream_size], "study stream"), test.subset(holdout, "study holdout"))


def check_fits(config: StudyConfig, data_dir: str | Path | None = None) -> str:
    """Load the dataset's test split and check the stream and holdout fit in it, before anything is trained.
    Returns the dataset's canonical name ("default" resolved). Raises ScanflowError (DatasetNotFoundError when its
    files are missing) naming the fix."""
    from scanflow.data import load_train_test

    _, test = load_train_test(dataset_choice(config.dataset, data_dir)[0], data_dir=data_dir, seed=config.seeds[0])
    split_test_images(test, config, config.seeds[0])
    return test.info.name


def dataset_choice(name: str, data_dir: str | Path | None = None) -> tuple[str, str]:
    """The dataset a study of `name` runs on, and a sentence saying which. `rgb` (`RGB`) is CIFAR-10 (CIFAR-10-C)
    when both its splits are on disk, else `fashion-rgb`: CIFAR-10 needs a download, the rendered set does not."""
    from scanflow.data.datasets import canonical_dataset_name, dataset_availability

    if name.lower() != RGB:
        return canonical_dataset_name(name), ""
    cifar = next(a for a in dataset_availability(data_dir) if a.name == "cifar10")
    if len(cifar.splits) == 2:
        return "cifar10", f"RGB set: CIFAR-10 from {cifar.location} (CIFAR-10-C corruptions)."
    return "fashion-rgb", ("RGB set: fashion-rgb (Fashion-MNIST rendered 32x32 RGB with seeded colours), because CIFAR-10's "
                           f"files are not here ({cifar.how_to_get}).")


@dataclass(frozen=True)
class CellStream:
    """One cell's stream: `batches` uint8 [n, C, H, W] in order with their true labels; `corrupted[i]` says whether
    batch i is corrupted (the clean ones come first)."""

    corruption: str
    severity: int
    batches: tuple[torch.Tensor, ...]
    labels: tuple[torch.Tensor, ...]
    corrupted: tuple[bool, ...]

    def corrupted_part(self, info: Any) -> LabeledImages:
        """The corrupted batches together, labelled (what a person could label, and the ceiling labels all of)."""
        rows = [i for i, c in enumerate(self.corrupted) if c]
        return LabeledImages(torch.cat([self.batches[i] for i in rows]), torch.cat([self.labels[i] for i in rows]), info,
                             f"{self.corruption}-{self.severity} stream")


def cell_stream(split: StudySplit, corruption: str, severity: int, config: StudyConfig, seed: int) -> CellStream:
    """The clean batches, then the corrupted ones (corrupted with `seed`), all from `split.stream` in order."""
    size = config.batch_size
    batches, labels, corrupted = [], [], []
    for i in range(config.clean_batches + config.corrupted_batches):
        images, truth = split.stream.images[i * size:(i + 1) * size], split.stream.labels[i * size:(i + 1) * size]
        is_corrupted = i >= config.clean_batches
        batches.append(corrupt(images, corruption, severity, seed=seed * 1000 + i) if is_corrupted else images.clone())
        labels.append(truth.clone())
        corrupted.append(is_corrupted)
    return CellStream(corruption, severity, tuple(batches), tuple(labels), tuple(corrupted))


# ------------------------------------------------------------------------------------------------ remedies
def fit_baselines(names: Sequence[str], classifier: Any, autoencoder: Any, reference: LabeledImages, calibration: LabeledImages,
                  seed: int) -> dict[str, Detector]:
    """The named baseline detectors (`BASELINES`), fitted on the champion's clean reference and calibration images."""
    from scanflow.drift.baselines import BBSDDetector, MMDDetector, PixelStatsDetector, QuotaDetector

    build = {"quota": lambda: QuotaDetector(autoencoder, seed=seed), "bbsd": lambda: BBSDDetector(classifier, seed=seed),
             "mmd": lambda: MMDDetector.untrained_autoencoder(reference.info, seed=seed),
             "pixel_stats": lambda: PixelStatsDetector(seed=seed)}
    return {name: build[name]().fit(reference.images, calibration=calibration.images, info=reference.info) for name in names}


def fold_filters(classifier: Any, replay: LabeledImages, calibration: LabeledImages, corruptions: Sequence[str], steps: int,
                 seed: int, detector: Detector | None = None) -> dict[int, Any]:
    """Per fold that holds a studied corruption, a `FilteredClassifier` whose denoiser never saw that fold, gated as
    `FilterImprover` gates it (by `detector`'s scores too when given)."""
    from scanflow.improve import DenoiserConfig, FilteredClassifier, train_denoiser
    from scanflow.improve.filter import DEFAULT_GATE_QUANTILE, calibrate_gate, score_gate

    filters = {}
    for fold, members in enumerate(FOLDS):
        if set(members) & set(corruptions):
            result = train_denoiser(classifier, replay, DenoiserConfig(exclude=members, steps=steps, seed=seed))
            gate = calibrate_gate(result.denoiser, calibration.images, DEFAULT_GATE_QUANTILE)
            filters[fold] = FilteredClassifier(classifier, result.denoiser, gate_threshold=gate, **score_gate(detector))
    return filters


def filter_for(filters: Mapping[int, Any], corruption: str) -> Any:
    return filters[next(k for k, members in enumerate(FOLDS) if corruption in members)]


def decision_steps(config: StudyConfig, action: str) -> int:
    """The optimisation steps the oracle's decision runs with in the improve flow, the study's own budget: half of
    `retrain_steps` per round of a retrain (as the person's column in `measure_remedies`), `denoiser_steps` for a
    filter."""
    return max(1, config.retrain_steps // 2) if action == "retrain" else config.denoiser_steps


def holdout_accuracy(predict: Callable[[torch.Tensor], Any], holdout: LabeledImages,
                     corrupted_holdout: torch.Tensor) -> tuple[float, float]:
    """(corrupted, clean) holdout accuracy, fractions, of `predict` (uint8 images -> labels, a tensor or an array);
    a rejected image (-1) counts as wrong."""
    labels = holdout.labels.numpy()
    return tuple(float(np.mean(np.asarray(predict(images)) == labels)) for images in (corrupted_holdout, holdout.images))


def measure_remedies(classifier: Any, detector: Detector, replay: LabeledImages, stream: LabeledImages, holdout: LabeledImages,
                     corrupted_holdout: torch.Tensor, filtered: Any, config: StudyConfig, seed: int,
                     seconds: dict[str, float]) -> dict[str, tuple[float, float]]:
    """(corrupted, clean) holdout accuracy of every method of `method_keys` (fractions). `stream`: the cell's
    corrupted stream images with their true labels, which the simulated person gives for the samples it is asked
    about (the person's and random columns), all of them for the ceiling, none for the pseudo-labels. Every retrain
    takes `config.retrain_steps` optimisation steps in all: Scanflow's retrain (the person's column) runs its two
    rounds (labels, then labels with confident pseudo-labels) at half of them each."""
    from scanflow.drift.selection import select_typical
    from scanflow.improve import RetrainConfig, fine_tune

    def score(model: Any) -> tuple[float, float]:
        return holdout_accuracy(model.predict, holdout, corrupted_holdout)

    def labelled(rows: np.ndarray, labels: torch.Tensor | None = None) -> LabeledImages:
        index = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        return LabeledImages(stream.images[index], stream.labels[index] if labels is None else labels, stream.info, stream.split)

    plain = RetrainConfig(steps=config.retrain_steps, seed=seed, pseudo_share=0.0)
    person = RetrainConfig(steps=decision_steps(config, "retrain"), seed=seed)
    accuracy = {NONE: score(classifier)}
    embeddings, probabilities = (t.numpy() for t in classifier.embed_and_predict_proba(stream.images))
    result = detector.predict(stream.images, probabilities=probabilities)
    for budget in config.budgets:
        selection = select_typical(result.sample_scores, result.critical_indices, budget, embeddings, seed=seed,
                                   clean_median=detector.clean_score_quantile(0.5))
        tuned = timed(seconds, f"retrain person B={budget}", lambda: fine_tune(
            classifier, labelled(np.asarray(selection.indices)), replay, person,
            unlabelled=stream.images))
        accuracy[f"{PERSON}-{budget}"] = score(tuned.classifier)
        rows = np.random.default_rng([seed, budget]).permutation(len(stream))[:budget]
        tuned = timed(seconds, f"retrain random B={budget}", lambda: fine_tune(classifier, labelled(rows), replay, plain))
        accuracy[f"{RANDOM}-{budget}"] = score(tuned.classifier)
    own = torch.from_numpy(probabilities.argmax(axis=1)).long()
    tuned = timed(seconds, "retrain pseudo", lambda: fine_tune(classifier, labelled(np.arange(len(stream)), own), replay, plain))
    accuracy[PSEUDO] = score(tuned.classifier)
    accuracy[FILTER] = score(filtered)
    tuned = timed(seconds, "retrain ceiling", lambda: fine_tune(classifier, labelled(np.arange(len(stream))), replay, plain))
    accuracy[CEILING] = score(tuned.classifier)
    return accuracy


# --------------------------------------------------------------------------------------------- the results
@dataclass(frozen=True)
class BatchVerdict:
    """The detect flow's verdict on one stream batch, and the champion's accuracy on it (fraction, true labels)."""

    batch_id: str
    corrupted: bool
    is_drift: bool
    p_value: float
    statistic: float
    accuracy: float = math.nan


@dataclass(frozen=True)
class DecisionRecord:
    """What the simulated person decided on the cell's first drifted batch, and what became of it: `action` is
    "none" when no corrupted batch was flagged (nobody was asked)."""

    batch_id: str
    action: str
    labels_given: int
    challenger_version: str | None
    promoted: bool
    reason: str
    #: The challenger as it would serve (its registered model), on the (corrupted, clean) holdout; fractions, NaN
    #: without a challenger. The "filter" accuracy column is a denoiser that never saw the corruption's family; the
    #: decision's filter, like a user's, was trained on every corruption.
    challenger_accuracy: tuple[float, float] = (math.nan, math.nan)


@dataclass(frozen=True)
class CellResult:
    """Everything measured in one cell. `accuracy[method] = (corrupted holdout, clean holdout)`, fractions;
    `detection_rate[detector]` is the share of the corrupted batches flagged (Scanflow's from the detect flow);
    `false_alarms[detector]` the share of the clean batches flagged; `seconds[step]` wall time."""

    dataset: str
    seed: int
    corruption: str
    severity: int
    verdicts: tuple[BatchVerdict, ...]
    decision: DecisionRecord
    sample_auroc: float
    accuracy: Mapping[str, tuple[float, float]]
    detection_rate: Mapping[str, float]
    false_alarms: Mapping[str, float]
    seconds: Mapping[str, float] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return CORRUPTIONS[self.corruption].family


def detection_rates(verdicts: Sequence[BatchVerdict]) -> tuple[float, float]:
    """(share of corrupted batches flagged, share of clean batches flagged)."""
    corrupted = [v.is_drift for v in verdicts if v.corrupted]
    clean = [v.is_drift for v in verdicts if not v.corrupted]
    return float(np.mean(corrupted)) if corrupted else math.nan, float(np.mean(clean)) if clean else math.nan


def sample_auroc(detector: Detector, clean: torch.Tensor, corrupted: torch.Tensor) -> float:
    """AUROC of the detector's per-image scores: corrupted images (positives) against the same images clean."""
    scores = np.concatenate([detector.predict(clean).sample_scores, detector.predict(corrupted).sample_scores])
    truth = np.concatenate([np.zeros(len(clean)), np.ones(len(corrupted))])
    return float(roc_auc_score(truth, scores))


def baseline_rates(detectors: Mapping[str, Detector], stream: CellStream) -> tuple[dict[str, float], dict[str, float]]:
    """Per fitted baseline detector: (share of the corrupted batches it flags, share of the clean ones)."""
    rates, alarms = {}, {}
    for name, detector in detectors.items():
        flags = [(c, detector.predict(batch).is_drift) for batch, c in zip(stream.batches, stream.corrupted)]
        rates[name] = float(np.mean([f for c, f in flags if c]))
        alarms[name] = float(np.mean([f for c, f in flags if not c]))
    return rates, alarms


def timed(seconds: dict[str, float], step: str, action: Callable[[], Any]) -> Any:
    """Run `action`, adding its wall time in seconds to `seconds[step]`."""
    started = time.perf_counter()
    try:
        return action()
    finally:
        seconds[step] = seconds.get(step, 0.0) + time.perf_counter() - started


# ------------------------------------------------------------------------------------------------- summaries
def method_keys(budgets: Sequence[int]) -> list[str]:
    """Accuracy columns in table order."""
    return [NONE, *(f"{PERSON}-{b}" for b in budgets), *(f"{RANDOM}-{b}" for b in budgets), PSEUDO, FILTER, CEILING]


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of its 95 % t-interval; 0 for one value)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    if len(values) == 1:
        return float(values[0]), 0.0
    spread = float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return float(np.mean(values)), _T95.get(len(values) - 1, 1.96) * spread


def _fmt(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, half = mean_interval([scale * v for v in values])
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if len(values) > 1 else "")


def group_cells(cells: Sequence[CellResult]) -> dict[tuple[str, int], list[CellResult]]:
    """Cells by (corruption, severity), seeds together, in study order."""
    groups: dict[tuple[str, int], list[CellResult]] = {}
    for cell in cells:
        groups.setdefault((cell.corruption, cell.severity), []).append(cell)
    return groups


def recovered_gap(cell: CellResult, method: str) -> float | None:
    """The share of the gap between nothing done and the ceiling that `method` closes on the corrupted holdout;
    None when the ceiling is within 0.5 points of nothing done (no gap to close)."""
    none, ceiling, value = cell.accuracy[NONE][0], cell.accuracy[CEILING][0], cell.accuracy[method][0]
    return None if ceiling - none <= 0.005 else (value - none) / (ceiling - none)


@dataclass(frozen=True)
class Headline:
    """The study's headline figures: mean over cells (and seeds) of the recovered gap of the person's retrain at the
    largest budget, the filter's clean-accuracy cost (points) and its wins, detection rates and false alarms."""

    recovered_gap: float
    filter_clean_cost: float
    filter_wins: int
    filter_cells: int
    detection_rate: float
    false_alarm_rate: float
    mean_auroc: float
    budget: int

    def lines(self) -> list[str]:
        return [
            f"- Retrain with the person's {self.budget} labels recovers {100 * self.recovered_gap:.0f} % of the gap to the all-labelled "
            "ceiling (mean over cells with a gap).",
            f"- The filter costs {self.filter_clean_cost:.2f} points of clean accuracy at most and beats retraining with the person's "
            f"labels on {self.filter_wins} of {self.filter_cells} cells.",
            f"- Scanflow flags {100 * self.detection_rate:.0f} % of the corrupted batches and {100 * self.false_alarm_rate:.0f} % of the "
            f"clean ones; mean sample AUROC {self.mean_auroc:.3f}.",
        ]


@dataclass(frozen=True)
class StudyOutcome:
    """Where a study went: the output folder (absolute), the MLflow run, the number of cells, the headline, the
    files written there (names) and the Prefect flow run ("" outside a flow)."""

    out_dir: str
    mlflow_run_id: str
    cells: int
    headline: Headline
    files: tuple[str, ...]
    prefect_flow_run_id: str


def headline(cells: Sequence[CellResult], budgets: Sequence[int]) -> Headline:
    """The headline over `cells`: gaps at the largest of `budgets`; NaN where no cell has a gap to recover."""
    top = f"{PERSON}-{max(budgets)}"
    gaps = [g for c in cells if (g := recovered_gap(c, top)) is not None]
    costs = [100 * (c.accuracy[NONE][1] - c.accuracy[FILTER][1]) for c in cells]
    wins = sum(c.accuracy[FILTER][0] > c.accuracy[top][0] for c in cells)
    return Headline(
        recovered_gap=float(np.mean(gaps)) if gaps else math.nan,
        filter_clean_cost=max(costs) if costs else math.nan,
        filter_wins=wins, filter_cells=len(cells),
        detection_rate=float(np.nanmean([c.detection_rate[SCANFLOW] for c in cells])),
        false_alarm_rate=float(np.nanmean([c.false_alarms[SCANFLOW] for c in cells])),
        mean_auroc=float(np.mean([c.sample_auroc for c in cells])),
        budget=max(budgets),
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join([":---"] * 2 + ["---:"] * (len(headers) - 2)) + "|"]
    return lines + ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]


def _option_value(name: str, values: Sequence[object]) -> str:
    """An option's values as `scanflow study` takes them: comma-separated, or `all` for every corruption in order."""
    if name == "corruptions" and tuple(values) == tuple(CORRUPTIONS):
        return "all"
    return ",".join(map(str, values))


def command_line(config: StudyConfig, quick: bool) -> str:
    """The `scanflow study` command that reruns `config`: the base set (`--quick` or full) and every option that
    differs from it."""
    base = (quick_config if quick else full_config)(config.dataset)
    words = ["scanflow study", f"--dataset {config.dataset}"] + (["--quick"] if quick else [])
    options = (("corruptions", "--corruptions"), ("severities", "--severities"), ("budgets", "--budgets"))
    words += [f"{flag} {_option_value(name, getattr(config, name))}" for name, flag in options if getattr(config, name) != getattr(base, name)]
    if config.seeds != base.seeds:
        words.append(f"--seeds {len(config.seeds)}")
    for name in ("batch_size", "holdout_size", "retrain_steps", "denoiser_steps"):
        if getattr(config, name) != getattr(base, name):
            words.append(f"--{name.replace('_', '-')} {getattr(config, name)}")
    return " ".join(words)


def markdown_report(cells: Sequence[CellResult], config: StudyConfig, provenance: str, command: str,
                    figures: Sequence[str] = ()) -> str:
    """The study as Markdown: configuration, the command that reruns it, headline, then per (corruption, severity)
    detection, decision and accuracy tables (means over seeds with 95 % intervals when there are several).
    `figures`: image file names to show (relative to the report)."""
    groups = group_cells(cells)
    seeds = "mean ± 95 % interval over seeds" if len(config.seeds) > 1 else "one seed"
    out = [f"# Study: {config.dataset}", "", f"Configuration: {config.describe()}. {provenance}", "",
           f"Command: `{command}`", "",
           "## Headline", "", *headline(cells, config.budgets).lines(), ""]
    out += [f"![{name}]({name})" for name in figures] + ([""] if figures else [])
    out += [f"## Detection and decision ({seeds})", ""]
    detectors = [SCANFLOW, *config.baselines]
    out += _table(["corruption", "severity", "lowest p (corrupted)", "sample AUROC", *(f"rate {d}" for d in detectors),
                   "false alarms", "decision", "labels", "promoted", "challenger % (corrupted / clean)"],
                  [[c, s, f"{min(v.p_value for cell in g for v in cell.verdicts if v.corrupted):.3g}",
                    _fmt([cell.sample_auroc for cell in g], 1.0, 3),
                    *(_fmt([cell.detection_rate[d] for cell in g], 1.0, 2) for d in detectors),
                    _fmt([cell.false_alarms[SCANFLOW] for cell in g], 1.0, 2),
                    ", ".join(sorted({cell.decision.action for cell in g})), "/".join(str(cell.decision.labels_given) for cell in g),
                    "/".join(("yes" if cell.decision.promoted else "no") if cell.decision.action not in ("none", "ignore") else "-" for cell in g),
                    _challenger_cell(g)]
                   for (c, s), g in groups.items()])
    keys = method_keys(config.budgets)
    titles = [_title(k) for k in keys]
    for position, what in ((0, "corrupted"), (1, "clean")):
        out += ["", f"## Accuracy % on the {what} holdout ({seeds})", ""]
        out += _table(["corruption", "severity", *titles],
                      [[c, s, *(_fmt([cell.accuracy[k][position] for cell in g]) for k in keys)] for (c, s), g in groups.items()])
    steps = sorted({step for cell in cells for step in cell.seconds})
    out += ["", "## Wall time of each step (s, mean over seeds)", ""]
    out += _table(["corruption", "severity", *steps],
                  [[c, s, *(f"{np.mean([cell.seconds.get(step, 0.0) for cell in g]):.1f}" for step in steps)] for (c, s), g in groups.items()])
    return "\n".join(out) + "\n"


def _challenger_cell(cells: Sequence[CellResult]) -> str:
    """The decision's challenger accuracy (%) on the corrupted / clean holdout, "-" when no cell built one."""
    pairs = [cell.decision.challenger_accuracy for cell in cells if not math.isnan(cell.decision.challenger_accuracy[0])]
    if not pairs:
        return "-"
    return f"{_fmt([p[0] for p in pairs])} / {_fmt([p[1] for p in pairs])}"


def _title(key: str) -> str:
    method, _, budget = key.partition("-")
    return METHOD_TITLES[method] + (f" B={budget}" if budget else "")


def cells_csv(cells: Sequence[CellResult], config: StudyConfig) -> str:
    """One row per cell and seed: detection, decision and every accuracy (fractions)."""
    keys = method_keys(config.budgets)
    detectors = [SCANFLOW, *config.baselines]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "seed", "corruption", "family", "severity", "lowest_p_corrupted", "sample_auroc",
                     *(f"rate_{d}" for d in detectors), *(f"false_alarms_{d}" for d in detectors), "decision", "labels_given",
                     "challenger_version", "promoted", "corrupted_challenger", "clean_challenger", *(f"corrupted_{k}" for k in keys), *(f"clean_{k}" for k in keys),
                     *(f"seconds_{s}" for s in sorted({s for c in cells for s in c.seconds}))])
    steps = sorted({s for c in cells for s in c.seconds})
    for c in cells:
        writer.writerow([c.dataset, c.seed, c.corruption, c.family, c.severity,
                         f"{min(v.p_value for v in c.verdicts if v.corrupted):.6g}", f"{c.sample_auroc:.4f}",
                         *(f"{c.detection_rate[d]:.4f}" for d in detectors), *(f"{c.false_alarms[d]:.4f}" for d in detectors),
                         c.decision.action, c.decision.labels_given, c.decision.challenger_version or "", str(c.decision.promoted).lower(),
                         *("" if math.isnan(value) else f"{value:.4f}" for value in c.decision.challenger_accuracy),
                         *(f"{c.accuracy[k][0]:.4f}" for k in keys), *(f"{c.accuracy[k][1]:.4f}" for k in keys),
                         *(f"{c.seconds.get(s, 0.0):.2f}" for s in steps)])
    return buffer.getvalue()


def study_figures(cells: Sequence[CellResult], config: StudyConfig, alpha: float) -> dict[str, bytes]:
    """Every study figure (`FIGURES`) as PNG and SVG bytes, by file name; the stream is the first seed's."""
    from scanflow.plots import budget_figure, detection_heatmap, figure_bytes, remedy_figure, stream_figure, study_stream_rows

    first = [c for c in cells if c.seed == config.seeds[0]]
    drawn = {
        "budget": budget_figure(cells, config.budgets),
        "stream": stream_figure(study_stream_rows(first), alpha),
        "detection": detection_heatmap(cells, [SCANFLOW, *config.baselines]),
        "remedies": remedy_figure(cells, max(config.budgets)),
    }
    return {f"{name}.{fmt}": figure_bytes(drawn[name], fmt) for name in FIGURES for fmt in ("png", "svg")}


def table_rows(cells: Sequence[CellResult]) -> list[dict[str, Any]]:
    """One row per cell and seed for a Prefect table artifact: detection, decision, corrupted accuracy (fractions)."""
    return [{"seed": c.seed, "corruption": c.corruption, "severity": c.severity, "flagged": round(c.detection_rate[SCANFLOW], 3),
             "decision": c.decision.action, "promoted": c.decision.promoted, "auroc": round(c.sample_auroc, 3),
             **{f"acc {k}": round(v[0], 3) for k, v in c.accuracy.items()}} for c in cells]


def write_outputs(out_dir: Path, report: str, csv_text: str, figures: Mapping[str, bytes]) -> list[Path]:
    """Write the report (study.md), the table (cells.csv) and the figures into `out_dir`; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "study.md", out_dir / "cells.csv"]
    paths[0].write_text(report)
    paths[1].write_text(csv_text)
    for name, data in figures.items():
        (out_dir / name).write_bytes(data)
        paths.append(out_dir / name)
    return paths

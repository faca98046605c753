"""Improvement benchmark: does retraining on selected, labelled critical samples (or a filter) recover accuracy?

For each corruption (severity 3) a champion trained on clean data meets a production stream of corrupted images.
Accuracy on a separate corrupted holdout and on the clean holdout (the same images uncorrupted) is reported for:

  (a) no improvement
  (b) retrain with B randomly chosen stream samples, oracle-labelled (the published selection)
  (c) retrain on the champion's own predictions of the whole stream (the published follow-up)
  (d) Scanflow's retrain: B samples of the drifted part of the stream chosen by the detector and `select_typical`
      (typical in the classifier's hidden-layer features), oracle-labelled, plus
      confident pseudo-labels of the stream and clean replay
  (e) Scanflow's filter: a denoiser in front of the unchanged champion; no labels
  (f) upper bound: retrain with every stream sample labelled

(b), (c), (d) and (f) share one fine-tuning routine (`scanflow.improve.fine_tune`, same steps and clean replay),
so the columns differ only in which samples are labelled and how. Honest protocol: nothing is tuned on the
corrupted holdout; the denoisers are trained on synthetic corruptions in two folds, each fold's denoiser never
seeing any corruption it is evaluated on (stricter than leave-one-corruption-out; every family has members in
both folds). Run `python -m benchmarks.improvement --quick` (about 8 minutes on 2 idle cores once the champions are
cached by the detection benchmark or a first run) or without `--quick` for the full configuration.

One seed cannot rank (b) against (d): two random draws of 100 labels differ by about 2 points. `--replicates R`
repeats the label-dependent columns (b) and (d) R times on the same champion and stream, each replicate drawing its
random labels, its clusters and its fine-tuning batches with its own seed, and reports the paired difference (d) - (b)
per corruption (mean and spread over replicates); `--columns b d` leaves out the others ((a) is always measured).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import torch

from benchmarks.detection import _default_data_dir, log, markdown_table, rng_for, trained_models
from scanflow.corruptions import corrupt, corruption_names
from scanflow.data import LabeledImages, load_train_test
from scanflow.drift.autoencoder import fit_detector
from scanflow.drift.selection import select_typical
from scanflow.improve import DEFAULT_PROMOTION_MARGIN, DenoiserConfig, FilteredClassifier, HoldoutScores, RetrainConfig, decide, fine_tune, train_denoiser
from scanflow.improve.filter import DEFAULT_GATE_QUANTILE, calibrate_gate

#: Two folds of corruptions; every family has members in both, and a fold's denoiser trains on the other fold.
FOLDS = (
    ("shot_noise", "glass_blur", "shear", "scale", "stripe", "dotted_line", "brightness", "fog"),
    ("impulse_noise", "motion_blur", "rotate", "translate", "zigzag", "canny_edges", "spatter"),
)
#: One corruption per family (noise, blur, geometric, artefact, weather).
ONE_PER_FAMILY = ("shot_noise", "glass_blur", "rotate", "stripe", "fog")
NOISE_AND_BLUR = ("shot_noise", "impulse_noise", "glass_blur", "motion_blur")

QUICK = {"corruptions": {"fashion-mnist": ONE_PER_FAMILY, "mnist": ONE_PER_FAMILY}, "budgets": (100,), "retrain_steps": 200, "denoiser_steps": 600}
FULL = {"corruptions": {"fashion-mnist": tuple(corruption_names()), "mnist": tuple(corruption_names())}, "budgets": (20, 50, 100, 200), "retrain_steps": 300, "denoiser_steps": 1500}
MAIN_BUDGET = 100
#: (a) none, (b) random labels, (c) own labels, (d) Scanflow's retrain, (e) filter, (f) all labelled.
COLUMNS = ("a", "b", "c", "d", "e", "f")
#: Replicate r draws with seed `seed + REPLICATE_SEED_STRIDE * r`; replicate 0 is the single-run benchmark.
REPLICATE_SEED_STRIDE = 1000


@dataclass(frozen=True)
class Config:
    quick: bool
    datasets: tuple[str, ...]
    corruptions: dict[str, tuple[str, ...]]
    budgets: tuple[int, ...]
    retrain_steps: int
    denoiser_steps: int
    stream_size: int
    severity: int
    seed: int
    data_dir: Path
    cache_dir: Path
    columns: tuple[str, ...] = COLUMNS
    replicates: int = 1
    date: str = field(default_factory=lambda: datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))

    def summary(self, dataset: str) -> str:
        return (
            f"{'quick' if self.quick else 'full'}: {len(self.corruptions[dataset])} corruptions at severity {self.severity}, "
            f"stream {self.stream_size}, budgets {','.join(map(str, self.budgets))} (B = {MAIN_BUDGET} for c, e, f), "
            f"fine-tune {self.retrain_steps} steps x batch 128, denoiser {self.denoiser_steps} steps x batch 64, "
            f"seed {self.seed}, {self.date}, {os.cpu_count()} cpu / {torch.get_num_threads()} torch threads"
            + (f", columns {','.join(self.columns)}" if self.columns != COLUMNS else "")
            + (f", {self.replicates} replicates of (b) and (d)" if self.replicates > 1 else "")
        )


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.improvement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one corruption per family, B = 100 only, shorter training")
    parser.add_argument("--datasets", nargs="+", choices=("fashion-mnist", "mnist"), default=("fashion-mnist", "mnist"))
    parser.add_argument("--corruptions", nargs="+", choices=corruption_names(), help="override the configuration's list")
    parser.add_argument("--budgets", nargs="+", type=int, help=f"override the label budgets of (b) and (d); without {MAIN_BUDGET}, the budget the targets are stated at, "
                        "the targets are not judged (a sweep of the other budgets)")
    parser.add_argument("--stream-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replicates", type=int, default=1, help="repeat (b) and (d) with this many seeds on the same champion and stream")
    parser.add_argument("--columns", nargs="+", choices=COLUMNS, default=COLUMNS, help="the improvements to measure ((a) always is)")
    parser.add_argument("--data-dir", type=Path, default=_default_data_dir())
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "scanflow" / "benchmarks")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    corruptions = {name: tuple(args.corruptions) if args.corruptions else defaults["corruptions"][name] for name in args.datasets}
    budgets = tuple(sorted(set(args.budgets))) if args.budgets else defaults["budgets"]
    if MAIN_BUDGET not in budgets and args.replicates > 1:
        parser.error(f"--replicates compares (b) and (d) at B = {MAIN_BUDGET}: the budgets must include it; got {', '.join(map(str, budgets))}")
    if args.replicates < 1:
        parser.error(f"--replicates must be at least 1; got {args.replicates}")
    columns = tuple(c for c in COLUMNS if c == "a" or c in args.columns)
    return Config(
        quick=args.quick, datasets=tuple(args.datasets), corruptions=corruptions, budgets=budgets,
        retrain_steps=defaults["retrain_steps"], denoiser_steps=defaults["denoiser_steps"], stream_size=args.stream_size,
        severity=3, seed=args.seed, data_dir=args.data_dir, cache_dir=args.cache_dir.expanduser(), columns=columns,
        replicates=args.replicates,
    )


@dataclass(frozen=True)
class Data:
    train: LabeledImages
    calibration: LabeledImages
    stream: LabeledImages
    holdout: LabeledImages
    description: str


def load_data(name: str, config: Config) -> Data:
    """Fashion-MNIST: train split for the champion; test split permuted into 2,000 calibration, the stream's
    source and the rest as holdout. MNIST (test split only here): the detection benchmark's 5,000 training images,
    then 1,000 calibration, the stream's source, the rest as holdout."""
    train, held_out = load_train_test(name, data_dir=config.data_dir, seed=config.seed)
    order = np.random.default_rng(config.seed).permutation(len(held_out))
    n_calibration = 1000 if train.split.startswith("test") else 2000
    cut = n_calibration + config.stream_size
    if len(held_out) - cut < 1000:
        raise SystemExit(f"{name}: {len(held_out)} held-out images leave fewer than 1,000 for the holdout; lower --stream-size")
    calibration, stream, holdout = held_out.subset(order[:n_calibration]), held_out.subset(order[n_calibration:cut]), held_out.subset(order[cut:])
    description = (
        f"champion trained on {len(train):,} clean images ({train.split}); stream {len(stream):,} and holdout "
        f"{len(holdout):,} images of {held_out.split} (disjoint), detector calibrated on {len(calibration):,} more"
    )
    return Data(train, calibration, stream, holdout, description)


def accuracy(model: object, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model.predict(images) == labels).float().mean())


@dataclass
class Row:
    corruption: str
    corrupted: dict[str, float] = field(default_factory=dict)
    clean: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    promoted: dict[str, bool] = field(default_factory=dict)
    #: Clean-accuracy change (fraction) of the candidate the promotion rule judged, by column key: with replicates
    #: that is replicate 0's model, whose change `clean` (a mean over replicates) does not show.
    judged_clean_change: dict[str, float] = field(default_factory=dict)
    n_above_threshold: int = 0
    #: (corrupted, clean, seconds) of each replicate of (b) and (d), by column key; the other fields hold their means.
    replicates: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)


def run_dataset(name: str, config: Config) -> tuple[list[Row], str]:
    data = load_data(name, config)
    classifier, autoencoder, provenance = trained_models(SimpleNamespace(name=name, train=data.train), config.seed, config.cache_dir)
    log(f"{name}: champion {provenance}; {data.description}")
    detector = fit_detector(classifier, autoencoder, data.train, data.calibration, seed=config.seed)
    plain = RetrainConfig(steps=config.retrain_steps, seed=config.seed, pseudo_share=0.0)
    filters = {}
    for fold, members in enumerate(FOLDS):
        if "e" not in config.columns or not set(members) & set(config.corruptions[name]):
            continue
        started = time.perf_counter()
        result = train_denoiser(classifier, data.train, DenoiserConfig(exclude=members, steps=config.denoiser_steps, batch_size=64, seed=config.seed))
        gate = calibrate_gate(result.denoiser, data.calibration.images, DEFAULT_GATE_QUANTILE)
        filters[fold] = (FilteredClassifier(classifier, result.denoiser, gate_threshold=gate), time.perf_counter() - started)
        log(f"{name}: denoiser for fold {fold} trained on {len(result.training_corruptions)} corruptions in {filters[fold][1]:.0f} s")
    clean_images, clean_labels = data.holdout.images, data.holdout.labels
    champion_clean = accuracy(classifier, clean_images, clean_labels)
    rows = []
    for corruption in config.corruptions[name]:
        row = Row(corruption)
        stream = corrupt(data.stream.images, corruption, config.severity, seed=config.seed + 1)
        holdout = corrupt(clean_images, corruption, config.severity, seed=config.seed + 2)
        champion_correct = tuple((classifier.predict(holdout) == clean_labels).tolist())
        champion_scores = HoldoutScores(champion_clean, float(np.mean(champion_correct)), len(clean_labels), len(clean_labels), champion_correct)

        def record(key: str, model: object, seconds: float, judge: bool = False, replicate: int = 0) -> None:
            corrupted = accuracy(model, holdout, clean_labels)
            clean = champion_clean if model is classifier else accuracy(model, clean_images, clean_labels)
            if config.replicates > 1 and key[0] in "bd":
                row.replicates.setdefault(key, []).append((corrupted, clean, seconds))
                corrupted, clean, seconds = (float(np.mean(values)) for values in zip(*row.replicates[key]))
            row.corrupted[key], row.clean[key], row.seconds[key] = corrupted, clean, seconds
            if judge and replicate == 0:
                correct = tuple((model.predict(holdout) == clean_labels).tolist())  # per image, for the paired test
                candidate = HoldoutScores(row.clean[key], row.corrupted[key], len(clean_labels), len(clean_labels), correct)
                row.promoted[key] = decide(champion_scores, candidate, DEFAULT_PROMOTION_MARGIN).promote
                row.judged_clean_change[key] = row.clean[key] - champion_clean

        def labelled(indices: np.ndarray | torch.Tensor, labels: torch.Tensor | None = None) -> LabeledImages:
            index = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
            chosen = data.stream.labels[index] if labels is None else labels
            return LabeledImages(stream[index], chosen, data.train.info, f"{corruption} stream[{len(index)}]")

        record("a", classifier, 0.0)
        embeddings, probabilities = (tensor.numpy() for tensor in classifier.embed_and_predict_proba(stream))
        result, _ = detector.assess(stream, probabilities=probabilities)
        row.n_above_threshold = len(result.critical_indices)
        for replicate in range(config.replicates):
            seed = config.seed + REPLICATE_SEED_STRIDE * replicate
            for budget in config.budgets:
                if "b" in config.columns:
                    random_rows = rng_for(seed, "random", corruption, budget).permutation(len(stream))[:budget]
                    tuned = fine_tune(classifier, labelled(random_rows), data.train, RetrainConfig(steps=config.retrain_steps, seed=seed, pseudo_share=0.0))
                    record(f"b{budget}", tuned.classifier, tuned.seconds, replicate=replicate)
                if "d" in config.columns:
                    started = time.perf_counter()
                    selection = select_typical(result.sample_scores, result.critical_indices, budget, embeddings, seed=seed,
                                               clean_median=detector.clean_score_quantile(0.5))
                    tuned = fine_tune(classifier, labelled(np.asarray(selection.indices)), data.train,
                                      RetrainConfig(steps=config.retrain_steps, seed=seed), unlabelled=stream)
                    record(f"d{budget}", tuned.classifier, time.perf_counter() - started, judge=budget == MAIN_BUDGET, replicate=replicate)
        if "c" in config.columns:
            own = torch.from_numpy(probabilities.argmax(axis=1)).long()
            tuned = fine_tune(classifier, labelled(np.arange(len(stream)), own), data.train, plain)
            record("c", tuned.classifier, tuned.seconds)
        if "e" in config.columns:
            fold = next(k for k, members in enumerate(FOLDS) if corruption in members)
            record("e", filters[fold][0], filters[fold][1], judge=True)
        if "f" in config.columns:
            tuned = fine_tune(classifier, labelled(np.arange(len(stream))), data.train, plain)
            record("f", tuned.classifier, tuned.seconds)
        replicates = "".join(f"; {k} per replicate " + " ".join(f"{c:.3f}" for c, _, _ in values) for k, values in row.replicates.items())
        log(f"{name} {corruption}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.corrupted.items()) + replicates)
        rows.append(row)
    return rows, provenance


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def report(name: str, rows: list[Row], config: Config, provenance: str) -> list[str]:
    budgets = config.budgets
    expanded = {"b": [f"b{b}" for b in budgets], "d": [f"d{b}" for b in budgets]}
    keys = [key for column in ("a", "b", "c", "d", "e", "f") if column in config.columns for key in expanded.get(column, [column])]
    titles = {"a": "(a) none", "c": "(c) own labels", "e": "(e) filter", "f": "(f) all labelled"}
    titles.update({f"b{b}": f"(b) random B={b}" for b in budgets})
    titles.update({f"d{b}": f"(d) ours B={b}" for b in budgets})
    averaged = " (mean of the replicates for (b) and (d))" if config.replicates > 1 else ""
    out = [f"### {name}: accuracy % on the corrupted holdout{averaged}", "", f"Configuration: {config.summary(name)}. Champion {provenance}.", ""]
    out += markdown_table(["corruption", *(titles[k] for k in keys)], [[r.corruption, *(_pct(r.corrupted[k]) for k in keys)] for r in rows])
    out += ["", f"### {name}: accuracy % on the clean holdout (same images, uncorrupted){averaged}", ""]
    out += markdown_table(["corruption", *(titles[k] for k in keys)], [[r.corruption, *(_pct(r.clean[k]) for k in keys)] for r in rows])
    out += ["", f"### {name}: wall time of each improvement (s)", ""]
    out += markdown_table(["corruption", *(titles[k] for k in keys[1:])], [[r.corruption, *(f"{r.seconds[k]:.0f}" for k in keys[1:])] for r in rows])
    if config.replicates > 1 and {"b", "d"} <= set(config.columns):
        out += ["", *paired_replicates(name, rows, config)]
    out += ["", summary(name, rows, config), ""]
    return out


def paired_replicates(name: str, rows: list[Row], config: Config) -> list[str]:
    """(d) - (b) per corruption over the replicates: the mean, its standard error, and in how many replicates (d) won."""
    b, d = f"b{MAIN_BUDGET}", f"d{MAIN_BUDGET}"
    table, means = [], []
    for row in rows:
        by_b, by_d = ([run[0] for run in row.replicates[key]] for key in (b, d))
        differences = 100 * (np.asarray(by_d) - np.asarray(by_b))
        means.append(differences.mean())
        spread = differences.std(ddof=1) / np.sqrt(len(differences))
        table.append([row.corruption, *(f"{100 * v:.1f}" for v in by_b), *(f"{100 * v:.1f}" for v in by_d),
                      f"{differences.mean():+.1f} +- {spread:.1f}", f"{int((differences > 0).sum())} of {len(differences)}"])
    n = config.replicates
    header = ["corruption", *(f"(b) r{r}" for r in range(n)), *(f"(d) r{r}" for r in range(n)), "(d) - (b), mean +- s.e.", "(d) ahead"]
    ahead = sum(m > 0 for m in means)
    return [f"### {name}: (d) against (b) at B = {MAIN_BUDGET}, {n} replicates (accuracy % on the corrupted holdout)", "",
            *markdown_table(header, table), "",
            f"(d) is ahead of (b) on average over the replicates on {ahead} of {len(rows)} corruptions; mean difference over all "
            f"corruptions {float(np.mean(means)):+.2f} points."]


def summary(name: str, rows: list[Row], config: Config) -> str:
    """The targets this run can judge: a target whose columns were left out is not mentioned."""
    main, columns = f"d{MAIN_BUDGET}", set(config.columns)
    parts = []
    if {"b", "d"} <= columns and len(config.budgets) > 1:
        by_budget = []
        for budget in config.budgets:
            leads = [r.corrupted[f"d{budget}"] - r.corrupted[f"b{budget}"] for r in rows]
            by_budget.append(f"B={budget}: {sum(lead > 0 for lead in leads)} of {len(rows)}, mean {100 * float(np.mean(leads)):+.1f} points")
        parts.append(f"(d) ahead of (b) by budget ({'means of replicates' if config.replicates > 1 else 'one draw'}): {'; '.join(by_budget)}.")
    if MAIN_BUDGET not in config.budgets:
        columns -= {"b", "d"}
        parts.append(f"The targets of (b) and (d) are stated at B = {MAIN_BUDGET}, which this run left out.")
    if {"d", "f"} <= columns:
        gaps = [(r.corrupted[main] - r.corrupted["a"]) / (r.corrupted["f"] - r.corrupted["a"]) for r in rows if r.corrupted["f"] - r.corrupted["a"] > 0.005]
        parts.append(f"(d) at B={MAIN_BUDGET} recovers {100 * float(np.mean(gaps)):.0f} % of the gap between (a) and (f) on average "
                     f"(over {len(gaps)} corruptions with a gap; target >= 70 %).")
    if {"b", "c", "d"} <= columns:
        wins = sum(r.corrupted[main] > max(r.corrupted[f"b{MAIN_BUDGET}"], r.corrupted["c"]) for r in rows)
        parts.append(f"(d) beats both (b) and (c) on {wins} of {len(rows)} corruptions (target: 12 of 15).")
    if "e" in columns:
        noise_blur = [r for r in rows if r.corruption in NOISE_AND_BLUR]
        filter_wins = sum(r.corrupted["e"] > r.corrupted["a"] for r in noise_blur)
        filter_cost = max(r.clean["a"] - r.clean["e"] for r in rows)
        parts.append(f"The filter raises corrupted accuracy over (a) on {filter_wins} of {len(noise_blur)} noise/blur corruptions "
                     f"and costs at most {100 * filter_cost:.2f} points of clean accuracy (target <= 0.5).")
    judged = [k for k in (main, "e") if k[0] in columns]
    promoted = [(r, k) for r in rows for k in judged if r.promoted.get(k)]
    if judged:
        worst = min((r.judged_clean_change[k] for r, k in promoted), default=0.0)
        judged_what = " (replicate 0 of each, the model the rule judged)" if config.replicates > 1 else ""
        parts.append(f"The promotion rule (margin {DEFAULT_PROMOTION_MARGIN}) promotes {len(promoted)} of {len(judged) * len(rows)} candidates "
                     f"({' and '.join(judged)}){judged_what}; the worst clean-accuracy change of a promoted one is {100 * worst + 0.0:+.2f} points.")
    return f"**{name} summary.** " + " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    for name in config.datasets:
        rows, provenance = run_dataset(name, config)
        print("\n".join(report(name, rows, config, provenance)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

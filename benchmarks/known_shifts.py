"""Known-shift benchmark: does "one drift, one question" recognise a repeat of a decided drift, and only that?

On Fashion-MNIST (the demo's data), a champion trained on clean images and its detector. For each corruption A of
the 15 at `--severity`, one window of `--size` test images corrupted with A is the decided batch (its signature is
kept, as the improve flow keeps it; `--record-size` keeps fewer images, as a retrain does). Then `--windows` other
windows (disjoint images, other corruption seeds) of every corruption B, and of A at severity 5, are tested against
it with `match_known_shift` at alpha 0.05:

- recognised (A = B): the share of repeats that are not asked about again; ideally 1 - alpha = 0.95;
- confused (A != B): the share of windows of another corruption taken for A (asked nobody, wrongly); ideally 0.
- A at severity 5: how often a much heavier version of a decided drift passes as the decided one.

The champion here is not filtered nor retrained: this is the decision "ignore" (for a promoted filter the signatures
come from the cleaned images, for a promoted retrain from the retrained champion's view of the rows it did not learn
from). Run `python -m benchmarks.known_shifts` (a few minutes on 2 cores once the champion is cached).
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from benchmarks.detection import _default_data_dir, log, markdown_table, trained_models
from scanflow.corruptions import corrupt, corruption_names
from scanflow.data import load_train_test
from scanflow.drift.autoencoder import fit_detector
from scanflow.drift.known import KnownShift, match_known_shift

ALPHA = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.known_shifts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=200, help="images per window (the demo's batch size)")
    parser.add_argument("--record-size", type=int, default=None,
                        help="images of the decided window kept as the known shift (default: all; a retrain keeps "
                             "only the rows it did not learn from, half the unshown: 50 of a 200-image batch at budget 100)")
    parser.add_argument("--windows", type=int, default=10, help="windows tested per (decided, incoming) pair")
    parser.add_argument("--severity", type=int, default=3, choices=(1, 2, 3, 4, 5))
    parser.add_argument("--decision", choices=("ignore", "retrain"), default="ignore",
                        help="ignore: the champion keeps serving; retrain: per decided corruption, the champion is "
                             "retrained on the window (oracle labels of --budget rows) and the new champion's view is tested")
    parser.add_argument("--budget", type=int, default=20, help="retrain: labelled rows of the decided window (the demo's budget)")
    parser.add_argument("--corruptions", type=lambda text: text.split(","), default=None,
                        help="comma-separated subset of the corruptions (default: all 15)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=_default_data_dir())
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "scanflow" / "benchmarks")
    args = parser.parse_args()
    record_size = args.record_size or args.size
    if not 2 <= record_size <= args.size:
        raise SystemExit(f"--record-size must be between 2 and --size ({args.size}), got {record_size}")
    unknown = sorted(set(args.corruptions or ()) - set(corruption_names()))
    if unknown:
        raise SystemExit(f"unknown corruptions {unknown}: choose from {', '.join(corruption_names())}")

    train, test = load_train_test("fashion-mnist", data_dir=args.data_dir, seed=args.seed)
    order = np.random.default_rng(args.seed).permutation(len(test))
    calibration, pool, pool_labels = test.subset(order[:2000]), test.images[order[2000:]], test.labels[order[2000:]]
    if len(pool) < (args.windows + 1) * args.size:
        raise SystemExit(f"{len(pool)} pool images are too few for {args.windows + 1} windows of {args.size}")
    classifier, autoencoder, provenance = trained_models(SimpleNamespace(name="fashion-mnist", train=train), args.seed, args.cache_dir.expanduser())
    detector = fit_detector(classifier, autoencoder, train, calibration, seed=args.seed)
    log(f"champion {provenance}; detector fitted")
    names = args.corruptions or corruption_names()
    windows = [pool[i * args.size:(i + 1) * args.size] for i in range(args.windows + 1)]
    decided, incoming = windows[0], windows[1:]
    if args.decision == "retrain":
        retrain_benchmark(args, train, calibration, classifier, autoencoder, detector, decided, pool_labels[:args.size], incoming)
        return

    def signature(images: torch.Tensor, corruption: str, severity: int, seed: int) -> np.ndarray:
        return detector.shift_signature(corrupt(images, corruption, severity, seed=seed))

    incoming_signatures = {
        (name, severity): [signature(window, name, severity, args.seed + 1 + k) for k, window in enumerate(incoming)]
        for name in names for severity in sorted({args.severity, 5})
    }
    log("signatures computed")
    rows, confusions = [], []
    recognised_all, confused_all = [], []
    for name in names:
        known = [KnownShift(f"decided-{name}", "1", "ignore", "-", signature(decided[:record_size], name, args.severity, args.seed))]

        def rate(other: str, severity: int) -> float:
            hits = [match_known_shift(s, known, ALPHA, seed=args.seed) is not None for s in incoming_signatures[(other, severity)]]
            return float(np.mean(hits))

        recognised = rate(name, args.severity)
        others = {other: rate(other, args.severity) for other in names if other != name}
        worst = max(others, key=others.get)
        heavier = rate(name, 5) if args.severity != 5 else float("nan")
        recognised_all.append(recognised)
        confused_all.extend(others.values())
        confusions += [(name, other, value) for other, value in others.items() if value > 0]
        worst_cell = f"{worst} {others[worst]:.2f}" if others[worst] > 0 else "none"
        rows.append((name, f"{recognised:.2f}", f"{np.mean(list(others.values())):.3f}", worst_cell, f"{heavier:.2f}"))
        log(f"{name}: recognised {recognised:.2f}, worst confusion {worst_cell}")

    configuration = (f"Fashion-MNIST, {args.size}-image windows, known shift kept from {record_size} images, severity {args.severity}, {args.windows} windows per pair, "
                     f"alpha {ALPHA}, seed {args.seed}, {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cpu")
    print(f"\n### Known shifts: a decided drift's repeats recognised, other drifts not — {configuration}\n")
    print("\n".join(markdown_table(
        ("decided corruption", "repeats recognised", "other corruptions taken for it (mean)", "worst other", "same at severity 5 taken for it"), rows)))
    print(f"\nMean: repeats recognised {np.mean(recognised_all):.3f} (ideal 0.95); other corruptions taken for the decided "
          f"one {np.mean(confused_all):.4f} (ideal 0); pairs ever confused: {len(confusions)} of {len(names) * (len(names) - 1)}"
          + ("".join(f"\n- {a} <- {b}: {v:.2f}" for a, b, v in sorted(confusions, key=lambda c: -c[2]))))


def retrain_benchmark(args, train, calibration, classifier, autoencoder, detector, decided, decided_labels, incoming) -> None:
    """After a promoted retrain on a window of corruption A: do clean windows pass the new champion's detector, and
    is a repeat of A recognised (not asked again)? Against, in the same process, the detector refitted the old way
    (the drifted window in its reference, no known shift), which this replaced."""
    from scanflow.drift.autoencoder import AutoencoderDetector
    from scanflow.human import Decision
    from scanflow.improve import ImprovementContext, RetrainImprover
    from scanflow.improve.base import DETECTOR_REFERENCE_IMAGES

    names = args.corruptions or corruption_names()
    rows, totals = [], {"clean": [], "clean_old": [], "asked": [], "asked_old": [], "confused": [], "heavier": []}
    reference_rows = np.sort(np.random.default_rng(args.seed).permutation(len(train))[:DETECTOR_REFERENCE_IMAGES])
    for name in names:
        window = corrupt(decided, name, args.severity, seed=args.seed)
        context = ImprovementContext(
            classifier=classifier, autoencoder=autoencoder, batch=window, shown_indices=tuple(range(args.budget)),
            replay=train, clean_holdout=calibration, calibration=calibration, detector=detector, seed=args.seed,
        )
        improver = RetrainImprover()
        plan = improver.plan(None, context)
        outcome = improver.apply(plan, Decision("retrain", tuple(int(y) for y in decided_labels[:args.budget]), decided_by="oracle"))
        new = outcome.detector
        old = AutoencoderDetector(outcome.candidate, autoencoder, seed=args.seed).fit(
            torch.cat([train.images[torch.from_numpy(reference_rows)], window]), calibration=calibration.images, info=train.info)
        known = [KnownShift(f"decided-{name}", "2", "retrain", "-", new.shift_signature(window[torch.tensor(plan.unseen_rows)]))]

        def asked(detector_: AutoencoderDetector, images: torch.Tensor, recognise: bool) -> bool:
            """Whether a window is a question for a person: it drifts and is no known shift."""
            drifted = detector_.predict(images).is_drift
            return drifted and not (recognise and match_known_shift(detector_.shift_signature(images), known, ALPHA, seed=args.seed))

        repeats = [corrupt(w, name, args.severity, seed=args.seed + 1 + k) for k, w in enumerate(incoming)]
        clean = float(np.mean([new.predict(w).is_drift for w in incoming]))
        clean_old = float(np.mean([old.predict(w).is_drift for w in incoming]))
        asked_new = float(np.mean([asked(new, r, True) for r in repeats]))
        asked_old = float(np.mean([asked(old, r, False) for r in repeats]))
        others = [float(np.mean([match_known_shift(new.shift_signature(corrupt(w, other, args.severity, seed=args.seed + 1 + k)), known, ALPHA, seed=args.seed) is not None
                                 for k, w in enumerate(incoming)])) for other in names if other != name]
        heavier = float(np.mean([match_known_shift(new.shift_signature(corrupt(w, name, 5, seed=args.seed + 1 + k)), known, ALPHA, seed=args.seed) is not None
                                 for k, w in enumerate(incoming)])) if args.severity != 5 else float("nan")
        for key, value in (("clean", clean), ("clean_old", clean_old), ("asked", asked_new), ("asked_old", asked_old), ("heavier", heavier)):
            totals[key].append(value)
        totals["confused"].extend(others)
        rows.append((name, f"{clean:.2f}", f"{clean_old:.2f}", f"{asked_new:.2f}", f"{asked_old:.2f}", f"{np.mean(others):.3f}", f"{heavier:.2f}"))
        log(f"{name}: clean alarms {clean:.2f} (old {clean_old:.2f}), repeats asked again {asked_new:.2f} (old {asked_old:.2f})")

    configuration = (f"Fashion-MNIST, {args.size}-image windows, retrain on {args.budget} oracle labels + pseudo-labels, "
                     f"known shift from the {len(plan.unseen_rows)} unseen rows, severity {args.severity}, {args.windows} windows per cell, "
                     f"alpha {ALPHA}, seed {args.seed}, {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cpu")
    print(f"\n### Known shifts after a retrain: clean windows and repeats as the new champion sees them — {configuration}\n")
    print("\n".join(markdown_table(
        ("decided corruption", "clean windows alarm", "old refit: clean alarm", "repeats asked again", "old refit: repeats asked again",
         "other corruptions taken for it", "same at severity 5 taken for it"), rows)))
    print(f"\nMean: clean windows alarm {np.mean(totals['clean']):.3f} (old refit {np.mean(totals['clean_old']):.3f}; ideal alpha = {ALPHA}); "
          f"repeats asked again {np.mean(totals['asked']):.3f} (old refit {np.mean(totals['asked_old']):.3f}; ideal 0); "
          f"other corruptions taken for the decided one {np.mean(totals['confused']):.4f} (ideal 0); "
          f"severity 5 taken for severity {args.severity} {np.nanmean(totals['heavier']):.3f}")


if __name__ == "__main__":
    main()

"""False alarms of the detector as the train flow fits it: calibrated on held-out training images, tested on clean
test images, against clean training images that neither the models nor the calibration saw.

The detection benchmark calibrates on test images and draws its windows from test images too; a deployed detector is
calibrated by the train flow on `hold_out_calibration(train)` and then watches production data. This script splits
the training set as the train flow does (models on the rest, 2,000 images to calibrate), sets aside a further 2,000
unseen training images as a control, trains the champion at the train flow's default epochs and fits its detector
(`fit_detector`), then counts alarms on `--windows` random clean windows (without replacement inside a window) per
batch size, from the test set and from the control. Rates come with 95 % Wilson intervals and "p", a one-sided
binomial test against alpha (as in the detection benchmark's target). A test rate above the control's says that the
test half differs from the training half, not that the null is wrong.

Run: `python -m benchmarks.false_alarms [--dataset fashion-mnist] [--windows 200] [--sizes 20,200]`. Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np
import torch
from scipy.stats import binomtest

from scanflow.data import hold_out_calibration, load_train_test
from scanflow.drift.autoencoder import fit_detector
from scanflow.train import TrainConfig, train_autoencoder, train_classifier

#: Unseen training images kept apart as the control (the same count as the calibration set).
CONTROL_SIZE = 2000


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial rate k / n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist", help="a dataset with separate train and test files")
    parser.add_argument("--data-dir", help="directory holding the dataset files")
    parser.add_argument("--windows", type=int, default=200, help="clean windows per batch size and source")
    parser.add_argument("--sizes", default="20,200", help="comma-separated batch sizes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]

    train, test = load_train_test(args.dataset, data_dir=args.data_dir, seed=args.seed)
    fit_all, calibration = hold_out_calibration(train, seed=args.seed)
    fit, control = hold_out_calibration(fit_all, seed=args.seed + 1, size=CONTROL_SIZE)
    start = time.perf_counter()
    classifier, _ = train_classifier(fit, TrainConfig(seed=args.seed), progress=False)
    autoencoder, _ = train_autoencoder(fit, TrainConfig(seed=args.seed).for_autoencoder(len(fit)), latent_dim=32, progress=False)
    detector = fit_detector(classifier, autoencoder, fit, calibration, seed=args.seed)
    trained_s = time.perf_counter() - start

    rows = []
    rng = np.random.default_rng(args.seed)
    for n in sizes:
        for source, images in (("test", test.images), ("unseen training images (control)", control.images)):
            alarms = sum(detector.predict(images[torch.as_tensor(rng.choice(len(images), n, replace=False))]).is_drift
                         for _ in range(args.windows))
            rows.append((n, source, alarms, wilson(alarms, args.windows)))
            print(f"n={n} {source}: {alarms} of {args.windows}", flush=True)

    accuracy = float((classifier.predict(test.images) == test.labels).float().mean())
    print(f"\nFalse alarms as deployed, {platform.machine()} with {os.cpu_count()} cores; {args.dataset}: models trained on "
          f"{len(fit):,} training images at the train flow's default epochs ({trained_s:.0f} s, test accuracy {accuracy:.3f}), "
          f"detector calibrated on {len(calibration):,} held-out training images (as the train flow does), control "
          f"{len(control):,} further unseen training images; alpha {detector.alpha}; {args.windows} random clean windows "
          f"per row; seed {args.seed}\n")
    print("| batch size | clean windows from | alarms | rate | 95 % interval | p |\n|---:|---|---:|---:|---|---:|")
    for n, source, alarms, (low, high) in rows:
        p = binomtest(alarms, args.windows, detector.alpha, alternative="greater").pvalue
        print(f"| {n} | {source} | {alarms} of {args.windows} | {alarms / args.windows:.3f} | {low:.3f}-{high:.3f} | {p:.2g} |")


if __name__ == "__main__":
    main()

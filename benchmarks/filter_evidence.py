"""Label-free evidence for a filter against its true effect: per corruption, the champion's drift statistic on the
raw and on the filtered batch, the share of the raw excess over the threshold the filter removes, and the
classifier's accuracy on both (true labels, used only to check the evidence).

Run: `python -m benchmarks.filter_evidence [--dataset fashion-mnist|digits] [--severities 2,4] [--batch 200]`
(about 5 minutes on Fashion-MNIST, 2 on digits). Prints a Markdown table with the promotion rule's verdict per row.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from scanflow.corruptions import CORRUPTIONS, corrupt
from scanflow.data import hold_out_calibration, load_train_test
from scanflow.drift.autoencoder import fit_detector
from scanflow.improve.filter import DEFAULT_GATE_QUANTILE, DenoiserConfig, FilteredClassifier, calibrate_gate, score_gate, train_denoiser
from scanflow.improve.promotion import DRIFT_REDUCTION, DriftEvidence
from scanflow.train import TrainConfig, train_autoencoder, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--severities", default="2,4")
    parser.add_argument("--batch", type=int, default=200, help="images per corrupted batch")
    args = parser.parse_args()
    epochs, ae_epochs, latent = (15, 10, 8) if args.dataset == "digits" else (2, 4, 32)
    train, test = load_train_test(args.dataset, seed=0)
    replay, calibration = hold_out_calibration(train, seed=0)
    classifier, _ = train_classifier(replay, TrainConfig(epochs=epochs), progress=False)
    autoencoder, _ = train_autoencoder(replay, TrainConfig(epochs=ae_epochs), latent_dim=latent, progress=False)
    detector = fit_detector(classifier, autoencoder, replay, calibration)
    denoiser = train_denoiser(classifier, replay, DenoiserConfig()).denoiser
    # Gated as `FilterImprover` gates it: by the size of the correction and by the detector's score.
    gate = calibrate_gate(denoiser, calibration.images, DEFAULT_GATE_QUANTILE)
    filtered = FilteredClassifier(classifier, denoiser, gate_threshold=gate, **score_gate(detector))
    print(f"{args.dataset}: classifier {epochs} epochs, autoencoder {ae_epochs} (latent {latent}), default denoiser gated as FilterImprover gates it; "
          f"batches of {min(args.batch, len(test))} test images; the rule promotes when the filter removes at least "
          f"{DRIFT_REDUCTION:.0%} of the raw excess\n")
    print("| corruption | severity | statistic raw | filtered | threshold | excess removed | rule | accuracy raw | filtered | gain |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(1)
    for name in CORRUPTIONS:
        for severity in (int(s) for s in args.severities.split(",")):
            rows = torch.from_numpy(np.sort(rng.permutation(len(test))[: args.batch]))
            images, labels = corrupt(test.images[rows], name, severity, seed=severity), test.labels[rows]
            raw, clean = detector.predict(images), detector.predict(filtered.clean(images))
            evidence = DriftEvidence(raw.statistic, clean.statistic, raw.threshold)
            removed = (raw.statistic - clean.statistic) / max(raw.statistic - raw.threshold, 1e-9)
            before = float((classifier.predict(images) == labels).float().mean())
            after = float((filtered.predict(images) == labels).float().mean())
            print(f"| {name} | {severity} | {raw.statistic:.2f} | {clean.statistic:.2f} | {raw.threshold:.2f} | {removed:.2f} | "
                  f"{'promote' if evidence.removes_shift else 'reject'} | {before:.3f} | {after:.3f} | {after - before:+.3f} |", flush=True)


if __name__ == "__main__":
    main()

"""What an improvement's training costs, and whether the plan's estimate says so.

The improve flow prints a plan before it trains ("training about N s on 2 idle cores"); the estimate comes from
per-step costs in `scanflow.improve.retrain.FINE_TUNE_STEP_SECONDS` and `scanflow.improve.filter`'s
`DENOISER_STEP_SECONDS` / `DENOISER_PREPARATION_SECONDS_PER_1000`, measured here at the two image sizes Scanflow
ships data for (28x28: Fashion-MNIST; 8x8: scikit-learn's digits). Per size:

  1. the default configurations timed whole (fine-tune: 300 steps of batch 128 in two rounds; denoiser: 500 steps
     of batch 64 on up to 12,000 images), beside the estimate the plan gives for them, and their ratio;
  2. per step: the fine-tune's time over its 600 steps, and the denoiser's time less its preparation over its 500;
  3. the denoiser's preparation (corrupting its training images, the classifier on the originals) per 1,000 images.

Steps are taken from whole default runs, not from the difference of two short runs: short runs here varied too much
(0.10 s per fine-tuning step from 20 vs 80 steps, 0.075 s over the 600 of a whole run).

The classifier is untrained: a step costs the same whatever the weights. Run on an idle machine:
`python -m benchmarks.improve_cost` (about 2 minutes on 2 cores). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from dataclasses import replace

import torch

from benchmarks.detection import markdown_table
from scanflow.data import LabeledImages, load_dataset
from scanflow.improve.filter import DenoiserConfig, expected_denoiser_seconds, train_denoiser
from scanflow.improve.retrain import RetrainConfig, expected_fine_tune_seconds, fine_tune
from scanflow.models import Classifier


def _classifier(data: LabeledImages) -> Classifier:
    info = data.info
    torch.manual_seed(0)
    return Classifier(info.channels, info.height, info.width, info.n_classes)


def measure(name: str) -> dict[str, float]:
    data = load_dataset(name, "train")
    info = data.info
    classifier = _classifier(data)
    fine_tune_config, denoiser_config = RetrainConfig(), DenoiserConfig()
    labelled = data.subset(torch.arange(100))
    fine_tune(classifier, labelled, data, replace(fine_tune_config, steps=5))
    # The improve flow's retrain pseudo-labels part of the batch in a second round; an untrained classifier is never
    # confident, so the threshold is lowered to make that round happen (it costs the same).
    fine_tune_whole = fine_tune(classifier, labelled, data, replace(fine_tune_config, pseudo_label_confidence=1e-6),
                                unlabelled=data.images[-100:]).seconds
    images = min(denoiser_config.training_images, len(data))
    denoiser = train_denoiser(classifier, data, denoiser_config)
    denoiser_whole, preparation = denoiser.seconds, denoiser.preparation_seconds
    return {
        "area": info.height * info.width,
        "fine_tune_step": fine_tune_whole / (2 * fine_tune_config.steps),
        "denoiser_step": (denoiser_whole - preparation) / denoiser_config.steps,
        "preparation_per_1000": preparation / images * 1000,
        "fine_tune_whole": fine_tune_whole,
        "fine_tune_estimate": expected_fine_tune_seconds(fine_tune_config, info.height, info.width, rounds=2),
        "denoiser_whole": denoiser_whole,
        "denoiser_estimate": expected_denoiser_seconds(denoiser_config, len(data), info.height, info.width),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist", "digits"])
    args = parser.parse_args()
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    results = {name: measure(name) for name in args.datasets}
    print(f"### Improvement training cost ({started}, {platform.machine()}, {os.cpu_count()} cpu, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)\n")
    print("\n".join(markdown_table(
        ["dataset", "image area (px)", "fine-tune s/step (batch 128)", "denoiser s/step (batch 64)",
         "denoiser preparation s / 1,000 images", "fine-tune default: measured s", "plan's estimate s", "ratio",
         "denoiser default: measured s", "plan's estimate s", "ratio"],
        [[name, int(r["area"]), f"{r['fine_tune_step']:.4f}", f"{r['denoiser_step']:.4f}", f"{r['preparation_per_1000']:.2f}",
          f"{r['fine_tune_whole']:.1f}", f"{r['fine_tune_estimate']:.1f}", f"{r['fine_tune_whole'] / r['fine_tune_estimate']:.2f}",
          f"{r['denoiser_whole']:.1f}", f"{r['denoiser_estimate']:.1f}", f"{r['denoiser_whole'] / r['denoiser_estimate']:.2f}"]
         for name, r in results.items()],
    )))
    print(f"\nDefaults: fine-tune {RetrainConfig().steps} steps x 2 rounds (the second with 100 pseudo-label candidates), "
          f"denoiser {DenoiserConfig().steps} steps on up to {DenoiserConfig().training_images:,} images.")


if __name__ == "__main__":
    main()

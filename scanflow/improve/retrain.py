"""Retraining on human-labelled critical samples without forgetting the clean data.

The champion is fine-tuned, not retrained from scratch: every optimisation step mixes the labelled shifted samples
(oversampled, with small random translations), replayed clean training images (so clean accuracy does not drift
away) and, when unlabelled production images are given, their confident pseudo-labels from the first fine-tuned
model (self-training: the labelled samples teach the shift, the stream then supplies volume). The published system
instead retrained on the champion's own predictions of the stream, which teaches the model its own mistakes.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from scanflow.adopt import ForeignClassifier, ForeignModule
from scanflow.config import RETRAIN_STEPS
from scanflow.data import LabeledImages
from scanflow.drift.base import Detector
from scanflow.errors import ScanflowError
from scanflow.improve.base import ImprovementContext, Improver, refit_detector, seconds_at_area, split_positions
from scanflow.models import Classifier, to_float
from scanflow.train import _random_shift


@dataclass(frozen=True)
class RetrainConfig:
    """How a champion is fine-tuned. Shares are fractions of each optimisation batch (the rest is clean replay)."""

    steps: int = RETRAIN_STEPS
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    labelled_share: float = 0.25
    pseudo_share: float = 0.25
    pseudo_label_confidence: float = 0.9
    max_shift_px: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"steps must be >= 1 and batch_size >= 2, got {self.steps} and {self.batch_size}")
        if not (0 < self.labelled_share < 1 and 0 <= self.pseudo_share < 1 and self.labelled_share + self.pseudo_share < 1):
            raise ValueError(
                "labelled_share in (0, 1), pseudo_share in [0, 1) and their sum below 1 leave room for clean replay; "
                f"got {self.labelled_share} and {self.pseudo_share}"
            )
        if not 0 < self.pseudo_label_confidence <= 1:
            raise ValueError(f"pseudo_label_confidence must be in (0, 1], got {self.pseudo_label_confidence}")

    def as_params(self) -> dict[str, object]:
        return {f"retrain_{key}": value for key, value in asdict(self).items()}


@dataclass(frozen=True)
class RetrainResult:
    """The fine-tuned classifier, how many stream images it learned from by pseudo-label, and the time taken (s)."""

    classifier: Classifier | ForeignModule
    n_labelled: int
    n_pseudo_labelled: int
    seconds: float


def _check_compatible(classifier: Classifier | ForeignModule, *sets: LabeledImages) -> None:
    spec = classifier.spec
    for data in sets:
        shape = tuple(data.images.shape[1:])
        if shape != (spec.channels, spec.height, spec.width):
            raise ScanflowError(
                f"{data.split}: images of shape {list(shape)} cannot train a classifier built for "
                f"{[spec.channels, spec.height, spec.width]}"
            )
        if len(data) and (int(data.labels.min()) < 0 or int(data.labels.max()) >= spec.n_classes):
            raise ScanflowError(
                f"{data.split}: labels must be class indices 0..{spec.n_classes - 1}, found "
                f"{int(data.labels.min())}..{int(data.labels.max())}"
            )


def _fine_tune_steps(
    classifier: Classifier | ForeignModule,
    sources: list[tuple[torch.Tensor, torch.Tensor, int, bool]],
    config: RetrainConfig,
    generator: torch.Generator,
) -> None:
    """Optimise `classifier` in place; each batch takes `count` rows (with replacement) from every source
    (images uint8, labels, count, augment)."""
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=config.steps, pct_start=0.15)
    classifier.train()
    for _ in range(config.steps):
        xs, ys = [], []
        for images, labels, count, augment in sources:
            rows = torch.randint(0, len(labels), (count,), generator=generator)
            x = to_float(images[rows])
            xs.append(_random_shift(x, config.max_shift_px, generator) if augment else x)
            ys.append(labels[rows])
        loss = F.cross_entropy(classifier(torch.cat(xs)), torch.cat(ys))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    classifier.eval()


def fine_tune(
    classifier: Classifier | ForeignModule,
    labelled: LabeledImages,
    replay: LabeledImages,
    config: RetrainConfig = RetrainConfig(),
    unlabelled: torch.Tensor | None = None,
) -> RetrainResult:
    """A fine-tuned copy of `classifier` (the original is untouched): a Scanflow `Classifier`, or an adopted pytorch
    model as a `ForeignModule`.

    `labelled`: shifted images with human labels; `replay`: clean training images; `unlabelled`: uint8 production
    images without labels (optional), used through confident pseudo-labels in a second round.
    """
    if len(labelled) == 0:
        raise ScanflowError("retraining needs at least one labelled sample: label the critical samples first")
    if len(replay) == 0:
        raise ScanflowError("retraining needs clean replay images so the model does not forget the clean data")
    _check_compatible(classifier, labelled, replay)
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    n_labelled = max(1, round(config.batch_size * config.labelled_share))
    model = copy.deepcopy(classifier)
    replay_source = (replay.images, replay.labels, config.batch_size - n_labelled, False)
    labelled_source = (labelled.images, labelled.labels, n_labelled, True)
    _fine_tune_steps(model, [labelled_source, replay_source], config, generator)
    n_pseudo = 0
    if unlabelled is not None and len(unlabelled) and config.pseudo_share > 0:
        probabilities = model.predict_proba(unlabelled)
        confidence, guesses = probabilities.max(dim=1)
        keep = confidence >= config.pseudo_label_confidence
        n_pseudo = int(keep.sum())
        if n_pseudo:
            n_pseudo_rows = max(1, round(config.batch_size * config.pseudo_share))
            pseudo_source = (unlabelled[keep], guesses[keep], n_pseudo_rows, True)
            replay_source = (replay.images, replay.labels, config.batch_size - n_labelled - n_pseudo_rows, False)
            _fine_tune_steps(model, [labelled_source, pseudo_source, replay_source], config, generator)
    return RetrainResult(model, len(labelled), n_pseudo, time.perf_counter() - started)


#: Share of the batch rows nobody was shown that the retrain leaves alone (no pseudo-label, no detector reference):
#: the retrained champion sees them, with the labelled rows held out to judge it, as it will see a fresh batch of
#: the same shift, so they can make the batch a known shift of the new champion.
UNSEEN_SHARE = 0.5
#: Seconds per fine-tuning step of batch 128 on 2 idle cores, by image area (8x8 and 28x28 pixels), measured with
#: `python -m benchmarks.improve_cost` (benchmarks/README.md); other sizes by `seconds_at_area`.
FINE_TUNE_STEP_SECONDS = {64: 0.013, 784: 0.082}


def expected_fine_tune_seconds(config: RetrainConfig, height: int, width: int, rounds: int = 1) -> float:
    """Seconds `fine_tune` should take on 2 idle cores (a busy machine takes longer): `rounds` x `config.steps`
    steps, the second round being the one with pseudo-labels."""
    return rounds * config.steps * seconds_at_area(FINE_TUNE_STEP_SECONDS, height * width) * config.batch_size / 128


class RetrainImprover(Improver):
    """Fine-tune the champion on the person's labels, clean replay and confident pseudo-labels of part of the
    batch; refit the drift detector for the new classifier on clean replay. The rest of the batch (`UNSEEN_SHARE` of
    the rows nobody was shown, and the labelled rows that judge the candidate) stays unseen, so a promoted retrain
    can remember the shift as known."""

    action = "retrain"
    needs_labels = True

    def __init__(self, config: RetrainConfig = RetrainConfig(), use_unlabelled: bool = True) -> None:
        self.config = config
        self.use_unlabelled = use_unlabelled

    def _positions(self, context: ImprovementContext) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return split_positions(context.labelled_positions or (), context.holdout_fraction, context.seed)

    def _holdout_share(self, context: ImprovementContext) -> float:
        return context.holdout_fraction

    def _unseen_rows(self, context: ImprovementContext) -> tuple[int, ...]:
        """`UNSEEN_SHARE` of the rows nobody was shown, and the labelled rows held out to judge the candidate: no
        pseudo-label of a judging row enters training (the candidate would be judged on images it learned its own
        guesses for), and with them the record of the shift is not only the batch's least typical rows."""
        unshown = np.setdiff1d(np.arange(len(context.batch)), np.asarray(context.shown_indices, dtype=np.int64))
        chosen = np.random.default_rng(context.seed).permutation(unshown)[: int(len(unshown) * UNSEEN_SHARE)]
        judging = (context.shown_indices[position] for position in self._positions(context)[1])
        return tuple(sorted({int(row) for row in chosen} | {int(row) for row in judging}))

    def _describe(self, context: ImprovementContext, n_training_labels: int) -> tuple[str, float, dict[str, Any]]:
        rounds = 2 if self.use_unlabelled else 1
        info = context.replay.info
        seconds = expected_fine_tune_seconds(self.config, info.height, info.width, rounds)
        description = (
            f"fine-tune classifier v{context.champion_version or '?'} for {rounds} x {self.config.steps} steps on "
            f"{n_training_labels} labelled samples of batch {context.batch_id or '?'}, clean replay from "
            f"{len(context.replay):,} training images"
            + (f" and confident pseudo-labels of {len(context.batch) - len(self._unseen_rows(context))} of the batch's "
               f"{len(context.batch)} images" if self.use_unlabelled else "")
            + "; refit the drift detector for it on clean images"
        )
        return description, seconds, {**self.config.as_params(), "retrain_use_unlabelled": self.use_unlabelled}

    def _build(self, context: ImprovementContext, labelled: LabeledImages | None) -> tuple[Any, Detector, int, str]:
        learned_rows = np.setdiff1d(np.arange(len(context.batch)), np.asarray(self._unseen_rows(context), dtype=np.int64))
        adopted = isinstance(context.classifier, ForeignClassifier)
        result = fine_tune(
            ForeignModule(context.classifier) if adopted else context.classifier, labelled, context.replay, self.config,
            unlabelled=context.batch[torch.from_numpy(learned_rows)] if self.use_unlabelled else None,
        )
        candidate = result.classifier.as_classifier(context.classifier.embedder) if adopted else result.classifier
        detector = refit_detector(candidate, context)
        summary = (
            f"fine-tuned on {result.n_labelled} labelled and {result.n_pseudo_labelled} pseudo-labelled samples "
            f"in {result.seconds:.0f} s"
        )
        return candidate, detector, result.n_pseudo_labelled, summary

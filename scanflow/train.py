"""Seeded CPU training loops for the classifier and the autoencoder.

Progress bars show on a terminal only (tqdm's `disable=None`); per-epoch metrics go to the caller's callback.

Images stay uint8 in memory and are converted per mini-batch, so a 60k-image training set costs 47 MB, not 188.
Training is deterministic for a given seed and thread count (torch's CPU kernels may reorder float sums across
thread counts).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from scanflow.data import LabeledImages
from scanflow.models import Autoencoder, Classifier, ImageSpec, to_float

#: Images seen per training run when no epoch count is given: enough for a small CNN to converge on
#: Fashion-MNIST (3 epochs of 60k) and on small sets (30 epochs of MNIST's 5k held-out train part).
DEFAULT_IMAGES_PER_RUN = 150_000
MAX_DEFAULT_EPOCHS = 40
#: The autoencoder's default epochs are this many times the classifier's. At width 16 (`AUTOENCODER_WIDTH`) its
#: epochs cost a third of the classifier's, and the longer training buys back what the narrower network loses
#: (quick detection benchmark, Fashion-MNIST, same code and windows: width 32 x 3 epochs / 16 x 3 / 16 x 6 detect
#: 0.808 / 0.783 / 0.821 of n = 200 windows 10 % corrupted at severity 3, sample AUROC 0.911 / 0.907 / 0.916).
AUTOENCODER_EPOCH_FACTOR = 2


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run. `epochs=None` picks `default_epochs(len(train_set))` (the autoencoder:
    `for_autoencoder`)."""

    epochs: int | None = None
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    max_shift_px: int | None = None
    threads: int | None = None

    def resolved_epochs(self, n_train: int) -> int:
        return self.epochs if self.epochs is not None else default_epochs(n_train)

    def for_autoencoder(self, n_train: int) -> "TrainConfig":
        """This configuration with the autoencoder's epochs resolved: as given, else `AUTOENCODER_EPOCH_FACTOR` x
        the classifier's default for `n_train` images."""
        if self.epochs is not None:
            return self
        return replace(self, epochs=AUTOENCODER_EPOCH_FACTOR * default_epochs(n_train))

    def resolved_shift(self, n_train: int) -> int:
        """Random-translation augmentation (pixels): on for small sets, where it is worth ~1 point of accuracy."""
        if self.max_shift_px is not None:
            return self.max_shift_px
        return 2 if n_train < 20_000 else 0

    def as_params(self, n_train: int) -> dict[str, object]:
        """Flat, fully resolved parameters for tracking."""
        params = asdict(self)
        params["epochs"] = self.resolved_epochs(n_train)
        params["max_shift_px"] = self.resolved_shift(n_train)
        params["threads"] = self.threads or torch.get_num_threads()
        return params


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch did: mean training loss, training accuracy (classifier only), optional validation accuracy."""

    epoch: int
    loss: float
    seconds: float
    train_accuracy: float | None = None
    val_accuracy: float | None = None

    def as_metrics(self, prefix: str) -> dict[str, float]:
        values = {"loss": self.loss, "epoch_seconds": self.seconds}
        if self.train_accuracy is not None:
            values["train_accuracy"] = self.train_accuracy
        if self.val_accuracy is not None:
            values["val_accuracy"] = self.val_accuracy
        return {f"{prefix}_{key}": value for key, value in values.items()}


EpochCallback = Callable[[EpochMetrics], None]


def default_epochs(n_train: int) -> int:
    """Epochs so that a run sees about DEFAULT_IMAGES_PER_RUN images, at least 3 and at most MAX_DEFAULT_EPOCHS."""
    return max(3, min(MAX_DEFAULT_EPOCHS, math.ceil(DEFAULT_IMAGES_PER_RUN / max(n_train, 1))))


def _setup(config: TrainConfig) -> torch.Generator:
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    return generator


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels in each direction, filling with zeros."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * max_shift)
    shifted = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return shifted.gather(3, cols)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=generator).split(batch_size))


def _check_trainable(data: LabeledImages, config: TrainConfig) -> None:
    if len(data) == 0:
        raise ValueError(f"cannot train on an empty dataset ({data.info.name} {data.split})")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")


def train_classifier(
    data: LabeledImages,
    config: TrainConfig = TrainConfig(),
    validation: LabeledImages | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
) -> tuple[Classifier, list[EpochMetrics]]:
    """Train a fresh `Classifier` on `data` with Adam, cosine learning-rate decay and cross-entropy loss."""
    _check_trainable(data, config)
    generator = _setup(config)
    model = Classifier(**vars(ImageSpec.from_info(data.info)))
    model.set_normalization(data.images)
    epochs = config.resolved_epochs(len(data))
    shift = config.resolved_shift(len(data))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps = epochs * math.ceil(len(data) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=steps)
    history = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        total_loss, correct = 0.0, 0
        batches = _batches(len(data), config.batch_size, generator)
        for index in tqdm(batches, desc=f"classifier epoch {epoch}/{epochs}", disable=None if progress else True, leave=False):
            x = _random_shift(to_float(data.images[index]), shift, generator)
            y = data.labels[index]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(index)
            correct += int((logits.argmax(dim=1) == y).sum())
        val_accuracy = None
        if validation is not None:
            val_accuracy = float((model.predict(validation.images) == validation.labels).float().mean())
        metrics = EpochMetrics(
            epoch=epoch,
            loss=total_loss / len(data),
            seconds=time.perf_counter() - started,
            train_accuracy=correct / len(data),
            val_accuracy=val_accuracy,
        )
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    model.eval()
    return model, history


def train_autoencoder(
    data: LabeledImages,
    config: TrainConfig = TrainConfig(),
    latent_dim: int = 32,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
) -> tuple[Autoencoder, list[EpochMetrics]]:
    """Train a fresh `Autoencoder` on `data` to reconstruct its images (mean squared error on [0, 1] pixels);
    `config.epochs=None` trains for `config.for_autoencoder(len(data)).epochs`."""
    config = config.for_autoencoder(len(data))
    _check_trainable(data, config)
    generator = _setup(config)
    info = data.info
    model = Autoencoder(info.channels, info.height, info.width, latent_dim=latent_dim)
    epochs = config.resolved_epochs(len(data))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = nn.MSELoss()
    history = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        total_loss = 0.0
        batches = _batches(len(data), config.batch_size, generator)
        for index in tqdm(batches, desc=f"autoencoder epoch {epoch}/{epochs}", disable=None if progress else True, leave=False):
            x = to_float(data.images[index])
            loss = loss_fn(model(x), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(index)
        metrics = EpochMetrics(epoch=epoch, loss=total_loss / len(data), seconds=time.perf_counter() - started)
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    model.eval()
    return model, history

"""The filter: a denoiser in front of the unchanged classifier, optionally rejecting what it cannot clean.

The denoiser learns, without any labels from production, to map corrupted images back to their clean originals:
clean training images are corrupted synthetically (random corruption and severity from a training set of
corruptions, plus a share left clean so clean inputs pass through unchanged) and the network is trained to undo
it. Its loss has two parts: pixel error against the clean image, and agreement of the frozen classifier's output
on the cleaned image with its output on the clean original, so the cleaning keeps what the classifier needs.
For honest evaluation, `exclude` leaves corruptions (e.g. the whole family under test) out of training.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from scanflow.adopt import ForeignClassifier, ForeignModule
from scanflow.corruptions import CORRUPTIONS, FAMILIES, corrupt
from scanflow.config import DENOISER_STEPS
from scanflow.data import LabeledImages, validate_batch
from scanflow.drift.base import Detector
from scanflow.errors import ScanflowError, UnknownCorruptionError
from scanflow.improve.base import ImprovementContext, Improver, refit_detector, seconds_at_area
from scanflow.improve.promotion import DriftEvidence
from scanflow.models import REJECTED_LABEL, Classifier, Denoiser, to_float


@dataclass(frozen=True)
class DenoiserConfig:
    """How the denoiser is trained. `exclude` names corruptions or families it must never see."""

    exclude: tuple[str, ...] = ()
    training_images: int = 12_000
    clean_share: float = 0.25
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    steps: int = DENOISER_STEPS
    batch_size: int = 64
    learning_rate: float = 2e-3
    consistency_weight: float = 0.1
    width_multiplier: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in self.exclude:
            if name not in CORRUPTIONS and name not in FAMILIES:
                raise UnknownCorruptionError(
                    f"cannot exclude {name!r}: not a corruption ({', '.join(CORRUPTIONS)}) nor a family ({', '.join(FAMILIES)})"
                )
        if not 0 <= self.clean_share < 1:
            raise ValueError(f"clean_share must be in [0, 1), got {self.clean_share}")

    @property
    def training_corruptions(self) -> tuple[str, ...]:
        excluded = {c for name in self.exclude for c in FAMILIES.get(name, (name,))}
        return tuple(name for name in CORRUPTIONS if name not in excluded)

    def as_params(self) -> dict[str, object]:
        params = {f"denoiser_{k}": v for k, v in asdict(self).items() if k not in ("exclude", "severities")}
        params["denoiser_exclude"] = ",".join(self.exclude) or "none"
        params["denoiser_severities"] = ",".join(map(str, self.severities))
        return params


@dataclass(frozen=True)
class DenoiserResult:
    """`seconds`: the whole training's wall time; `preparation_seconds`: the part before the first step (corrupting
    the training images, the classifier on the clean originals)."""

    denoiser: Denoiser
    training_corruptions: tuple[str, ...]
    seconds: float
    preparation_seconds: float


def corrupted_pairs(clean: torch.Tensor, config: DenoiserConfig) -> torch.Tensor:
    """A corrupted copy of each clean image (uint8 [N, C, H, W]); a seeded `clean_share` of them stays clean."""
    names = config.training_corruptions
    if not names:
        raise ScanflowError("every corruption is excluded: the denoiser has nothing to learn from")
    rng = np.random.default_rng(config.seed)
    choice = rng.integers(0, len(names), len(clean))
    severity = rng.choice(np.asarray(config.severities), len(clean))
    keep_clean = rng.random(len(clean)) < config.clean_share
    corrupted = clean.clone()
    for k, name in enumerate(names):
        for level in config.severities:
            rows = np.flatnonzero((choice == k) & (severity == level) & ~keep_clean)
            if len(rows):
                index = torch.from_numpy(rows)
                corrupted[index] = corrupt(clean[index], name, int(level), seed=config.seed + 7919 * k + level)
    return corrupted


def train_denoiser(classifier: nn.Module | None, data: LabeledImages, config: DenoiserConfig = DenoiserConfig()) -> DenoiserResult:
    """Train a `Denoiser` for `classifier` on (a seeded subset of) its clean training images `data`.

    `classifier`: a module from float images in [0, 1] to logits with `predict_proba(uint8 images)` (a `Classifier`
    or `scanflow.adopt.ForeignModule`), frozen during training and used for the consistency loss; None for a model
    without gradients (an adopted pyfunc): the denoiser then learns from pixel error alone."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    rows = torch.randperm(len(data), generator=generator)[: config.training_images]
    clean = data.images[rows]
    corrupted = corrupted_pairs(clean, config)
    if classifier is None:
        config = replace(config, consistency_weight=0.0)
        classifier = nn.Identity()
    classifier = classifier.eval()
    for parameter in classifier.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():
        targets = classifier.predict_proba(clean) if config.consistency_weight > 0 else None
    prepared = time.perf_counter()
    info = data.info
    denoiser = Denoiser(info.channels, info.height, info.width, width_multiplier=config.width_multiplier)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=config.learning_rate, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=config.steps)
    denoiser.train()
    try:
        for _ in range(config.steps):
            batch = torch.randint(0, len(clean), (config.batch_size,), generator=generator)
            cleaned = denoiser(to_float(corrupted[batch]))
            loss = F.mse_loss(cleaned, to_float(clean[batch]))
            if config.consistency_weight > 0:
                log_probabilities = F.log_softmax(classifier(cleaned), dim=1)
                loss = loss + config.consistency_weight * F.kl_div(log_probabilities, targets[batch], reduction="batchmean")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    finally:
        for parameter in classifier.parameters():
            parameter.requires_grad_(True)
    denoiser.eval()
    return DenoiserResult(denoiser, config.training_corruptions, time.perf_counter() - started, prepared - started)


#: Denoisers trained in this process for a filter, by `denoiser_key`, newest last; at most `DENOISERS_KEPT`.
_TRAINED: OrderedDict[str, DenoiserResult] = OrderedDict()
_TRAINED_LOCK = threading.Lock()  # a task runner's threads may build filters at once
DENOISERS_KEPT = 4


def denoiser_key(guide: nn.Module | None, data: LabeledImages, config: DenoiserConfig) -> str | None:
    """What a trained denoiser depends on, as a hex digest: the guide's architecture and weights, the clean training
    images and the (seeded) config; None for a guide that is not a Scanflow `Classifier` (an adopted model's
    preprocessing lives outside its weights, so its denoiser is never reused)."""
    if not isinstance(guide, Classifier):
        return None
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((config, guide.spec, tuple(data.images.shape))).encode())
    digest.update(data.images.contiguous().numpy().tobytes())
    for name, tensor in sorted(guide.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def reusable_denoiser(guide: nn.Module | None, data: LabeledImages, config: DenoiserConfig) -> tuple[DenoiserResult, bool]:
    """`train_denoiser`, or a copy of the denoiser this process already trained from the same guide, images and
    config (training is seeded, so it is the one training again would give); the flag says whether it was reused.
    A second filter for the same champion (a later drift, a filter asked for again) then costs no training."""
    key = denoiser_key(guide, data, config)
    with _TRAINED_LOCK:
        kept = _TRAINED.get(key) if key is not None else None
        if kept is not None:
            _TRAINED.move_to_end(key)
            return replace(kept, denoiser=copy.deepcopy(kept.denoiser)), True
    result = train_denoiser(guide, data, config)  # outside the lock: two threads may train, one copy is kept
    if key is not None:
        with _TRAINED_LOCK:
            _TRAINED[key] = replace(result, denoiser=copy.deepcopy(result.denoiser))
            while len(_TRAINED) > DENOISERS_KEPT:
                _TRAINED.popitem(last=False)
    return result, False


def correction_size(original: torch.Tensor, cleaned: torch.Tensor) -> torch.Tensor:
    """Mean absolute change per image, float [N], on the [0, 1] pixel scale."""
    return (to_float(cleaned) - to_float(original)).abs().flatten(1).mean(dim=1)


@dataclass
class FilteredClassifier:
    """The unchanged classifier behind a denoiser.

    The gate passes an image through untouched, so clean inputs keep exactly the champion's answers, when the
    denoiser would change it by at most `gate_threshold` (mean absolute correction, [0, 1] pixel scale; a high
    quantile of the corrections on clean images) and, with a `gate_scorer` (the champion's fitted detector, on raw
    images), its drift score is at most `gate_score_threshold` (the detector's sample threshold). The score matters
    for blur: deblurring changes an image about as little as cleaning a clean one does, so the size alone passes
    blurred images on unchanged. With `reject_threshold`, images whose drift score (by `scorer`, on what the
    classifier sees) stays above it are answered with REJECTED_LABEL instead of a guess.
    """

    classifier: Classifier
    denoiser: Denoiser
    scorer: object | None = field(default=None, repr=False)
    reject_threshold: float | None = None
    gate_threshold: float | None = None
    gate_scorer: object | None = field(default=None, repr=False)
    gate_score_threshold: float | None = None

    def __post_init__(self) -> None:
        if (self.scorer is None) != (self.reject_threshold is None):
            raise ValueError("rejection needs both a scorer (a fitted detector) and a reject_threshold, or neither")
        if (self.gate_scorer is None) != (self.gate_score_threshold is None):
            raise ValueError("a score gate needs both a gate_scorer (a fitted detector) and a gate_score_threshold, or neither")

    def clean(self, images: torch.Tensor) -> torch.Tensor:
        """What the classifier sees: the cleaned uint8 batch (gated images unchanged)."""
        images = validate_batch(images)
        cleaned = self.denoiser.clean(images)
        if self.gate_threshold is None and self.gate_scorer is None:
            return cleaned  # no gate: every image is cleaned
        keep = torch.ones(len(images), dtype=torch.bool)
        if self.gate_threshold is not None:
            keep &= correction_size(images, cleaned) <= self.gate_threshold
        if self.gate_scorer is not None:
            keep &= torch.from_numpy(np.asarray(self.gate_scorer.score(images)) <= self.gate_score_threshold)
        cleaned[keep] = images[keep]
        return cleaned

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.predict_proba(self.clean(images))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """int64 labels [N]; REJECTED_LABEL (-1) where rejection is on and the cleaned image still looks drifted."""
        cleaned = self.clean(images)
        labels = self.classifier.predict(cleaned)
        if self.scorer is not None:
            scores = torch.from_numpy(np.asarray(self.scorer.score(cleaned)))
            labels = torch.where(scores > self.reject_threshold, torch.full_like(labels, REJECTED_LABEL), labels)
        return labels


def calibrate_gate(denoiser: Denoiser, clean_images: torch.Tensor, quantile: float) -> float:
    """The correction size that `quantile` of clean images stay below: the gate of a `FilteredClassifier`."""
    if not 0 < quantile < 1:
        raise ValueError(f"gate quantile must be in (0, 1), got {quantile}")
    return float(torch.quantile(correction_size(clean_images, denoiser.clean(clean_images)), quantile))


def score_gate(detector: Detector | None) -> dict[str, Any]:
    """`FilteredClassifier` arguments for a score gate by `detector` (fitted on raw images) at its sample threshold;
    none without a detector."""
    if detector is None:
        return {}
    return {"gate_scorer": detector, "gate_score_threshold": float(detector.sample_threshold)}


#: Share of clean images the filter's gate passes through untouched (the rest are cleaned, usually harmlessly).
DEFAULT_GATE_QUANTILE = 0.9
#: On 2 idle cores, by image area (8x8 and 28x28 pixels): seconds per denoiser training step of batch 64, and
#: seconds to prepare 1,000 training images (corrupt them, run the classifier on the clean originals); measured with
#: `python -m benchmarks.improve_cost` (benchmarks/README.md); other sizes by `seconds_at_area`.
DENOISER_STEP_SECONDS = {64: 0.020, 784: 0.10}
DENOISER_PREPARATION_SECONDS_PER_1000 = {64: 0.06, 784: 0.20}


def expected_denoiser_seconds(config: DenoiserConfig, available_images: int, height: int, width: int) -> float:
    """Seconds `train_denoiser` should take on 2 idle cores (a busy machine takes longer) with `available_images`
    clean training images to draw from."""
    area = height * width
    preparation = min(config.training_images, available_images) / 1000 * seconds_at_area(DENOISER_PREPARATION_SECONDS_PER_1000, area)
    return preparation + config.steps * seconds_at_area(DENOISER_STEP_SECONDS, area) * config.batch_size / 64


class FilterImprover(Improver):
    """Wrap the unchanged champion with a denoiser trained on synthetic corruptions of clean training images.

    Needs no labels: any labels the person gave all go to the shifted holdout that judges the filter. The
    candidate's drift detector is the champion's kind refitted on clean images as the filter passes them on (the gate
    cleans a share of clean images too, so the champion's detector, fitted on raw images, would see clean batches as
    drifted). With `reject_fpr`, cleaned images whose drift score by that detector stays above its clean-score
    quantile 1 - reject_fpr are answered with REJECTED_LABEL (so about `reject_fpr` of clean images are rejected too).
    """

    action = "filter"

    def __init__(
        self, config: DenoiserConfig = DenoiserConfig(), reject_fpr: float | None = None, gate_quantile: float | None = DEFAULT_GATE_QUANTILE
    ) -> None:
        if reject_fpr is not None and not 0 < reject_fpr < 1:
            raise ValueError(f"reject_fpr must be in (0, 1) or None, got {reject_fpr}")
        self.config = config
        self.reject_fpr = reject_fpr
        self.gate_quantile = gate_quantile

    def _describe(self, context: ImprovementContext, n_training_labels: int) -> tuple[str, float, dict[str, Any]]:
        info = context.replay.info
        config = self._config_for(context)
        key = denoiser_key(self._guide(context), context.replay, config)
        with _TRAINED_LOCK:
            reused = key is not None and key in _TRAINED
        seconds = 0.0 if reused else expected_denoiser_seconds(config, len(context.replay), info.height, info.width)
        trained = (f"{min(self.config.training_images, len(context.replay)):,} clean training images corrupted by "
                   f"{len(self.config.training_corruptions)} synthetic corruptions")
        description = (
            (f"reuse the denoiser this process already trained for this classifier on the same {trained}" if reused
             else f"train a denoiser on {trained}")
            + f" and put it in front of classifier v{context.champion_version or '?'} (unchanged); no labels needed"
            + ("; it learns from pixel error alone (the model gives no gradients)" if config.consistency_weight == 0 else "")
            + (f"; reject images still beyond the detector's clean {1 - self.reject_fpr:.1%} quantile" if self.reject_fpr else "")
        )
        params = {**config.as_params(), "filter_reject_fpr": self.reject_fpr or 0.0, "filter_gate_quantile": self.gate_quantile or 0.0,
                  "denoiser_reused": reused}
        return description, seconds, params

    @staticmethod
    def _guide(context: ImprovementContext) -> nn.Module | None:
        """The classifier as the denoiser's consistency loss differentiates it: an adopted pytorch module through
        `ForeignModule`, nothing for a model without gradients (a pyfunc, or one that answers labels)."""
        classifier = context.classifier
        if not isinstance(classifier, ForeignClassifier):
            return classifier
        if isinstance(classifier.model, nn.Module) and classifier.contract.output != "labels":
            return ForeignModule(classifier)
        return None

    def _config_for(self, context: ImprovementContext) -> DenoiserConfig:
        return self.config if self._guide(context) is not None else replace(self.config, consistency_weight=0.0)

    @staticmethod
    def _gate_detector(context: ImprovementContext) -> Detector | None:
        """The champion's detector for the score gate, or None: for an adopted model (its saved detector needs the
        model's answers) and for a champion that already filters (its detector watches filtered images, not the raw
        ones the gate sees)."""
        if isinstance(context.classifier, ForeignClassifier) or context.served_champion is not None:
            return None
        return context.detector

    def _build(self, context: ImprovementContext, labelled: LabeledImages | None) -> tuple[FilteredClassifier, Detector, int, str]:
        if self.reject_fpr is not None and isinstance(context.classifier, ForeignClassifier):
            raise ScanflowError("a filter in front of an adopted model cannot reject images (its answers keep the model's own form): drop reject_fpr")
        result, reused = reusable_denoiser(self._guide(context), context.replay, self._config_for(context))
        gate = None
        if self.gate_quantile is not None:
            gate_images = context.calibration.images if context.calibration is not None else context.clean_holdout.images
            gate = calibrate_gate(result.denoiser, gate_images, self.gate_quantile)
        filtered = FilteredClassifier(context.classifier, result.denoiser, gate_threshold=gate, **score_gate(self._gate_detector(context)))
        detector = refit_detector(context.classifier, context, seen=filtered.clean)
        if self.reject_fpr is not None:
            filtered = replace(filtered, scorer=detector, reject_threshold=detector.clean_score_quantile(1.0 - self.reject_fpr))
        summary = (f"denoiser {'reused (trained earlier in this process' if reused else '(trained'} on "
                   f"{len(result.training_corruptions)} synthetic corruptions in {result.seconds:.0f} s)")
        return filtered, detector, 0, summary

    def _drift_evidence(self, context: ImprovementContext, candidate: FilteredClassifier) -> DriftEvidence | None:
        """The champion's detector on the batch as the champion's classifier sees it and as the filtered one does:
        a filter that helps removes most of the drift it was built for, which needs no labels to see."""
        if context.detector is None:
            return None
        champion_view = getattr(context.served_champion, "clean", None)
        raw = context.detector.predict(champion_view(context.batch) if champion_view else context.batch)
        filtered = context.detector.predict(candidate.clean(context.batch))
        return DriftEvidence(raw.statistic, filtered.statistic, raw.threshold)

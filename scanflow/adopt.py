"""Adopt a classifier Scanflow did not train: put a registered MLflow model under supervision.

A model is an MLflow `pytorch` flavour image classifier (an `nn.Module` from float images [N, C, H, W] to logits or
probabilities) or any MLflow pyfunc that returns class probabilities [N, K] or labels [N] (then the detector works
from pixels and labels only: reduced evidence). Its **input contract** (`InputContract`: channels, size,
normalisation, class names, what it outputs) is read from the model's signature and metadata (`classes`, `mean`,
`std`, `output`) and completed by the caller; a contradiction between them is refused.

Adoption fits Scanflow's autoencoder and drift detector on reference images, logs both in an `adopt-` run, tags the
adopted version with them (and with the sha256 of its files) and points the `champion` alias at it. The user's
model artifact is never rewritten: a version under another name is a new registry entry on the same source.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from scanflow.data import DatasetInfo, LabeledImages
from scanflow.errors import ScanflowError
from scanflow.models import ImageSpec, to_float
from scanflow.tags import ADOPTED_TAG, CONTRACT_TAG, KIND_TAG, REFERENCE_TAG

if TYPE_CHECKING:
    from scanflow.images import ImageSet

Flavour = Literal["pytorch", "pyfunc"]
Output = Literal["logits", "probabilities", "labels"]
OUTPUTS: tuple[str, ...] = ("logits", "probabilities", "labels")
#: Images scored per forward pass of a foreign model.
FOREIGN_BATCH = 256
#: Reference images the autoencoder sees during an adoption when no epoch count is given (epochs = this / the
#: reference's fit part, between 3 and 40): enough to model clean references of a few thousand images, and an
#: adoption of 10,000 reference images stays within minutes on a CPU.
ADOPTION_AUTOENCODER_IMAGES = 80_000


def adoption_epochs(n_fit: int) -> int:
    """The autoencoder's default epochs for `n_fit` reference images (see ADOPTION_AUTOENCODER_IMAGES)."""
    return int(min(40, max(3, -(-ADOPTION_AUTOENCODER_IMAGES // max(n_fit, 1)))))


class AdoptionError(ScanflowError, ValueError):
    """A model, a reference set or a flag that cannot be adopted as given; the message names the fix."""


@dataclass(frozen=True)
class InputContract:
    """What a foreign model takes and gives. Pixels become `(x / 255 - mean) / std` per channel, float32
    [N, channels, height, width]; `output` says whether the model returns logits, probabilities or labels."""

    channels: int
    height: int
    width: int
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    output: Output
    flavour: Flavour
    #: A named layer of a pytorch module whose output is the model's embedding (e.g. its penultimate layer): the
    #: detector then also scores distances in it (the `embedding` component).
    embedding: str | None = None
    #: A registered MLflow model, pinned as `models:/NAME/VERSION`, that maps the model's input to its embedding
    #: [N, D]: the embedding function of a model whose layers Scanflow cannot read (a pyfunc). Its files' sha256
    #: (`embedding_model_sha256`, recorded at adoption) are checked at every load.
    embedding_model: str | None = None
    embedding_model_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.embedding is not None and self.embedding_model is not None:
            raise AdoptionError("--embedding-layer and --embedding-model both name the model's embedding: give one of them")
        if self.embedding_model is not None and not re.fullmatch(r"models:/[^/@]+/\d+", self.embedding_model):
            raise AdoptionError(f"the embedding model must be a registered version, models:/NAME/VERSION, got {self.embedding_model!r}")
        if self.embedding is not None and self.flavour != "pytorch":
            raise AdoptionError(f"--embedding-layer names a layer of a pytorch module, and a {self.flavour} model has none "
                                "Scanflow can read: drop the flag")
        if self.channels not in (1, 3):
            raise AdoptionError(f"a model takes 1 (grey) or 3 (RGB) channels, this one {self.channels}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise AdoptionError(f"a classifier needs at least two distinct class names, got {list(self.classes)}")
        for what, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != self.channels:
                raise AdoptionError(f"--{what} needs one value per channel ({self.channels}), got {list(values)}")
        if any(value <= 0 for value in self.std):
            raise AdoptionError(f"--std values must be > 0, got {list(self.std)}")
        if self.output not in OUTPUTS:
            raise AdoptionError(f"the model's output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")

    def info(self, name: str, source: str) -> DatasetInfo:
        """The dataset description batches of this model are checked against."""
        return DatasetInfo(f"adopted:{name}", self.classes, self.channels, self.height, self.width, source)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "classes": list(self.classes), "mean": list(self.mean), "std": list(self.std)})

    @classmethod
    def from_json(cls, text: str) -> "InputContract":
        value = json.loads(text)  # contracts recorded before the embedding layer existed have none
        return cls(**{**value, "classes": tuple(value["classes"]), "mean": tuple(value["mean"]), "std": tuple(value["std"])})

    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] to the model's normalised float32 input."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (images.to(torch.float32) / 255.0 - mean) / std

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The model's normalised float32 input back to uint8 [N, C, H, W] (rounded to the nearest pixel value)."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return ((x.to(torch.float32) * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)


def images_sha256(images: torch.Tensor, labels: torch.Tensor | None) -> str:
    """sha256 of uint8 images [N, C, H, W] as read into a contract, and of their labels when there are any."""
    digest = hashlib.sha256(np.ascontiguousarray(images.numpy()).tobytes())
    if labels is not None:
        digest.update(np.ascontiguousarray(labels.numpy().astype(np.int64)).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ReferenceRecord:
    """Where an adoption's reference images came from and what they were: `source` (a folder, .npy/.npz or s3://
    prefix), the bad-file policy it was read with, the count, whether class sub-folders labelled it, and the sha256
    of the images as read into the contract. A retrain re-reads the source and refuses it when the sha256 differs."""

    source: str
    on_bad: str
    n: int
    labelled: bool
    sha256: str

    @classmethod
    def of(cls, images: "ImageSet", on_bad: str) -> "ReferenceRecord":
        return cls(images.source, on_bad, len(images), images.labels is not None, images_sha256(images.images, images.labels))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ReferenceRecord":
        return cls(**json.loads(text))


def improvable_actions(tags: Mapping[str, str]) -> tuple[tuple[str, ...], str]:
    """The decisions a registered version (by its tags) can carry out, and why the others cannot ("" when all can).

    A model Scanflow trained: retrain, filter, ignore. An adopted one needs a labelled reference for either
    improvement (a retrain replays it; both are judged on its held-out fifth); then the filter works in front of any
    adopted model, and a retrain needs a pytorch module that returns logits or probabilities. A version that is
    itself a filter (kind `filter`) is not offered another: it would be the same denoiser (`ALREADY_FILTERED`)."""
    from scanflow.human import ACTIONS

    if ADOPTED_TAG in tags:
        reference = ReferenceRecord.from_json(tags[REFERENCE_TAG]) if REFERENCE_TAG in tags else None
        actions, note = actions_for(InputContract.from_json(tags[CONTRACT_TAG]), reference)
    else:
        actions, note = ACTIONS, ""
    if tags.get(KIND_TAG) == "filter" and "filter" in actions:
        actions = tuple(action for action in actions if action != "filter")
        note = "; ".join(part for part in (note, ALREADY_FILTERED) if part)
    return actions, note


#: Why a filter version is not offered another filter: the denoiser is trained, seeded, on the same clean images
#: and synthetic corruptions in front of the same classifier, so a new one would be the same model.
ALREADY_FILTERED = ("it is already a denoiser in front of its classifier, and a new filter would be trained on the same "
                    "clean images and synthetic corruptions, the same model: retrain it with the labels, or ignore")


def actions_for(contract: InputContract, reference: ReferenceRecord | None) -> tuple[tuple[str, ...], str]:
    """`improvable_actions` of an adopted model with this contract and reference record."""
    from scanflow.human import ACTIONS

    if reference is None:
        return ("ignore",), "it was adopted without a record of its reference images: adopt it again to improve it"
    if not reference.labelled:
        return ("ignore",), (f"its reference {reference.source} has no labels (class sub-folders), which a retrain "
                             "replays and both improvements are judged on: adopt it again with a labelled reference")
    if contract.flavour != "pytorch" or contract.output == "labels":
        return ("filter", "ignore"), (f"a {contract.flavour} model that answers {contract.output} has no module Scanflow "
                                      "can fine-tune: retrain it with your own code and adopt the new version")
    return ACTIONS, ""


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' (e.g. '32x32') as (height, width)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise AdoptionError(f"--input-size must be HEIGHTxWIDTH in pixels, e.g. 32x32, got {text!r}")
    return int(parts[0]), int(parts[1])


def _signature_shape(signature: Any) -> tuple[int, int, int] | None:
    """(C, H, W) of a tensor signature's first input [N, C, H, W], or None when it declares none."""
    if signature is None or signature.inputs is None or not signature.inputs.is_tensor_spec():
        return None
    shape = tuple(signature.inputs.inputs[0].shape)
    if len(shape) != 4 or any(d is None or d < 1 for d in shape[1:]):
        return None
    return tuple(int(d) for d in shape[1:])  # type: ignore[return-value]


def _agree(what: str, declared: Any, given: Any, flag: str) -> Any:
    """The value a model declares and a flag gives, refusing a contradiction; None when neither says."""
    if declared is not None and given is not None and declared != given:
        raise AdoptionError(f"the model declares {what} {declared} but {flag} says {given}: drop the flag or fix the model's metadata")
    return declared if declared is not None else given


def resolve_contract(
    flavours: set[str], signature: Any, metadata: dict[str, Any] | None, *, classes: tuple[str, ...] | None = None,
    input_size: tuple[int, int] | None = None, channels: int | None = None, mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None, output: str | None = None, embedding: str | None = None,
    embedding_model: str | None = None, embedding_model_sha256: str | None = None,
) -> InputContract:
    """The input contract from what the model declares (`flavours`, `signature`, `metadata`) and the caller's flags
    (`embedding_model`: a pinned `models:/NAME/VERSION` with the sha256 record of its files). Raises AdoptionError
    on a contradiction or on what neither says (size, class names)."""
    if "pytorch" in flavours:
        flavour: Flavour = "pytorch"
    elif "python_function" in flavours:
        flavour = "pyfunc"
    else:
        raise AdoptionError(f"the model has flavours {sorted(flavours)}: adopt a pytorch or a python_function (pyfunc) model")
    metadata = metadata or {}
    shape = _signature_shape(signature)
    size = _agree("input size", None if shape is None else shape[1:], input_size, "--input-size")
    if size is None:
        raise AdoptionError("the model's signature declares no image size: pass --input-size HxW")
    declared_classes = tuple(str(c) for c in metadata["classes"]) if metadata.get("classes") else None
    names = _agree("classes", declared_classes, classes, "--classes")
    if names is None:
        raise AdoptionError("the model's metadata names no classes: pass --classes FILE (one class name per line)")
    n_channels = _agree("channels", None if shape is None else shape[0], channels, "the reference images")
    declared_mean = tuple(float(v) for v in metadata["mean"]) if metadata.get("mean") is not None else None
    declared_std = tuple(float(v) for v in metadata["std"]) if metadata.get("std") is not None else None
    resolved_mean = _agree("mean", declared_mean, mean, "--mean")
    resolved_std = _agree("std", declared_std, std, "--std")
    resolved_output = _agree("output", metadata.get("output"), output, "--output") or ("logits" if flavour == "pytorch" else "probabilities")
    resolved_embedding = _agree("embedding layer", metadata.get("embedding_layer"), embedding, "--embedding-layer")
    c = int(n_channels or 3)
    return InputContract(
        c, size[0], size[1], names, resolved_mean or (0.0,) * c, resolved_std or (1.0,) * c, resolved_output, flavour,
        resolved_embedding, embedding_model, embedding_model_sha256,
    )


class ForeignClassifier:
    """A model Scanflow did not train behind the interface Scanflow's detector and flows use: uint8 images
    [N, C, H, W] in; probabilities, hidden features and labels out. The hidden features are the output of the
    contract's embedding model when it names one; else, for a pytorch module, of its embedding layer or the input of
    its last linear layer; otherwise (a pyfunc) the probabilities themselves. Raises AdoptionError when the embedding
    layer is not in the module."""

    def __init__(self, model: Any, contract: InputContract, embedder: Any = None) -> None:
        """`embedder`: the loaded `contract.embedding_model` (its pyfunc), which gives the hidden features when the
        contract names one; without it such a classifier predicts, and refuses to give hidden features."""
        self.model = model
        self.contract = contract
        self.embedder = embedder
        self._last_linear = None
        self._embedding_layer = None
        if isinstance(model, nn.Module):
            model.eval()
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            self._last_linear = linears[-1] if linears else None
            layers = dict(model.named_modules())
            if contract.embedding is not None and contract.embedding not in layers:
                names = [name for name in layers if name]
                raise AdoptionError(f"the model has no layer {contract.embedding!r} for --embedding-layer; its layers: "
                                    f"{', '.join(names[:20])}{', ...' if len(names) > 20 else ''}")
            self._embedding_layer = layers.get(contract.embedding) if contract.embedding is not None else None

    @property
    def evidence(self) -> str:
        """What the detector can use from this model, in words."""
        if self.contract.embedding_model is not None:
            if self.contract.output == "labels":
                return (f"labels only and the embedding of {self.contract.embedding_model}: the detector works from pixels, "
                        "the autoencoder, that embedding and the mix of predicted classes, without the model's confidence")
            return f"probabilities and the embedding of {self.contract.embedding_model}"
        if self.contract.output == "labels":
            return ("labels only: the detector works from pixels, the autoencoder and the mix of predicted classes, "
                    "without the model's confidence")
        if self._embedding_layer is not None:
            return f"probabilities and the embedding of layer {self.contract.embedding!r}"
        if self._last_linear is not None:
            return "probabilities and hidden features"
        return "probabilities (no hidden features)"

    def eval(self) -> "ForeignClassifier":
        return self

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding model's features float32 [N, D] of the model's input `x`; AdoptionError when it is not
        loaded or answers anything but one finite vector per image."""
        if self.embedder is None:
            raise AdoptionError(f"the embedding model {self.contract.embedding_model} is not loaded: load the adopted model "
                                "through the registry (scanflow.tracking.load_foreign_classifier)")
        out = torch.as_tensor(np.asarray(self.embedder.predict(x.numpy()), dtype=np.float32))
        if out.dim() < 2 or len(out) != len(x) or not torch.isfinite(out).all():
            raise AdoptionError(f"the embedding model {self.contract.embedding_model} returned shape {list(out.shape)} for "
                                f"{len(x)} images, expected [{len(x)}, D] of finite numbers: it must map the model's input "
                                "to one feature vector per image")
        return out.flatten(1)

    def _forward(self, images: torch.Tensor, hidden: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(the hidden features or None, the model's own output) for uint8 images; `hidden` False skips the
        features (predictions only)."""
        x = self.contract.to_float(images)
        embedded = self._embed(x) if hidden and self.contract.embedding_model is not None else None
        if not isinstance(self.model, nn.Module):
            return embedded, torch.as_tensor(np.asarray(self.model.predict(x.numpy()))).float()
        if embedded is not None or not hidden:
            with torch.inference_mode():
                return embedded, torch.as_tensor(self.model(x)).detach().float()
        captured: list[torch.Tensor] = []
        if self._embedding_layer is not None:
            hook = self._embedding_layer.register_forward_hook(lambda m, i, o: captured.append(torch.as_tensor(o).detach()))
        elif self._last_linear is not None:
            hook = self._last_linear.register_forward_hook(lambda m, i, o: captured.append(i[0].detach()))
        else:
            hook = None
        try:
            with torch.inference_mode():
                raw = self.model(x)
        finally:
            if hook is not None:
                hook.remove()
        return (captured[0].flatten(1).float() if captured else None), torch.as_tensor(raw).detach().float()

    def _outputs(self, images: torch.Tensor, hidden: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        features, raw = self._forward(images, hidden)
        probabilities = self._probabilities(raw, len(images))
        return (features if features is not None else probabilities), probabilities

    def _probabilities(self, raw: torch.Tensor, n: int) -> torch.Tensor:
        k = len(self.contract.classes)
        if self.contract.output == "labels" or raw.dim() == 1:
            labels = raw.reshape(-1).long()
            if len(labels) != n or labels.min() < 0 or labels.max() >= k:
                raise AdoptionError(f"the model returned labels outside 0..{k - 1} or not one per image: check --classes")
            return torch.nn.functional.one_hot(labels, k).float()
        if raw.shape != (n, k):
            raise AdoptionError(
                f"the model returned shape {list(raw.shape)} for {n} images, expected [{n}, {k}] (one column per class): "
                "check --classes against the model's output"
            )
        if self.contract.output == "logits":
            return torch.softmax(raw.float(), dim=1)
        return raw.float()

    def embed_and_predict_proba(self, images: torch.Tensor, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden features float32 [N, D] and class probabilities float32 [N, K]."""
        size = batch_size or FOREIGN_BATCH
        parts = [self._outputs(images[start:start + size]) for start in range(0, len(images), size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def predict_proba(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        size = batch_size or FOREIGN_BATCH
        return torch.cat([self._outputs(images[start:start + size], hidden=False)[1] for start in range(0, len(images), size)])

    def predict(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        return self.predict_proba(images, batch_size).argmax(dim=1)


class ForeignModule(nn.Module):
    """An adopted pytorch classifier as Scanflow's fine-tuning trains one (`scanflow.improve.retrain.fine_tune`):
    float images [N, C, H, W] with values 0..1 in (the contract's normalisation applied inside), logits out; a model that
    answers probabilities gives their logarithm, which softmax maps back to them. The user's module is trained in
    place of a copy: `as_classifier` wraps it again for the detector and the flows."""

    def __init__(self, classifier: ForeignClassifier) -> None:
        super().__init__()
        contract = classifier.contract
        if not isinstance(classifier.model, nn.Module) or contract.output == "labels":
            raise AdoptionError(f"a {contract.flavour} model that answers {contract.output} has no module to fine-tune")
        self.net = classifier.model
        self.contract = contract
        self.spec = ImageSpec(contract.channels, contract.height, contract.width, len(contract.classes))
        self.register_buffer("mean", torch.tensor(contract.mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(contract.std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.net((x - self.mean) / self.std)
        return raw if self.contract.output == "logits" else torch.log(raw.clamp_min(1e-12))

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities float32 [N, K] of uint8 images, in eval mode."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                return torch.cat([torch.softmax(self(to_float(images[s:s + FOREIGN_BATCH])), dim=1)
                                  for s in range(0, len(images), FOREIGN_BATCH)])
        finally:
            self.train(was_training)

    def as_classifier(self, embedder: Any = None) -> ForeignClassifier:
        """The module as a `ForeignClassifier` again, with the contract's embedding model `embedder` (not part of
        the module: fine-tuning copies the module, never the embedder)."""
        return ForeignClassifier(self.net, self.contract, embedder)


class AdoptedServing:
    """An adopted model as the predict flow serves it: `predict(uint8 array)` gives int64 labels. `predictor` is the
    `ForeignClassifier`, or a `FilteredClassifier` around it when the version filters its inputs."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor

    def predict(self, images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(images))
        if batch.dim() == 3:
            batch = batch.unsqueeze(1)
        return self.predictor.predict(batch).numpy().astype(np.int64)


def load_foreign_model(local: str, contract: InputContract) -> Any:
    """The user's model from its downloaded MLflow model directory, by its flavour (its own loader: the user's code)."""
    import mlflow.pyfunc

    if contract.flavour == "pytorch":
        from mlflow import pytorch as mlflow_pytorch

        return mlflow_pytorch.load_model(local, map_location="cpu")
    return mlflow.pyfunc.load_model(local)


def check_outputs(classifier: ForeignClassifier, images: torch.Tensor) -> None:
    """Run the model on a few reference images and refuse output that does not fit the contract (wrong number of
    classes, probabilities that do not sum to 1)."""
    _, probabilities = classifier.embed_and_predict_proba(images[:8])
    if classifier.contract.output == "probabilities" and not torch.allclose(probabilities.sum(dim=1), torch.ones(len(probabilities)), atol=1e-3):
        raise AdoptionError("the model's outputs do not sum to 1 per image: they are not probabilities; pass --output logits")


def reference_splits(images: torch.Tensor, labels: torch.Tensor | None, info: DatasetInfo, seed: int = 0) -> tuple[LabeledImages, LabeledImages]:
    """Reference images as (fit, calibration): a seeded 80/20 split. Unlabelled images get label 0 (only the
    autoencoder, which ignores labels, trains on them)."""
    if len(images) < 50:
        raise AdoptionError(f"the reference holds {len(images)} images: give at least 50 clean images the model serves well")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(images)))
    cut = int(0.8 * len(images))
    labels = labels if labels is not None else torch.zeros(len(images), dtype=torch.int64)
    fit, calibration = order[:cut].sort().values, order[cut:].sort().values
    return (LabeledImages(images[fit], labels[fit], info, "reference[fit]"),
            LabeledImages(images[calibration], labels[calibration], info, "reference[calibration]"))


def reference_data(record: ReferenceRecord, contract: InputContract, info: DatasetInfo, store: Any = None,
                   seed: int = 0) -> tuple[LabeledImages, LabeledImages]:
    """The adoption's labelled reference again, as (fit, calibration) (`reference_splits`): what a retrain of the
    adopted model replays and is judged on. Raises AdoptionError when the reference is unlabelled or is no longer
    the images the model was adopted with (their sha256 differs), before any work."""
    from scanflow.images import ImageContract, read_images

    if not record.labelled:
        raise AdoptionError(f"the reference {record.source} has no labels (class sub-folders): a retrain replays labelled "
                            "reference images and is judged on them; adopt the model again with a labelled reference")
    images = read_images(record.source, ImageContract(contract.channels, contract.height, contract.width),
                         classes=contract.classes, on_bad=record.on_bad, store=store)
    if images_sha256(images.images, images.labels) != record.sha256:
        raise AdoptionError(
            f"the reference {record.source} is not what the model was adopted with ({len(images)} images now, {record.n} "
            "then; their sha256 differs): a retrain replays and is judged on the adoption's reference; restore it, or "
            "adopt the model again on the new reference"
        )
    return reference_splits(images.images, images.labels, info, seed)


def detector_components(contract: InputContract) -> tuple[str, ...]:
    """The detector's components for a model: without probabilities, no uncertainty component; with an embedding
    layer or model, the embedding component too."""
    from scanflow.drift.autoencoder import default_components

    labels_only = contract.output == "labels"
    components = tuple(c for c in default_components(contract.channels) if not (labels_only and c == "uncertainty"))
    return components + (("embedding",) if contract.embedding is not None or contract.embedding_model is not None else ())


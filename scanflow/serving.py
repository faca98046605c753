"""How a Scanflow model is served: MLflow pyfunc wrappers with one interface at the edge.

Every registered version of the classifier loads as a pyfunc whose `predict` takes uint8 images [N, C, H, W]
(or [N, H, W]) and returns int64 labels [N]; -1 is reserved for "rejected" by a filter wrapper, so the plain
classifier and a filtered one are interchangeable behind the `champion` alias. The autoencoder's pyfunc returns
its latent vectors, float32 [N, latent_dim].
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from scanflow.data import DatasetInfo, validate_batch
from scanflow.errors import NotFittedError
from scanflow.models import Autoencoder, Classifier, Denoiser

CLASSIFIER_ARTIFACT = "classifier"
AUTOENCODER_ARTIFACT = "autoencoder"
DENOISER_ARTIFACT = "denoiser"
REJECTION_DETECTOR_ARTIFACT = "rejection_detector"
REJECTED_LABEL = -1


def image_signature(info: DatasetInfo, output: TensorSpec) -> ModelSignature:
    """Signature of a model taking uint8 images of `info`'s shape, any batch size."""
    images = TensorSpec(np.dtype(np.uint8), (-1, *info.image_shape), name="images")
    return ModelSignature(inputs=Schema([images]), outputs=Schema([output]))


def classifier_signature(info: DatasetInfo) -> ModelSignature:
    return image_signature(info, TensorSpec(np.dtype(np.int64), (-1,), name="labels"))


def autoencoder_signature(info: DatasetInfo, latent_dim: int) -> ModelSignature:
    return image_signature(info, TensorSpec(np.dtype(np.float32), (-1, latent_dim), name="latent"))


def _as_images(model_input: Any, info: DatasetInfo) -> torch.Tensor:
    if isinstance(model_input, dict):
        model_input = model_input.get("images", next(iter(model_input.values())))
    return validate_batch(np.asarray(model_input), info)


class _ImageModel(mlflow.pyfunc.PythonModel):
    """A Scanflow model file served as a pyfunc: validates the uint8 batch, then runs `_run`."""

    artifact: str
    model_class: type[Classifier] | type[Autoencoder]
    # No type-hint based input conversion (MLflow warns at class creation without it): `_as_images` is the edge.
    _skip_type_hint_validation = True

    def __init__(self, info: DatasetInfo) -> None:
        self.info = info
        self.model: Classifier | Autoencoder | None = None

    def load_context(self, context: Any) -> None:
        self.model = self.model_class.load(context.artifacts[self.artifact])

    def predict(self, context, model_input, params=None):
        if self.model is None:
            raise NotFittedError(f"{type(self).__name__}.predict before load_context: load it with mlflow.pyfunc.load_model")
        return self._run(_as_images(model_input, self.info))

    def _run(self, images: torch.Tensor) -> np.ndarray:
        raise NotImplementedError


class ClassifierModel(_ImageModel):
    """The plain classifier as a pyfunc: uint8 images in, int64 labels out."""

    artifact = CLASSIFIER_ARTIFACT
    model_class = Classifier

    def _run(self, images: torch.Tensor) -> np.ndarray:
        return self.model.predict(images).numpy().astype(np.int64)


class AutoencoderModel(_ImageModel):
    """The autoencoder as a pyfunc: uint8 images in, latent vectors out."""

    artifact = AUTOENCODER_ARTIFACT
    model_class = Autoencoder

    def _run(self, images: torch.Tensor) -> np.ndarray:
        return self.model.embed(images).numpy().astype(np.float32)


class FilteredClassifierModel(_ImageModel):
    """A filter-wrapped classifier as a pyfunc: the denoiser cleans the batch, the unchanged classifier labels it;
    with a rejection detector logged beside them, images still beyond its threshold get REJECTED_LABEL (-1)."""

    artifact = CLASSIFIER_ARTIFACT
    model_class = Classifier

    def __init__(self, info: DatasetInfo, reject_threshold: float | None = None, gate_threshold: float | None = None) -> None:
        super().__init__(info)
        self.reject_threshold = reject_threshold
        self.gate_threshold = gate_threshold
        self.filtered: Any = None

    def load_context(self, context: Any) -> None:
        from scanflow.drift.base import Detector
        from scanflow.improve.filter import FilteredClassifier

        super().load_context(context)
        denoiser = Denoiser.load(context.artifacts[DENOISER_ARTIFACT])
        scorer = Detector.load(context.artifacts[REJECTION_DETECTOR_ARTIFACT]) if self.reject_threshold is not None else None
        self.filtered = FilteredClassifier(self.model, denoiser, scorer, self.reject_threshold, self.gate_threshold)

    def _run(self, images: torch.Tensor) -> np.ndarray:
        return self.filtered.predict(images).numpy().astype(np.int64)

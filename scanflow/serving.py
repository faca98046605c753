"""How a Scanflow model is served: MLflow pyfunc wrappers with one interface at the edge.

Every registered version of the classifier loads as a pyfunc whose `predict` takes uint8 images [N, C, H, W]
(or [N, H, W]) and returns int64 labels [N]; -1 is reserved for "rejected" by a filter wrapper, so the plain
classifier and a filtered one are interchangeable behind the `champion` alias. The autoencoder's pyfunc returns
its latent vectors, float32 [N, latent_dim].

A model is logged as MLflow "models from code": MLflow stores `scanflow/pyfunc_model.py` and a JSON-able
configuration file (the wrapper's kind, the dataset description, thresholds), never a pickled object, so loading a
model runs only Scanflow's installed code. Scanflow must be importable where a model is served.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

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
#: The champion's detector a filter's score gate judges raw images by (`FilteredClassifier.gate_scorer`).
GATE_DETECTOR_ARTIFACT = "gate_detector"
#: The artifact holding a wrapper's `model_config()` as JSON.
CONFIG_ARTIFACT = "scanflow_config"
#: The code file MLflow stores with every Scanflow pyfunc and runs to load it.
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")


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


class _ImageModel:
    """A Scanflow model file served as a pyfunc: validates the uint8 batch, then runs `_run`."""

    kind: ClassVar[str]
    artifact: str
    model_class: type[Classifier] | type[Autoencoder]
    def __init__(self, info: DatasetInfo) -> None:
        self.info = info
        self.model: Classifier | Autoencoder | None = None

    def model_config(self) -> dict[str, Any]:
        """What `from_config` needs, as JSON-able values (stored in the MLmodel file)."""
        return {"kind": self.kind, "dataset": {**asdict(self.info), "classes": list(self.info.classes)}}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "_ImageModel":
        dataset = config["dataset"]
        return cls(DatasetInfo(**{**dataset, "classes": tuple(dataset["classes"])}))

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

    kind = "classifier"
    artifact = CLASSIFIER_ARTIFACT
    model_class = Classifier

    def _run(self, images: torch.Tensor) -> np.ndarray:
        return self.model.predict(images).numpy().astype(np.int64)


class AutoencoderModel(_ImageModel):
    """The autoencoder as a pyfunc: uint8 images in, latent vectors out."""

    kind = "autoencoder"
    artifact = AUTOENCODER_ARTIFACT
    model_class = Autoencoder

    def _run(self, images: torch.Tensor) -> np.ndarray:
        return self.model.embed(images).numpy().astype(np.float32)


class FilteredClassifierModel(_ImageModel):
    """A filter-wrapped classifier as a pyfunc: the denoiser cleans the batch, the unchanged classifier labels it;
    with a rejection detector logged beside them, images still beyond its threshold get REJECTED_LABEL (-1); with a
    gate detector, images it scores above `gate_score_threshold` are cleaned whatever their correction size."""

    kind = "filtered-classifier"
    artifact = CLASSIFIER_ARTIFACT
    model_class = Classifier

    def __init__(
        self, info: DatasetInfo, reject_threshold: float | None = None, gate_threshold: float | None = None,
        gate_score_threshold: float | None = None,
    ) -> None:
        super().__init__(info)
        self.reject_threshold = reject_threshold
        self.gate_threshold = gate_threshold
        self.gate_score_threshold = gate_score_threshold
        self.filtered: Any = None

    def model_config(self) -> dict[str, Any]:
        return {**super().model_config(), "reject_threshold": self.reject_threshold, "gate_threshold": self.gate_threshold,
                "gate_score_threshold": self.gate_score_threshold}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "FilteredClassifierModel":
        info = super().from_config(config).info
        return cls(info, config.get("reject_threshold"), config.get("gate_threshold"), config.get("gate_score_threshold"))

    def load_context(self, context: Any) -> None:
        from scanflow.drift.base import Detector
        from scanflow.improve.filter import FilteredClassifier

        super().load_context(context)
        denoiser = Denoiser.load(context.artifacts[DENOISER_ARTIFACT])
        scorer = Detector.load(context.artifacts[REJECTION_DETECTOR_ARTIFACT]) if self.reject_threshold is not None else None
        gate_scorer = Detector.load(context.artifacts[GATE_DETECTOR_ARTIFACT]) if self.gate_score_threshold is not None else None
        self.filtered = FilteredClassifier(self.model, denoiser, scorer, self.reject_threshold, self.gate_threshold,
                                           gate_scorer, self.gate_score_threshold)

    def _run(self, images: torch.Tensor) -> np.ndarray:
        return self.filtered.predict(images).numpy().astype(np.int64)


#: The artifact of a filtered adopted version holding the adopted model's own MLflow model directory, unchanged.
FOREIGN_MODEL_ARTIFACT = "adopted_model"


class FilteredForeignModel:
    """A filter in front of an adopted model, as a drop-in for it: the same input (float32 [N, C, H, W], normalised
    by the model's contract) and the same output (its logits, probabilities or labels). The input is mapped back to
    uint8 pixels (rounded), cleaned by the denoiser (images it would change less than the gate pass untouched), and
    given to the adopted model, loaded by its own flavour from `FOREIGN_MODEL_ARTIFACT`."""

    kind = "filtered-foreign"

    def __init__(self, contract: Any, gate_threshold: float | None = None) -> None:
        self.contract = contract
        self.gate_threshold = gate_threshold
        self.filtered: Any = None

    def model_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "contract": json.loads(self.contract.to_json()), "gate_threshold": self.gate_threshold}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "FilteredForeignModel":
        from scanflow.adopt import InputContract

        return cls(InputContract.from_json(json.dumps(config["contract"])), config.get("gate_threshold"))

    def load_context(self, context: Any) -> None:
        from scanflow.adopt import ForeignClassifier, load_foreign_model
        from scanflow.improve.filter import FilteredClassifier

        model = load_foreign_model(context.artifacts[FOREIGN_MODEL_ARTIFACT], self.contract)
        denoiser = Denoiser.load(context.artifacts[DENOISER_ARTIFACT])
        self.filtered = FilteredClassifier(ForeignClassifier(model, self.contract), denoiser, gate_threshold=self.gate_threshold)

    def predict(self, context, model_input, params=None):
        if self.filtered is None:
            raise NotFittedError("FilteredForeignModel.predict before load_context: load it with mlflow.pyfunc.load_model")
        if isinstance(model_input, dict):
            model_input = next(iter(model_input.values()))
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        c = self.contract
        if x.dim() != 4 or tuple(x.shape[1:]) != (c.channels, c.height, c.width):
            raise ValueError(f"expected float32 images [N, {c.channels}, {c.height}, {c.width}] normalised as the model's "
                             f"input, got shape {list(x.shape)}")
        cleaned = c.to_float(self.filtered.clean(c.to_pixels(x)))
        model = self.filtered.classifier.model
        if isinstance(model, torch.nn.Module):
            with torch.inference_mode():
                return model(cleaned).numpy()
        return model.predict(cleaned.numpy())


WRAPPERS: dict[str, Any] = {cls.kind: cls for cls in (ClassifierModel, AutoencoderModel, FilteredClassifierModel, FilteredForeignModel)}


class ScanflowPyfunc(mlflow.pyfunc.PythonModel):
    """The one pyfunc class MLflow loads (from `PYFUNC_CODE`): the wrapper named by the "kind" of its
    `CONFIG_ARTIFACT`."""

    # No type-hint based input conversion (MLflow warns at class creation without it): `_as_images` is the edge.
    _skip_type_hint_validation = True

    def __init__(self) -> None:
        self.wrapper: _ImageModel | None = None

    def load_context(self, context: Any) -> None:
        config = json.loads(Path(context.artifacts[CONFIG_ARTIFACT]).read_text())
        if config.get("kind") not in WRAPPERS:
            raise NotFittedError(f"model_config names no Scanflow model kind ({config.get('kind')!r}); known: {sorted(WRAPPERS)}")
        self.wrapper = WRAPPERS[config["kind"]].from_config(config)
        self.wrapper.load_context(context)

    def predict(self, context, model_input, params=None):
        if self.wrapper is None:
            raise NotFittedError("ScanflowPyfunc.predict before load_context: load it with mlflow.pyfunc.load_model")
        return self.wrapper.predict(context, model_input, params)

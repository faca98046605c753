"""Adopting an outside model: the time `scanflow adopt` takes, and what supervision adds to its predictions.

An outside model: torchvision's ResNet-18 (random initialisation; first convolution 3x3 stride 1 and no max-pooling,
as usual at 32x32), registered with plain `mlflow.pytorch.log_model` in a fresh SQLite store. Reference images:
seeded 32x32 RGB images of three shapes in random colours (the outside-model test's generator), as PNG files in
class folders. Measured in one process on one local Prefect server (started before timing):

  1. adoption: the adopt flow from the registry URI to the champion alias (contract, reading the PNG files, the
     model's check, autoencoder training at its default epochs (`scanflow.adopt.adoption_epochs`), detector fit, registration);
  2. serving: per batch of `--batch` images, predict alone (the model's forward pass) against predict + detect (the
     same pass, then the detector given the model's probabilities, as the detect flow gets them), interleaved,
     the best of `--repeats` each. Target: <= 1.5 x predict alone.

Run: `python -m benchmarks.adopt [--reference 10000] [--batch 1000] [--repeats 5]`. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def shapes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from tests.flows.test_adopt import shapes as generate

    return generate(n, seed)


def resnet18() -> torch.nn.Module:
    from torchvision.models import resnet18 as build

    model = build(num_classes=3)
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
    return model.eval()


def register(model: torch.nn.Module, tracking_uri: str) -> str:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    signature = ModelSignature(Schema([TensorSpec(np.dtype(np.float32), (-1, 3, 32, 32))]),
                               Schema([TensorSpec(np.dtype(np.float32), (-1, 3))]))
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(model, name="model", registered_model_name="resnet18-shapes", signature=signature,
                                        serialization_format="pickle", pip_requirements=["torch", "torchvision"],
                                        metadata={"classes": ["square", "cross", "stripes"], "mean": [0.5] * 3, "std": [0.5] * 3})
    return f"models:/resnet18-shapes/{info.registered_model_version}"


def write_reference(folder: Path, n: int) -> None:
    from tests.flows.test_adopt import write_pngs

    images, labels = shapes(n, seed=7)
    write_pngs(folder, images, labels)


def serving_ratio(batch: int, repeats: int) -> tuple[float, float]:
    """Best seconds of predict alone and of predict + detect on one batch of the champion."""
    from scanflow import tracking
    from scanflow.config import TrackingConfig

    detector, _ = tracking.load_detector(TrackingConfig.from_env())
    images = torch.from_numpy(shapes(batch, seed=11)[0])
    alone, both = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        detector.classifier.predict_proba(images)
        alone.append(time.perf_counter() - started)
        started = time.perf_counter()
        probabilities = detector.classifier.predict_proba(images).numpy()
        detector.predict(images, probabilities=probabilities)
        both.append(time.perf_counter() - started)
    return min(alone), min(both)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from scanflow.local import start_prefect_server
    from scanflow.local_auth import new_prefect_auth_string

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        auth_string = new_prefect_auth_string()
        server = start_prefect_server(log_dir=root, home=root / "prefect", auth_string=auth_string)
        os.environ.update({"PREFECT_API_URL": server.api_url, "PREFECT_API_AUTH_STRING": auth_string,
                           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"})
        try:
            uri = register(resnet18(), os.environ["MLFLOW_TRACKING_URI"])
            write_reference(root / "reference", args.reference)
            from flows.adopt import adopt_flow

            started = time.perf_counter()
            summary = adopt_flow(model_uri=uri, reference=str(root / "reference"))
            adoption = time.perf_counter() - started
            os.environ["SCANFLOW_MODEL_NAME"] = summary["model"]
            alone, both = serving_ratio(args.batch, args.repeats)
        finally:
            server.stop()
    print(f"Configuration: ResNet-18 (32x32 RGB, 3 classes), {args.reference} reference PNG files, batch {args.batch}, "
          f"best of {args.repeats}; torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n")
    print("| measure | value | target |\n|---|---|---|")
    print(f"| adoption, URI to champion | {adoption:.0f} s | <= 300 s |")
    print(f"| predict alone, {args.batch} images | {alone:.2f} s | |")
    print(f"| predict + detect, {args.batch} images | {both:.2f} s ({both / alone:.2f} x) | <= 1.5 x |")


if __name__ == "__main__":
    main()

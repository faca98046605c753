"""An outside model put under supervision: written with plain PyTorch and MLflow (no Scanflow model class), adopted
from the registry, then detect and predict on PNG batches as on a model Scanflow trained."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from PIL import Image
from torch import nn

from scanflow.cli import main
from scanflow.tracking import registry
from scanflow.config import TrackingConfig

CLASSES = ("square", "cross", "stripes")
SIZE = 32


def shapes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n RGB 32x32 images of three shapes in random colours on random backgrounds, uint8 [n, 3, 32, 32], labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = np.empty((n, 3, SIZE, SIZE), np.uint8)
    labels = rng.integers(0, 3, n)
    for i, label in enumerate(labels):
        cx, cy, r = rng.integers(10, 22), rng.integers(10, 22), rng.integers(5, 9)
        mask = {0: (abs(xx - cx) < r) & (abs(yy - cy) < r), 1: ((abs(xx - cx) < 2) & (abs(yy - cy) < r + 3)) | ((abs(yy - cy) < 2) & (abs(xx - cx) < r + 3)),
                2: ((xx + int(rng.integers(0, 4))) // 3) % 2 == 0}[int(label)]
        fg, bg = rng.integers(120, 256, 3), rng.integers(0, 100, 3)
        image = np.where(mask[None], fg[:, None, None], bg[:, None, None]) + rng.normal(0, 6, (3, SIZE, SIZE))
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
    return images, labels


class LabelsOnly(mlflow.pyfunc.PythonModel):
    """A team's pyfunc that answers labels only (no probabilities): float images in, int64 labels out."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    def predict(self, context, model_input, params=None):
        with torch.no_grad():
            return self.net(torch.as_tensor(np.asarray(model_input, dtype=np.float32))).argmax(1).numpy()


class Embedder(mlflow.pyfunc.PythonModel):
    """A team's embedding function as a pyfunc of its own: the same float images in, the penultimate layer out [N, 64]."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    def predict(self, context, model_input, params=None):
        with torch.no_grad():
            return self.net.head[:-1](self.net.features(torch.as_tensor(np.asarray(model_input, dtype=np.float32)))).numpy()


class OutsideNet(nn.Module):
    """A team's own classifier: float RGB in [0, 1] normalised by mean/std 0.5, logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _artifact_dir(client, name: str, version: str) -> Path:
    """Where the files of a registered version live in the local artifact store (to change one, as someone with
    write access to the store could)."""
    source = client.get_model_version(name, version).source
    return Path(mlflow.get_logged_model(source.removeprefix("models:/")).artifact_location.removeprefix("file://"))


def write_pngs(folder, images: np.ndarray, labels: np.ndarray | None = None) -> None:
    for i, image in enumerate(images):
        target = folder / CLASSES[int(labels[i])] if labels is not None else folder
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(target / f"img-{i:04d}.png")


@pytest.fixture(scope="module")
def outside_model(mlflow_store, tmp_path_factory):
    """The team's model, trained and registered with plain torch + mlflow code: returns its models:/ URI."""
    images, labels = shapes(300, seed=1)
    torch.manual_seed(0)
    model = OutsideNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    x = (torch.from_numpy(images).float() / 255 - 0.5) / 0.5
    y = torch.from_numpy(labels)
    for _ in range(8):
        for start in range(0, len(x), 32):
            loss = nn.functional.cross_entropy(model(x[start:start + 32]), y[start:start + 32])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    accuracy = float((model(x).argmax(1) == y).float().mean())
    assert accuracy > 0.9, accuracy
    mlflow.set_tracking_uri(mlflow_store)
    mlflow.set_registry_uri(mlflow_store)
    mlflow.set_experiment("outside-team")
    signature = ModelSignature(Schema([TensorSpec(np.dtype(np.float32), (-1, 3, SIZE, SIZE))]),
                               Schema([TensorSpec(np.dtype(np.float32), (-1, 3))]))
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(model, name="model", registered_model_name="outside-shapes", signature=signature,
                                        serialization_format="pickle", pip_requirements=["torch"],
                                        metadata={"classes": list(CLASSES), "mean": [0.5] * 3, "std": [0.5] * 3})
        labels_only = mlflow.pyfunc.log_model(name="labels-only", python_model=LabelsOnly(model), signature=ModelSignature(
            signature.inputs, Schema([TensorSpec(np.dtype(np.int64), (-1,))])), pip_requirements=["torch"],
            registered_model_name="outside-labels")
        embedder = mlflow.pyfunc.log_model(name="embedder", python_model=Embedder(model), signature=ModelSignature(
            signature.inputs, Schema([TensorSpec(np.dtype(np.float32), (-1, 64))])), pip_requirements=["torch"],
            registered_model_name="outside-embedder")
    assert labels_only.registered_model_version == 1 and embedder.registered_model_version == 1
    MlflowClient().set_registered_model_alias("outside-embedder", "prod", "1")
    return f"models:/outside-shapes/{info.registered_model_version}"


@pytest.fixture(scope="module")
def adopted(outside_model, mlflow_store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adopt")
    images, labels = shapes(300, seed=2)
    write_pngs(folder / "reference", images, labels)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "SCANFLOW_MODEL_NAME")}
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_store
    os.environ.pop("SCANFLOW_MODEL_NAME", None)
    yield folder
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_a_model_scanflow_did_not_train_is_adopted_then_detects_and_predicts(outside_model, adopted, mlflow_store, capsys, monkeypatch):
    # One test function: Prefect's log handlers keep the stream of the test that first ran a flow.
    refusals_write_nothing(outside_model, adopted, mlflow_store, capsys)
    client = MlflowClient(mlflow_store)
    source = client.get_model_version("outside-shapes", outside_model.rsplit("/", 1)[1])
    files_before = {f.path for f in client.list_artifacts(source.run_id)} if source.run_id else set()

    code = main(["adopt", outside_model, "--reference", str(adopted / "reference"), "--autoencoder-epochs", "8"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err[-3000:]
    assert "Supervised:  outside-shapes v1 @champion" in out and "Traceback" not in out
    assert "Evidence:    probabilities and hidden features" in out
    version = client.get_model_version_by_alias("outside-shapes", "champion")
    assert str(version.version) == str(source.version) and version.tags["scanflow.adopted"] == "pytorch"
    assert {f.path for f in client.list_artifacts(source.run_id)} == files_before  # the team's artifact is untouched

    monkeypatch.setenv("SCANFLOW_MODEL_NAME", "outside-shapes")
    images, labels = shapes(120, seed=3)
    np.save(adopted / "clean.npy", images)
    assert main(["detect", "--batch", str(adopted / "clean.npy"), "--json", "--no-report"]) == 0
    clean = json.loads(capsys.readouterr().out)
    assert clean["is_drift"] is False and clean["model_version"] == str(source.version)

    from scanflow.corruptions import corrupt

    np.save(adopted / "fog.npy", corrupt(torch.from_numpy(images), "fog", severity=4, seed=0).numpy())
    assert main(["detect", "--batch", str(adopted / "fog.npy"), "--json", "--no-report"]) == 0
    foggy = json.loads(capsys.readouterr().out)
    assert foggy["is_drift"] is True and len(foggy["critical_rows"]) > 0
    assert {row["predicted"] for row in foggy["critical_rows"]} <= set(CLASSES)

    # A folder of PNG files is a batch too, here RGBA: converted to the model's RGB (alpha dropped, pixels kept).
    (adopted / "png-batch").mkdir()
    for i, image in enumerate(images[:60]):
        Image.fromarray(image.transpose(1, 2, 0)).convert("RGBA").save(adopted / "png-batch" / f"p-{i:03d}.png")
    assert main(["detect", "--batch", str(adopted / "png-batch"), "--json", "--no-report"]) == 0
    from_pngs = json.loads(capsys.readouterr().out)
    assert from_pngs["n"] == 60 and from_pngs["is_drift"] is False

    assert main(["predict", "--batch", str(adopted / "clean.npy")]) == 0
    predicted = capsys.readouterr().out
    assert "Traceback" not in predicted
    run = client.search_runs([client.get_experiment_by_name(TrackingConfig.from_env().experiment_name).experiment_id],
                             "tags.`scanflow.kind` = 'predict'", order_by=["start_time DESC"], max_results=1)[0]
    rows = client.download_artifacts(run.info.run_id, "predictions.csv")
    predicted_labels = np.loadtxt(rows, delimiter=",", skiprows=1, usecols=1, dtype=int)
    assert float(np.mean(predicted_labels == labels)) > 0.9

    the_adopted_module_is_retrained_on_a_persons_labels(adopted, mlflow_store, labels, capsys)
    a_filter_is_put_in_front_of_the_adopted_module(adopted, mlflow_store, labels, capsys, monkeypatch)
    a_labels_only_pyfunc_is_adopted_under_another_name(adopted, mlflow_store, labels, capsys, monkeypatch)


def the_adopted_module_is_retrained_on_a_persons_labels(adopted, mlflow_store, labels, capsys) -> None:
    """A person labels 60 foggy samples: the team's own module is fine-tuned (replaying the adoption's labelled
    reference), logged in its own flavour as v2 with the same contract, judged, and loads with plain MLflow code. A
    reference changed since the adoption is refused before any run."""
    client = MlflowClient(mlflow_store)
    shown = list(range(60))
    # The clean holdout is the reference's held-out fifth (60 images): one image is 1.7 points, so the margin is wider.
    # --steps: a fraction of the default optimisation steps here and for the filters below; the gains still show.
    code = main(["improve", "--batch", str(adopted / "fog.npy"), "--shown", ",".join(map(str, shown)), "--action", "retrain",
                 "--labels", ",".join(str(int(labels[i])) for i in shown), "--margin", "0.05", "--steps", "150"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert "Traceback" not in captured.out + captured.err
    v1, v2 = (client.get_model_version("outside-shapes", v) for v in ("1", "2"))
    assert v2.tags["scanflow.kind"] == "retrain" and v2.tags["scanflow.parent_version"] == "1"
    assert v2.tags["scanflow.contract"] == v1.tags["scanflow.contract"] and v2.tags["scanflow.adopted"] == "pytorch"
    assert v2.tags["scanflow.verdict"] == "promoted" and str(client.get_model_version_by_alias("outside-shapes", "champion").version) == "2"
    retrained = mlflow.pytorch.load_model("models:/outside-shapes/2")  # the team's own flavour: no Scanflow class
    foggy = torch.from_numpy(np.load(adopted / "fog.npy")[60:]).float() / 255
    with torch.no_grad():
        after = float((retrained((foggy - 0.5) / 0.5).argmax(1).numpy() == labels[60:]).mean())
        before = float((mlflow.pytorch.load_model("models:/outside-shapes/1")((foggy - 0.5) / 0.5).argmax(1).numpy() == labels[60:]).mean())
    assert after > before, (before, after)  # on fog images nobody labelled
    outcome = json.loads(Path(client.download_artifacts(v2.tags["scanflow.run_id"], "outcome.json")).read_text())
    assert outcome["n_labels_used"] > 0 and outcome["candidate_scores"]["n_clean"] == 60  # judged on the reference's held-out fifth
    assert main(["detect", "--batch", str(adopted / "clean.npy"), "--json", "--no-report"]) == 0  # v2's refitted detector
    watched = json.loads(capsys.readouterr().out)
    assert watched["model_version"] == "2" and watched["is_drift"] is False

    first = sorted((adopted / "reference").rglob("*.png"))[0]
    original = first.read_bytes()
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(first)
    try:
        runs_before = len(client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000))
        code = main(["improve", "--batch", str(adopted / "fog.npy"), "--shown", "0,1", "--action", "retrain", "--labels", "0,1"])
        refused = "".join(capsys.readouterr())
        assert code == 2 and "Traceback" not in refused
        assert f"the reference {adopted / 'reference'} is not what the model was adopted with (300 images now, 300 then" in refused
        assert len(client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)) == runs_before
        assert len(client.search_model_versions("name='outside-shapes'")) == 2
    finally:
        first.write_bytes(original)


def fog_accuracy(uri: str, adopted, labels: np.ndarray) -> float:
    """Accuracy of a registered version, loaded as a plain pyfunc, on the fog images nobody labelled (rows 60:)."""
    model = mlflow.pyfunc.load_model(uri)
    x = (np.load(adopted / "fog.npy")[60:].astype(np.float32) / 255 - 0.5) / 0.5
    out = np.asarray(model.predict(x))
    return float(((out.argmax(1) if out.ndim == 2 else out) == labels[60:]).mean())


def a_filter_is_put_in_front_of_the_adopted_module(adopted, mlflow_store, labels, capsys, monkeypatch) -> None:
    """The team's module adopted again under another name, and a person decides to filter it: v2 is the unchanged
    module behind a denoiser, a drop-in for it (normalised floats in, logits out, loaded with plain MLflow code),
    judged on the person's labels and promoted; detect and predict then go through the filter."""
    client = MlflowClient(mlflow_store)
    code = main(["adopt", "models:/outside-shapes/1", "--reference", str(adopted / "reference"), "--name", "outside-filtered",
                 "--autoencoder-epochs", "8", "--embedding-layer", "head.2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert "Decisions:   retrain, filter, ignore\n" in captured.out
    assert "Evidence:    probabilities and the embedding of layer 'head.2'" in captured.out
    monkeypatch.setenv("SCANFLOW_MODEL_NAME", "outside-filtered")
    shown = list(range(60))
    code = main(["improve", "--batch", str(adopted / "fog.npy"), "--shown", ",".join(map(str, shown)), "--action", "filter",
                 "--labels", ",".join(str(int(labels[i])) for i in shown), "--margin", "0.05", "--steps", "300"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert "Traceback" not in captured.out + captured.err
    v2 = client.get_model_version("outside-filtered", "2")
    assert v2.tags["scanflow.kind"] == "filter" and v2.tags["scanflow.parent_version"] == "1"
    assert v2.tags["scanflow.contract"] == client.get_model_version("outside-filtered", "1").tags["scanflow.contract"]
    info = mlflow.models.get_model_info("models:/outside-filtered/2")
    assert info.signature.inputs.to_dict() == mlflow.models.get_model_info("models:/outside-shapes/1").signature.inputs.to_dict()
    assert info.metadata["classes"] == list(CLASSES)
    before, after = fog_accuracy("models:/outside-filtered/1", adopted, labels), fog_accuracy("models:/outside-filtered/2", adopted, labels)
    print(f"pytorch module, fog accuracy on rows nobody labelled: v1 {before:.3f}, v2 (filtered) {after:.3f}; "
          f"verdict {v2.tags['scanflow.verdict']}", file=sys.__stderr__)
    assert after > before + 0.1, (before, after)
    assert v2.tags["scanflow.verdict"] == "promoted"
    assert main(["detect", "--batch", str(adopted / "clean.npy"), "--json", "--no-report"]) == 0  # v2's detector watches cleaned images
    watched = json.loads(capsys.readouterr().out)
    assert watched["model_version"] == "2" and watched["is_drift"] is False
    assert main(["predict", "--batch", str(adopted / "fog.npy")]) == 0
    assert "fog: 120 labels by v2 (0 rejected)" in capsys.readouterr().out


def refusals_write_nothing(outside_model, adopted, mlflow_store, capsys) -> None:
    """Contradictions and a URI that names no registered version are refused (exit 2) before anything is written."""
    client = MlflowClient(mlflow_store)
    runs_before = len(client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000))
    versions_before = len(client.search_model_versions())
    (adopted / "wrong.txt").write_text("a\nb\n")
    code = main(["adopt", outside_model, "--reference", str(adopted / "reference"), "--classes", str(adopted / "wrong.txt")])
    out = capsys.readouterr()
    assert code == 2, out.err[-3000:]
    assert "the model declares classes ('square', 'cross', 'stripes') but --classes says ('a', 'b')" in out.err + out.out
    assert "Traceback" not in out.err + out.out
    code = main(["adopt", outside_model, "--reference", str(adopted / "reference"), "--input-size", "64x64"])
    out = capsys.readouterr()
    assert code == 2 and "the model declares input size (32, 32) but --input-size says (64, 64)" in out.err + out.out
    code = main(["adopt", outside_model, "--reference", str(adopted / "reference"), "--embedding-layer", "head.9"])
    out = capsys.readouterr()
    assert code == 2 and "the model has no layer 'head.9' for --embedding-layer; its layers: features, features.0," in out.err + out.out
    assert main(["adopt", "runs:/abc/model", "--reference", str(adopted / "reference")]) == 2
    assert "is not a registered model version: pass models:/NAME/VERSION" in "".join(capsys.readouterr())
    code = main(["adopt", outside_model, "--reference", str(adopted / "reference"), "--embedding-layer", "head.2",
                 "--embedding-model", "models:/outside-embedder/1"])
    out = capsys.readouterr()
    assert code == 2 and "--embedding-layer and --embedding-model both name the model's embedding: give one of them" in out.err + out.out
    # An embedding model that answers labels, not one vector per image, is refused when it is first run.
    code = main(["adopt", outside_model, "--reference", str(adopted / "reference"), "--embedding-model", "models:/outside-labels@nope"])
    out = capsys.readouterr()
    assert code == 2 and "models:/outside-labels@nope is not in the registry" in out.err + out.out
    code = main(["adopt", outside_model, "--reference", str(adopted / "reference"), "--embedding-model", "models:/outside-labels/1"])
    out = capsys.readouterr()
    assert code == 2 and ("the embedding model models:/outside-labels/1 returned shape [8] for 8 images, expected [8, D] of "
                          "finite numbers") in out.err + out.out, out.err[-2000:]
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)) == runs_before
    assert len(client.search_model_versions()) == versions_before


def a_labels_only_pyfunc_is_adopted_under_another_name(adopted, mlflow_store, labels, capfd, monkeypatch) -> None:
    """A pyfunc that answers labels only, without metadata: the flags give the contract, and its embedding comes
    from the team's embedding pyfunc (pinned, its files' sha256 recorded); the detector works without the model's
    confidence, and says so. It cannot be retrained, and a filter goes in front of it. A changed embedding model is
    refused by name, never loaded."""
    classes = adopted / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    code = main(["adopt", "models:/outside-labels/1", "--reference", str(adopted / "reference"), "--classes", str(classes),
                 "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--output", "labels", "--name", "team-labels",
                 "--autoencoder-epochs", "6", "--embedding-model", "models:/outside-embedder@prod"])
    captured = capfd.readouterr()
    out = captured.out
    assert code == 0, captured.err[-1500:]
    assert "Supervised:  team-labels v1 @champion (from models:/outside-labels/1)" in out
    assert ("Evidence:    labels only and the embedding of models:/outside-embedder/1: the detector works from pixels, "
            "the autoencoder, that embedding and the mix of predicted classes") in out
    contract = json.loads(MlflowClient(mlflow_store).get_model_version("team-labels", "1").tags["scanflow.contract"])
    assert contract["embedding_model"] == "models:/outside-embedder/1" and contract["embedding_model_sha256"]
    assert ("Decisions:   filter, ignore (a pyfunc model that answers labels has no module Scanflow can fine-tune: retrain "
            "it with your own code and adopt the new version)" in out)
    client = MlflowClient(mlflow_store)
    assert client.get_model_version("team-labels", "1").tags["scanflow.adopted_from"] == "models:/outside-labels/1"
    assert "scanflow.adopted" not in client.get_model_version("outside-labels", "1").tags  # the team's entry untouched
    monkeypatch.setenv("SCANFLOW_MODEL_NAME", "team-labels")
    assert main(["detect", "--batch", str(adopted / "fog.npy"), "--json", "--no-report"]) == 0
    assert json.loads(capfd.readouterr().out)["is_drift"] is True
    assert main(["detect", "--batch", str(adopted / "clean.npy"), "--json", "--no-report"]) == 0
    assert json.loads(capfd.readouterr().out)["is_drift"] is False
    assert main(["improve", "--batch", str(adopted / "fog.npy"), "--shown", "0,1", "--action", "retrain", "--labels", "0,1"]) == 2
    refused = "".join(capfd.readouterr())
    assert "team-labels v1 cannot retrain: a pyfunc model that answers labels has no module" in refused and "Traceback" not in refused
    shown = list(range(60))
    code = main(["improve", "--batch", str(adopted / "fog.npy"), "--shown", ",".join(map(str, shown)), "--action", "filter",
                 "--labels", ",".join(str(int(labels[i])) for i in shown), "--margin", "0.05", "--steps", "300"])
    captured = capfd.readouterr()
    assert code == 0, captured.err[-3000:]
    v2 = client.get_model_version("team-labels", "2")
    assert v2.tags["scanflow.kind"] == "filter" and v2.tags["scanflow.adopted"] == "pyfunc"
    plan = json.loads(Path(client.download_artifacts(v2.tags["scanflow.run_id"], "plan.json")).read_text())
    assert "it learns from pixel error alone (the model gives no gradients)" in plan["description"]
    assert float(client.get_run(v2.tags["scanflow.run_id"]).data.params["denoiser_consistency_weight"]) == 0.0
    before, after = fog_accuracy("models:/team-labels/1", adopted, labels), fog_accuracy("models:/team-labels/2", adopted, labels)
    print(f"labels-only pyfunc, fog accuracy on rows nobody labelled: v1 {before:.3f}, v2 (filtered) {after:.3f}; "
          f"verdict {v2.tags['scanflow.verdict']}", file=sys.__stderr__)
    assert after > before + 0.1, (before, after)
    # The filtered version keeps the contract, so its detector (refitted with the embedding) loads the embedder too.
    assert json.loads(v2.tags["scanflow.contract"])["embedding_model"] == "models:/outside-embedder/1"
    assert main(["detect", "--batch", str(adopted / "clean.npy"), "--json", "--no-report"]) == 0
    champion = client.get_model_version_by_alias("team-labels", "champion").version
    assert json.loads(capfd.readouterr().out)["model_version"] == str(champion)

    stored = _artifact_dir(client, "outside-embedder", "1") / "python_model.pkl"
    original = stored.read_bytes()
    stored.write_bytes(original + b"planted")
    registry._LOADED_VERSIONS.clear()  # as in a new process
    try:
        assert main(["detect", "--batch", str(adopted / "clean.npy"), "--no-report"]) == 2
        refused = "".join(capfd.readouterr())
        assert ("the embedding model models:/outside-embedder/1 differs from what was logged (changed: python_model.pkl)"
                in refused and "Traceback" not in refused), refused[-2000:]
    finally:
        stored.write_bytes(original)

"""Production streams for demos and experiments: clean batches, then the same source turning corrupted.

A stream is a folder of batch files (`<batch_id>.npy`, uint8 [N, C, H, W], what production would send) and, beside
them in `labels/`, the true labels of each batch, which only a simulated person (the oracle) and the final report
read. Images come from the dataset's test split, seeded, without repetition across batches.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scanflow.corruptions import CORRUPTIONS, corrupt
from scanflow.data import load_train_test
from scanflow.errors import ScanflowError, UnknownCorruptionError

MANIFEST = "stream.json"


@dataclass(frozen=True)
class StreamBatch:
    batch_id: str
    path: str
    corruption: str | None
    severity: int | None

    @property
    def labels_path(self) -> Path:
        return Path(self.path).parent / "labels" / f"{self.batch_id}.npy"

    def true_labels(self) -> np.ndarray:
        """The batch's true labels (int64 [N]), kept beside the stream for the oracle and the report."""
        return np.load(self.labels_path, allow_pickle=False)

    def accuracy(self, predicted: Sequence[int] | np.ndarray) -> float:
        """Share of `predicted` labels (int [N]; -1 = rejected, counted wrong) equal to the true ones."""
        return float(np.mean(np.asarray(predicted) == self.true_labels()))


def make_stream(
    directory: str | Path,
    dataset: str = "default",
    n_batches: int = 6,
    batch_size: int = 200,
    drift_at: int = 3,
    corruption: str = "shot_noise",
    severity: int = 3,
    seed: int = 0,
    data_dir: str | None = None,
) -> list[StreamBatch]:
    """Write `n_batches` batches of `batch_size` test images; batches from index `drift_at` on are corrupted."""
    if corruption not in CORRUPTIONS:
        raise UnknownCorruptionError(f"unknown corruption {corruption!r}; known: {', '.join(CORRUPTIONS)}")
    if n_batches < 1 or batch_size < 1 or not 0 <= drift_at <= n_batches:
        raise ScanflowError(f"a stream needs n_batches >= 1, batch_size >= 1 and 0 <= drift_at <= n_batches; got {n_batches}, {batch_size}, {drift_at}")
    _, test = load_train_test(dataset, data_dir=data_dir, seed=seed)
    if n_batches * batch_size > len(test):
        raise ScanflowError(
            f"{test.info.name} has {len(test)} test images, fewer than {n_batches} batches x {batch_size}: lower either"
        )
    folder = Path(directory)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(test))
    batches = []
    for k in range(n_batches):
        rows = order[k * batch_size:(k + 1) * batch_size]
        images, labels = test.images[rows], test.labels[rows]
        drifted = k >= drift_at
        if drifted:
            images = corrupt(images, corruption, severity, seed=seed + k)
        batch = StreamBatch(f"batch-{k:03d}", str(folder / f"batch-{k:03d}.npy"), corruption if drifted else None, severity if drifted else None)
        np.save(batch.path, images.numpy())
        np.save(batch.labels_path, labels.numpy())
        batches.append(batch)
    (folder / MANIFEST).write_text(json.dumps({"dataset": test.info.name, "batches": [asdict(b) for b in batches]}, indent=2))
    return batches


def read_stream(directory: str | Path) -> list[StreamBatch]:
    """The batches of a stream written by `make_stream`, in order. Raises ScanflowError when `directory` holds none."""
    manifest = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise ScanflowError(f"no stream folder {directory}: check the path, or ask for a demo stream (--demo)")
    if not manifest.is_file():
        raise ScanflowError(f"{directory} holds no stream ({MANIFEST} missing): write one with make_stream, or ask for a demo stream (--demo)")
    try:
        return [StreamBatch(**b) for b in json.loads(manifest.read_text())["batches"]]
    except (ValueError, KeyError, TypeError) as error:
        raise ScanflowError(f"{manifest} is not a stream manifest ({type(error).__name__}: {error}): write the stream "
                            "with make_stream, or move the file away and ask for a demo stream (--demo)") from None


def open_stream(directory: str | Path | None, demo: bool, dataset: str = "default", n_batches: int = 6, batch_size: int = 200,
                drift_at: int = 3, corruption: str = "shot_noise", seed: int = 0) -> list[StreamBatch]:
    """The stream to supervise: the one in `directory`; with `demo`, a demo stream written there (default ./stream)
    unless one is there already. Never writes over files that are not a stream: a folder with files but no
    manifest is refused, so a user's batches are never replaced. Raises ScanflowError naming the fix."""
    if not demo:
        if directory is None:
            raise ScanflowError("no stream to supervise: give --stream-dir DIR (a folder with stream.json) or --demo for a demo stream")
        return read_stream(directory)
    folder = Path(directory or "stream")
    if (folder / MANIFEST).is_file():
        return read_stream(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ScanflowError(f"{folder} holds files but no stream ({MANIFEST} missing): a demo stream is never written over "
                            "them; give an empty or new folder with --stream-dir")
    return make_stream(folder, dataset, n_batches, batch_size, drift_at, corruption, seed=seed)

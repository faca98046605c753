"""Production streams for demos and experiments: clean batches, then the same source turning corrupted.

A stream is a folder of batch files (`<batch_id>.npy`, uint8 [N, C, H, W], what production would send) and, beside
them in `labels/`, the true labels of each batch, which only a simulated person (the oracle) and the final report
read. Images come from the dataset's test split, seeded, without repetition across batches.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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

    def accuracy(self, predicted: Sequence[int] | np.ndarray) -> float | None:
        """Share of `predicted` labels (int [N]; -1 = rejected, counted wrong) equal to the true ones; None for a
        batch without true labels (image files without class folders)."""
        if not self.labels_path.is_file():
            return None
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


# ------------------------------------------------------------------------------------------ streams of image files
#: What an image stream's state folder records: batch id -> the files (relative to the stream root) it was made of.
UNITS = "units.json"
_BATCH_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def stream_state_dir(root: str, cache_dir: str | Path) -> Path:
    """Where Scanflow keeps what it read from the image stream `root` (a folder or s3:// prefix): the batches in the
    model's contract, their labels when the files carry them, `units.json` and the supervise progress. Never inside
    the user's folder."""
    name = hashlib.sha256(str(root).rstrip("/").encode()).hexdigest()[:16]
    return Path(cache_dir) / "streams" / name


def _batch_id(key: str) -> str:
    """A batch id (letters, digits, '.', '_', '-'; not starting with a dot) from a unit's folder or first file."""
    text = _BATCH_ID_CHARS.sub("-", Path(key).stem if "." in key else key).lstrip(".") or "batch"
    return text[:128]


def image_stream(root: str, info: Any, state_dir: str | Path, files_per_batch: int | None = None, store: Any = None,
                 on_bad: str = "refuse") -> tuple[list[StreamBatch], list[str]]:
    """The batches of the image stream `root`: each sub-folder (or, with `files_per_batch`, each group of that many
    files directly under it) is a batch, read into the model's contract `info` and kept in `state_dir` as
    `<batch_id>.npy` (labels in `labels/` when class sub-folders carry them). Batches made before are returned first,
    in the order they were made, then the new ones; a file already in a batch is never in another, so a restart
    neither skips nor repeats one. Returns (batches, what was converted or skipped, one line per batch)."""
    from scanflow.images import ImageContract, list_batch_units, read_batch_unit

    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    units_file = state / UNITS
    made: dict[str, list[str]] = json.loads(units_file.read_text()) if units_file.is_file() else {}
    done = {name for files in made.values() for name in files}
    notes: list[str] = []
    for unit in list_batch_units(root, files_per_batch=files_per_batch, processed=done, store=store):
        batch_id = _batch_id(unit.key)
        while batch_id in made:
            batch_id = f"{batch_id}-{len(made)}"
        images = read_batch_unit(unit, ImageContract.of(info), classes=info.classes, on_bad=on_bad, store=store)
        np.save(state / f"{batch_id}.npy", images.images.numpy())
        if images.labels is not None:
            (state / "labels").mkdir(exist_ok=True)
            np.save(state / "labels" / f"{batch_id}.npy", images.labels.numpy())
        notes += [f"batch {batch_id} ({len(images)} files from {unit.key}): {line}" for line in images.describe()]
        made[batch_id] = list(unit.files)
        temporary = units_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(made, indent=1))
        temporary.replace(units_file)  # recorded only once its batch file is complete
    batches = [StreamBatch(batch_id, str(state / f"{batch_id}.npy"), None, None) for batch_id in made]
    return batches, notes

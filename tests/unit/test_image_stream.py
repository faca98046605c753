"""Streams of image files: each new sub-folder (or group of files) becomes one batch in the model's contract, kept
outside the user's folder; a later read takes only what is new, and never a file twice."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from scanflow.data import DatasetInfo
from scanflow.errors import InvalidBatchError
from scanflow.stream import image_stream, stream_state_dir

INFO = DatasetInfo("tiny", ("a", "b"), 1, 8, 8, "test")


def _pngs(folder, n, start=0, size=8, label=None):
    target = folder / label if label else folder
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(target / f"f{i:03d}.png")


def _digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sub_folders_are_batches_read_once_and_the_users_folder_is_never_written(tmp_path):
    root, state = tmp_path / "photos", stream_state_dir(str(tmp_path / "photos"), tmp_path / "cache")
    _pngs(root / "day-1", 5, label="a")
    _pngs(root / "day-1", 3, start=10, label="b")
    _pngs(root / "day-2", 4, size=16)  # flat, another size: resized to the contract and said so
    before = _digest(root)
    batches, notes = image_stream(str(root), INFO, state)
    assert [b.batch_id for b in batches] == ["day-1", "day-2"]
    assert np.load(batches[0].path).shape == (8, 1, 8, 8) and sorted(batches[0].true_labels().tolist()) == [0] * 5 + [1] * 3
    assert np.load(batches[1].path).shape == (4, 1, 8, 8) and not batches[1].labels_path.exists()
    assert notes == ["batch day-2 (4 files from day-2): 4 of 4 images resized from 16x16 to 8x8"]
    assert _digest(root) == before and not str(state).startswith(str(root))

    again, _ = image_stream(str(root), INFO, state)
    assert again == batches  # nothing new: the same batches, none made twice
    _pngs(root / "day-3", 2)
    _pngs(root / "day-1", 1, start=50, label="a")  # a late file in a folder already read: a batch of its own
    later, _ = image_stream(str(root), INFO, state)
    assert [b.batch_id for b in later][:2] == ["day-1", "day-2"] and len(later) == 4
    assert sorted(len(np.load(b.path)) for b in later[2:]) == [1, 2]


def test_groups_of_files_wait_for_a_full_group_and_bad_files_are_named(tmp_path):
    root, state = tmp_path / "flat", tmp_path / "state"
    _pngs(root, 5)
    batches, _ = image_stream(str(root), INFO, state, files_per_batch=2)
    assert [len(np.load(b.path)) for b in batches] == [2, 2]  # the fifth waits for a sixth
    _pngs(root, 1, start=5)
    assert [len(np.load(b.path)) for b in image_stream(str(root), INFO, state, files_per_batch=2)[0]] == [2, 2, 2]
    (root / "f900.png").write_bytes(b"not a png")
    (root / "f901.png").write_bytes(b"")
    with pytest.raises(InvalidBatchError, match="f900.png"):
        image_stream(str(root), INFO, state, files_per_batch=2)
    assert len(json.loads((state / "units.json").read_text())) == 3  # a refused batch is not recorded
    (root / "f900.png").unlink()
    (root / "f901.png").unlink()
    assert len(image_stream(str(root), INFO, state, files_per_batch=2)[0]) == 3

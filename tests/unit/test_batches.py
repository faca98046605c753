"""Production batch files and the calibration hold-out: the edges where data enters the detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scanflow.data import hold_out_calibration, load_batch_file
from scanflow.errors import InvalidBatchError


def test_calibration_hold_out_is_stratified_disjoint_and_capped(digits):
    train, _ = digits
    fit, calibration = hold_out_calibration(train, seed=0)
    assert len(fit) + len(calibration) == len(train) and len(calibration) == len(train) // 5
    assert calibration.split == "train[calibration]" and fit.split == "train[fit]"
    assert set(torch.unique(calibration.labels).tolist()) == set(range(10))
    rows = lambda data: {bytes(image.numpy().tobytes()) + bytes([int(label)]) for image, label in zip(data.images, data.labels)}
    assert not rows(fit) & rows(calibration)
    with pytest.raises(ValueError, match="too few to hold out a calibration set"):
        hold_out_calibration(train.subset(range(50)))


def test_batch_file_round_trip_adds_the_channel(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "b.npy", images)
    batch = load_batch_file(tmp_path / "b.npy")
    assert batch.shape == (6, 1, 8, 8) and batch.dtype == torch.uint8
    assert np.array_equal(batch[:, 0].numpy(), images)


def test_bad_batch_files_get_named_errors(tmp_path):
    with pytest.raises(InvalidBatchError, match="does not exist: pass a .npy file written with numpy.save"):
        load_batch_file(tmp_path / "missing.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidBatchError, match=r"is not a plain numpy array \(it holds Python objects, which are never loaded\)"):
        load_batch_file(tmp_path / "objects.npy")
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(InvalidBatchError, match=r"text.npy is not a .npy file \(no numpy header\): save the images with numpy.save"):
        load_batch_file(tmp_path / "text.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(InvalidBatchError, match=r"empty.npy is not a .npy file \(no numpy header\)"):
        load_batch_file(tmp_path / "empty.npy")
    with pytest.raises(InvalidBatchError, match=r"is a directory: pass one .npy file"):
        load_batch_file(tmp_path)
    np.savez(tmp_path / "archive.npz", a=np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.raises(InvalidBatchError, match="archive.npz is a .npz archive, not one array: save the images with numpy.save, not savez"):
        load_batch_file(tmp_path / "archive.npz")
    np.save(tmp_path / "floats.npy", np.zeros((2, 8, 8), dtype=np.float32))
    with pytest.raises(InvalidBatchError, match="expected uint8 pixel values 0..255, got float32"):
        load_batch_file(tmp_path / "floats.npy")

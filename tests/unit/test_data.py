"""Tests of scanflow.data against the real files on this machine and small fixtures.

Real data: Fashion-MNIST from the Debian package and the MNIST test set under
``$SCANFLOW_TEST_MNIST_DIR`` (default ``<repo>/../shared/data/mnist``). When either is
absent its tests are skipped, except on CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from scanflow import data
from scanflow.data import (
    DATASET_NAMES,
    DEBIAN_FASHION_MNIST_DIR,
    TEST_ONLY_SPLIT,
    DatasetInfo,
    LabeledImages,
    canonical_dataset_name,
    dataset_availability,
    default_dataset_name,
    load_dataset,
    load_train_test,
    read_idx,
    stratified_split,
    validate_batch,
)
from scanflow.errors import (
    DatasetNotFoundError,
    InvalidBatchError,
    ScanflowError,
    UnknownDatasetError,
)

REPO = Path(__file__).resolve().parents[2]
MNIST_DIR = Path(os.environ.get("SCANFLOW_TEST_MNIST_DIR", REPO.parent / "shared" / "data" / "mnist"))
MNIST_TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
FASHION_FILES = tuple(
    f"{prefix}-{kind}-ubyte.gz" for prefix in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")
)


def _require(directory: Path, files: tuple[str, ...], what: str) -> Path:
    """Skip (or, on CI, fail) when real data files are missing."""
    missing = [name for name in files if not (directory / name).is_file()]
    if missing:
        reason = f"{what} not found: {directory} lacks {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return directory


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No data dir, an empty cache and downloads off, so tests never see this user's setup."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.delenv("SCANFLOW_DATA_DIR", raising=False)
    monkeypatch.setenv("SCANFLOW_CACHE_DIR", str(cache))
    monkeypatch.setenv("SCANFLOW_ALLOW_DOWNLOAD", "0")
    return cache


@pytest.fixture
def mnist_dir() -> Path:
    return _require(MNIST_DIR, MNIST_TEST_FILES, "MNIST test set")


@pytest.fixture
def fashion_dir() -> Path:
    return _require(DEBIAN_FASHION_MNIST_DIR, FASHION_FILES, "Fashion-MNIST (apt-get install dataset-fashion-mnist)")


def _write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> Path:
    """Write ``array`` in IDX format (gzipped when the name ends in .gz)."""
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + big_endian.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def _link_mnist(source: Path, target: Path) -> Path:
    """Expose the real MNIST files under ``target`` by symlink (never copied)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in MNIST_TEST_FILES:
        (target / name).symlink_to(source / name)
    return target


# ---------------------------------------------------------------- real data


def test_fashion_mnist_loads_from_debian_package(fashion_dir: Path) -> None:
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")

    assert train.images.shape == (60000, 1, 28, 28)
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert (train.split, test.split) == ("train", "test")
    assert train.info.n_classes == 10
    assert train.info.classes[0] == "T-shirt/top" and train.info.classes[9] == "Ankle boot"
    assert train.info.image_shape == (1, 28, 28)
    assert train.info.source == str(fashion_dir)
    assert sorted(train.labels.unique().tolist()) == list(range(10))
    assert 0 <= int(test.labels.min()) and int(test.labels.max()) <= 9


def test_mnist_test_split_via_data_dir(mnist_dir: Path) -> None:
    test = load_dataset("mnist", "test", data_dir=mnist_dir)

    assert test.images.shape == (10000, 1, 28, 28)
    assert test.images.dtype == torch.uint8
    assert test.info.classes == tuple("0123456789")
    assert test.info.source == str(mnist_dir.resolve())
    assert int(test.images.max()) == 255


@pytest.mark.parametrize("layout", [".", "mnist", "MNIST/raw"])
def test_mnist_via_env_var_in_each_layout(
    layout: str, mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _link_mnist(mnist_dir, tmp_path / layout)
    monkeypatch.setenv("SCANFLOW_DATA_DIR", str(tmp_path))

    test = load_dataset("MNIST", "test")

    assert len(test) == 10000
    assert test.info.source == str((tmp_path / layout).resolve())


def test_loaded_tensors_are_private_copies(mnist_dir: Path) -> None:
    first = load_dataset("mnist", "test", data_dir=mnist_dir)
    original = first.images[0].clone()
    first.images.zero_()
    first.labels.fill_(3)

    again = load_dataset("mnist", "test", data_dir=mnist_dir)

    assert torch.equal(again.images[0], original)
    assert int(again.labels.max()) == 9


def test_load_train_test_derives_splits_from_mnist_test_only(mnist_dir: Path) -> None:
    full = load_dataset("mnist", "test", data_dir=mnist_dir)
    train, test = load_train_test("mnist", data_dir=mnist_dir, seed=0)

    assert (len(train), len(test)) == (TEST_ONLY_SPLIT["train"], 5000)
    assert TEST_ONLY_SPLIT["calibration"] + TEST_ONLY_SPLIT["pool"] == len(test)
    assert train.split == "test[perm(seed=0)][0:5000]"
    assert test.split == "test[perm(seed=0)][5000:10000]"
    order = np.random.default_rng(0).permutation(10000)
    assert torch.equal(train.images, full.images[torch.from_numpy(order[:5000])])
    assert torch.equal(test.labels, full.labels[torch.from_numpy(order[5000:])])
    assert set(order[:5000]).isdisjoint(order[5000:])

    train_again, _ = load_train_test("mnist", data_dir=mnist_dir, seed=0)
    other_seed, _ = load_train_test("mnist", data_dir=mnist_dir, seed=1)
    assert torch.equal(train.images, train_again.images)
    assert not torch.equal(train.labels, other_seed.labels)


def test_load_train_test_uses_official_fashion_splits(fashion_dir: Path) -> None:
    train, test = load_train_test("fashion_mnist")

    assert (len(train), len(test)) == (60000, 10000)
    assert (train.split, test.split) == ("train", "test")


def test_default_dataset_is_fashion_mnist_here(fashion_dir: Path) -> None:
    assert default_dataset_name() == "fashion-mnist"
    assert load_dataset("default", "test").info.name == "fashion-mnist"


def test_default_falls_back_to_digits_without_fashion_mnist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data.datasets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")

    assert default_dataset_name() == "digits"
    assert load_dataset("Default", "train").info.name == "digits"


# ---------------------------------------------------------------- digits


def test_digits_split_is_stratified_80_20_and_rescaled() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    train_idx, test_idx = stratified_split(bunch.target, 0.2, 0)

    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert len(train) + len(test) == 1797
    assert len(test) == len(test_idx) and 0.19 < len(test) / 1797 < 0.21
    assert np.intersect1d(train_idx, test_idx).size == 0
    assert np.array_equal(np.union1d(train_idx, test_idx), np.arange(1797))
    expected = np.rint(bunch.images[test_idx] * 255 / 16).astype(np.uint8)
    assert np.array_equal(test.images[:, 0].numpy(), expected)
    assert int(train.images.min()) == 0 and int(train.images.max()) == 255
    per_class = np.bincount(test.labels.numpy(), minlength=10) / np.bincount(bunch.target, minlength=10)
    assert np.all(np.abs(per_class - 0.2) < 0.01)
    assert train.info.source == "scikit-learn (bundled)"
    assert torch.equal(load_dataset("digits", "test").labels, test.labels)


# ---------------------------------------------------------------- CIFAR-10 fixture

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _write_cifar(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Write 5 train batches of 4 images and a test batch of 3 in the python-pickle format."""
    rng = np.random.default_rng(7)
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    data = rng.integers(0, 256, size=(23, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=23).tolist()
    for channel, value in enumerate((10, 20, 200)):
        data[5, channel * 1024 + 5 * 32 + 7] = value
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for number, name in enumerate(names):
        rows = slice(4 * number, 4 * number + (4 if number < 5 else 3))
        batch = {b"batch_label": name.encode(), b"labels": labels[rows], b"data": data[rows]}
        (directory / name).write_bytes(pickle.dumps(batch))
    meta = {b"label_names": [name.encode() for name in CIFAR_CLASSES], b"num_vis": 3072}
    (directory / "batches.meta").write_bytes(pickle.dumps(meta))
    return data, np.array(labels)


@pytest.mark.parametrize("point_at", ["root", "batches"])
def test_cifar10_reads_python_pickle_batches(point_at: str, tmp_path: Path) -> None:
    pixels, labels = _write_cifar(tmp_path)
    data_dir = tmp_path if point_at == "root" else tmp_path / "cifar-10-batches-py"

    train = load_dataset("CIFAR-10", "train", data_dir=data_dir)
    test = load_dataset("cifar10", "test", data_dir=data_dir)

    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    assert train.images.dtype == torch.uint8
    assert train.images[5, :, 5, 7].tolist() == [10, 20, 200]
    assert np.array_equal(train.images.numpy(), pixels[:20].reshape(20, 3, 32, 32))
    assert train.labels.tolist() == labels[:20].tolist()
    assert test.labels.tolist() == labels[20:].tolist()
    assert train.info.classes == CIFAR_CLASSES
    assert train.info.image_shape == (3, 32, 32)


def test_cifar10_batch_with_code_is_refused(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    planted = tmp_path / "cifar-10-batches-py" / "test_batch"
    planted.write_bytes(pickle.dumps({b"data": os.system, b"labels": []}))

    with pytest.raises(ScanflowError, match=r"test_batch is not a CIFAR-10 python batch .*refusing"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


# ---------------------------------------------------------------- IDX parser


@pytest.mark.parametrize("filename", ["tiny-idx3-ubyte", "tiny-idx3-ubyte.gz"])
def test_read_idx_plain_and_gzipped(filename: str, tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    loaded = read_idx(_write_idx(tmp_path / filename, array))

    assert loaded.dtype == np.uint8 and loaded.shape == (2, 3, 4)
    assert np.array_equal(loaded, array)
    loaded[0, 0, 0] = 99
    assert read_idx(tmp_path / filename)[0, 0, 0] == 0


def test_read_idx_big_endian_int32(tmp_path: Path) -> None:
    array = np.array([1, -2, 70000], dtype=np.int32)
    assert read_idx(_write_idx(tmp_path / "ints-idx1", array, code=0x0C)).tolist() == [1, -2, 70000]


def test_read_idx_rejects_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "corrupt-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x03" + bytes(20))
    with pytest.raises(ScanflowError, match=r"corrupt-idx3-ubyte is not a valid IDX file: magic bytes 12 34 08 03"):
        read_idx(path)


def test_read_idx_rejects_truncated_data(tmp_path: Path) -> None:
    path = _write_idx(tmp_path / "short-idx3-ubyte", np.zeros((2, 3, 4), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ScanflowError, match=r"short-idx3-ubyte is truncated or corrupt: .*shape \[2, 3, 4\]"):
        read_idx(path)


def test_read_idx_rejects_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "broken-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(np.arange(5000, dtype=np.uint16).tobytes())[:200])
    with pytest.raises(ScanflowError, match=r"broken-idx1-ubyte.gz is a corrupt gzip file"):
        read_idx(path)


def test_idx_dataset_with_mismatched_counts_is_refused(tmp_path: Path) -> None:
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), dtype=np.uint8))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, dtype=np.uint8))
    with pytest.raises(ScanflowError, match=r"has 3 images but .*t10k-labels-idx1-ubyte has 2 labels"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_small_uncompressed_idx_dataset_loads(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    (tmp_path / "mnist").mkdir()
    _write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte", images)
    _write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", np.array([0, 9, 3, 3], dtype=np.uint8))

    loaded = load_dataset("mnist", "test", data_dir=tmp_path)

    assert np.array_equal(loaded.images[:, 0].numpy(), images)
    assert loaded.labels.tolist() == [0, 9, 3, 3]


# ---------------------------------------------------------------- errors


def test_missing_data_error_lists_every_place_and_the_fix(tmp_path: Path, isolated_env: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("mnist", "train", data_dir=tmp_path)

    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    assert message.startswith("mnist split 'train' was not found. Looked in:")
    for place in (tmp_path, tmp_path / "mnist", tmp_path / "MNIST" / "raw", isolated_env / "MNIST" / "raw"):
        assert f"  - {place} (" in message
    assert "train-images-idx3-ubyte.gz" in message
    assert "set SCANFLOW_DATA_DIR to a directory holding the MNIST IDX .gz files" in message
    assert "--allow-download / SCANFLOW_ALLOW_DOWNLOAD=1" in message


class _FakeTorchvisionMNIST:
    """Stands in for torchvision.datasets.MNIST: 'downloads' a tiny test split into root/MNIST/raw."""

    calls: list[tuple[str, bool]] = []

    def __init__(self, root: str, train: bool, download: bool) -> None:
        _FakeTorchvisionMNIST.calls.append((root, train))
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        _write_idx(raw / "t10k-images-idx3-ubyte.gz", np.full((2, 28, 28), 7, dtype=np.uint8))
        _write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.array([1, 2], dtype=np.uint8))


def test_download_goes_to_cache_only_when_allowed(
    tmp_path: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _FakeTorchvisionMNIST.calls = []
    monkeypatch.setattr(data.datasets, "_torchvision_dataset_class", lambda name: _FakeTorchvisionMNIST)
    with pytest.raises(DatasetNotFoundError):
        load_dataset("mnist", "test", data_dir=tmp_path)
    assert _FakeTorchvisionMNIST.calls == []

    monkeypatch.setenv("SCANFLOW_ALLOW_DOWNLOAD", "yes")
    downloaded = load_dataset("mnist", "test", data_dir=tmp_path)

    assert _FakeTorchvisionMNIST.calls == [(str(isolated_env), False)]
    assert downloaded.labels.tolist() == [1, 2]
    assert downloaded.info.source == str((isolated_env / "MNIST" / "raw").resolve())
    assert len(load_dataset("mnist", "test", data_dir=tmp_path, allow_download=False)) == 2


def test_explicit_no_download_overrides_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCANFLOW_ALLOW_DOWNLOAD", "1")
    with pytest.raises(DatasetNotFoundError, match=r"cifar10 split 'test' was not found"):
        load_dataset("cifar10", "test", data_dir=tmp_path, allow_download=False)


def test_missing_fashion_mnist_suggests_the_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data.datasets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("fashion-mnist", "test")
    message = str(caught.value)
    assert f"  - {tmp_path / 'absent'} (Debian package dataset-fashion-mnist, does not exist)" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_missing_fashion_rgb_names_itself_and_the_fashion_mnist_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data.datasets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DatasetNotFoundError) as caught:
        load_train_test("fashion-rgb")
    message = str(caught.value)
    assert message.startswith("fashion-rgb split 'test' was not found. Looked in:")
    assert f"  - {tmp_path / 'absent'} (Debian package dataset-fashion-mnist, does not exist)" in message
    assert "Expected files: t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz" in message
    assert "To get it: rendered from fashion-mnist, nothing else to get: apt-get install dataset-fashion-mnist" in message


def test_missing_mnist_train_points_at_load_train_test(mnist_dir: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"Only the 'test' split is present .*load_train_test\('mnist'\)"):
        load_dataset("mnist", "train", data_dir=mnist_dir)


def test_unknown_dataset_name() -> None:
    with pytest.raises(
        UnknownDatasetError,
        match=r"^unknown dataset 'imagenet'; known datasets: fashion-mnist, mnist, digits, cifar10, fashion-rgb, fashion-rgb-64 \(or 'default'",
    ):
        load_dataset("imagenet")


def test_bad_split() -> None:
    with pytest.raises(ValueError, match=r"^split must be 'train' or 'test', got 'validation'$"):
        load_dataset("digits", "validation")


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [("fashion_mnist", "fashion-mnist"), ("FashionMNIST", "fashion-mnist"), ("MNIST", "mnist"),
     ("cifar-10", "cifar10"), ("Digits", "digits"), ("Fashion_RGB", "fashion-rgb"), ("fashionrgb", "fashion-rgb"), ("Fashion-RGB-64", "fashion-rgb-64")],
)
def test_names_are_case_and_separator_insensitive(typed: str, canonical: str) -> None:
    assert canonical_dataset_name(typed) == canonical


# ---------------------------------------------------------------- availability


def test_dataset_availability(fashion_dir: Path, mnist_dir: Path, tmp_path: Path) -> None:
    plain = {entry.name: entry for entry in dataset_availability()}
    assert tuple(plain) == DATASET_NAMES
    assert plain["fashion-mnist"].available and plain["fashion-mnist"].splits == ("train", "test")
    assert plain["fashion-mnist"].location == str(fashion_dir)
    assert not plain["mnist"].available and plain["mnist"].location is None
    assert plain["digits"].available and plain["digits"].location == "scikit-learn (bundled)"
    assert not plain["cifar10"].available
    assert "cifar-10-batches-py" in plain["cifar10"].how_to_get
    assert plain["fashion-rgb"].available and plain["fashion-rgb"].location == str(fashion_dir)
    assert plain["fashion-rgb"].how_to_get.startswith("rendered from fashion-mnist, nothing else to get: apt-get install")

    with_mnist = {entry.name: entry for entry in dataset_availability(mnist_dir)}
    assert with_mnist["mnist"].available and with_mnist["mnist"].splits == ("test",)

    _write_cifar(tmp_path)
    with_cifar = {entry.name: entry for entry in dataset_availability(tmp_path)}
    assert with_cifar["cifar10"].available and with_cifar["cifar10"].splits == ("train", "test")


# ---------------------------------------------------------------- LabeledImages


def test_subset_accepts_lists_arrays_and_tensors() -> None:
    digits = load_dataset("digits", "test")
    for indices in ([0, 2, 4], np.array([0, 2, 4]), torch.tensor([0, 2, 4])):
        picked = digits.subset(indices)
        assert torch.equal(picked.images, digits.images[[0, 2, 4]])
        assert picked.split == f"test[3 of {len(digits)}]"
    assert digits.subset([1], split="one").split == "one"


def test_labeled_images_rejects_float_pixels() -> None:
    info = DatasetInfo("digits", tuple("0123456789"), 1, 8, 8, "x")
    with pytest.raises(ScanflowError, match=r"images must be uint8 \[N, C, H, W\]"):
        LabeledImages(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.int64), info, "train")


# ---------------------------------------------------------------- validate_batch

FASHION_INFO = DatasetInfo("fashion-mnist", ("x",) * 10, 1, 28, 28, "test")


def test_validate_batch_adds_channel_axis() -> None:
    batch = validate_batch(np.zeros((3, 28, 28), dtype=np.uint8), FASHION_INFO)
    assert batch.shape == (3, 1, 28, 28) and batch.dtype == torch.uint8
    same = torch.ones(2, 1, 28, 28, dtype=torch.uint8)
    assert validate_batch(same, FASHION_INFO).data_ptr() == same.data_ptr()


def test_validate_batch_accepts_read_only_arrays() -> None:
    array = np.zeros((1, 1, 8, 8), dtype=np.uint8)
    array.flags.writeable = False
    assert validate_batch(array).shape == (1, 1, 8, 8)


@pytest.mark.parametrize(
    ("batch", "fragment"),
    [
        (np.zeros((0, 1, 28, 28), dtype=np.uint8), r"^the batch is empty \(N = 0, shape \[0, 1, 28, 28\]\)"),
        (np.zeros((28, 28), dtype=np.uint8), r"got shape \[28, 28\] \(rank 2\); for a single image add a batch axis"),
        (
            np.zeros((2, 1, 28, 28), dtype=np.float32),
            r"^expected uint8 pixel values 0\.\.255, got float32; convert with \(x \* 255\)\.round\(\)"
            r"\.astype\('uint8'\) if your values are in \[0, 1\]$",
        ),
        (torch.zeros(2, 1, 28, 28), r"got float32; convert with \(x \* 255\)\.round\(\)\.to\(torch\.uint8\)"),
        (np.zeros((2, 1, 28, 28), dtype=np.int64), r"got int64; convert with x\.astype\('uint8'\) once values"),
        (
            np.full((2, 1, 28, 28), np.nan, dtype=np.float32),
            r"^the batch contains NaN pixel values \(2 of 2 images\)",
        ),
        (
            np.zeros((2, 1, 32, 32), dtype=np.uint8),
            r"^this model expects images of shape \[N, 1, 28, 28\] \(fashion-mnist\), got \[N, 1, 32, 32\]",
        ),
        (np.zeros((2, 28, 28, 1), dtype=np.uint8), r"looks channels-last, transpose it"),
        ([[0, 1]], r"^expected a numpy array or torch tensor of images, got list"),
    ],
)
def test_validate_batch_rejects_bad_input(batch: object, fragment: str) -> None:
    with pytest.raises(InvalidBatchError, match=fragment):
        validate_batch(batch, FASHION_INFO)  # type: ignore[arg-type]


# ---------------------------------------------------------------- fashion-rgb

#: sha256 of the first five fashion-rgb test images' bytes, as `render_rgb` first made them.
FASHION_RGB_TEST_HEAD_SHA256 = "e2f72b4269638d2f83d4d13569805d4ee85264cebedd2ef87c70a052f2a082f4"


@pytest.fixture(scope="module")
def fashion_rgb() -> tuple[LabeledImages, LabeledImages]:
    _require(DEBIAN_FASHION_MNIST_DIR, FASHION_FILES, "Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    return load_train_test("fashion-rgb")


def test_fashion_rgb_is_fashion_mnist_at_32x32_rgb_with_the_same_labels(fashion_rgb, fashion_dir: Path) -> None:
    train, test = fashion_rgb
    grey_train, grey_test = load_train_test("fashion-mnist")
    assert train.images.shape == (60000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and (train.split, test.split) == ("train", "test")
    assert torch.equal(train.labels, grey_train.labels) and torch.equal(test.labels, grey_test.labels)
    assert train.info == DatasetInfo("fashion-rgb", grey_train.info.classes, 3, 32, 32, str(fashion_dir))
    assert data.dataset_info("fashion-rgb").image_shape == (3, 32, 32)


def test_fashion_rgb_is_the_same_bytes_on_every_load(fashion_rgb) -> None:
    import hashlib

    _, test = fashion_rgb
    again = load_dataset("fashion-rgb", "test")
    assert torch.equal(again.images, test.images) and again.images.data_ptr() != test.images.data_ptr()
    assert hashlib.sha256(test.images[:5].numpy().tobytes()).hexdigest() == FASHION_RGB_TEST_HEAD_SHA256


def test_fashion_rgb_pads_the_garment_and_blends_two_colours_per_image(fashion_rgb) -> None:
    """The 2-pixel border is the background colour; black pixels of the original are that colour, white ones the
    foreground colour; the two differ in luma by at least FASHION_RGB_MIN_CONTRAST."""
    _, test = fashion_rgb
    grey = load_dataset("fashion-mnist", "test").images[:200, 0].long()
    rgb = test.images[:200].long()
    background = rgb[:, :, 0, 0]
    assert torch.equal(rgb[:, :, :2, :], background[:, :, None, None].expand(-1, -1, 2, 32))
    assert torch.equal(rgb[:, :, :, -2:], background[:, :, None, None].expand(-1, -1, 32, 2))
    inner = rgb[:, :, 2:-2, 2:-2]
    for i in range(len(grey)):
        assert torch.equal(inner[i][:, grey[i] == 0], background[i][:, None].expand(-1, int((grey[i] == 0).sum())))
    luma = torch.tensor([299, 587, 114])
    with_white = [i for i in range(len(grey)) if bool((grey[i] == 255).any())]
    assert len(with_white) > 50
    for i in with_white:
        foreground = inner[i][:, grey[i] == 255]
        assert bool((foreground == foreground[:, :1]).all()), "white garment pixels are the one foreground colour"
        assert abs(int((foreground[:, 0] - background[i]) @ luma)) >= data.FASHION_RGB_MIN_CONTRAST * 1000
    contrast = data._colour_pairs("test", 0, 10000, data.FASHION_RGB_SEED).astype(np.int64) @ luma.numpy()
    assert np.abs(contrast[:, 0] - contrast[:, 1]).min() >= data.FASHION_RGB_MIN_CONTRAST * 1000


def test_fashion_rgb_colours_tell_nothing_about_the_class(fashion_rgb) -> None:
    """Colours are drawn per image, independently of its label: every class sees the same spread of background
    luma (1,000 test images a class: a class mean within 8 of the overall one is 5 standard errors)."""
    _, test = fashion_rgb
    luma = (test.images[:, :, 0, 0].double() @ torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64))
    assert len(torch.unique(test.images[:, :, 0, 0], dim=0)) > 9900
    for label in range(10):
        assert abs(float(luma[test.labels == label].mean() - luma.mean())) < 8


def test_render_rgb_gives_a_slice_the_colours_it_has_in_its_split_at_any_size(fashion_rgb) -> None:
    from scanflow.data import render_rgb

    _, test = fashion_rgb
    grey = load_dataset("fashion-mnist", "test").images
    assert torch.equal(render_rgb(grey[300:310], "test", start=300), test.images[300:310])
    assert not torch.equal(render_rgb(grey[300:310], "train", start=300), test.images[300:310])
    large = render_rgb(grey[:4], "test", size=64)
    assert large.shape == (4, 3, 64, 64) and torch.equal(large[:, :, 0, 0], test.images[:4, :, 0, 0])
    assert torch.equal(render_rgb(grey[:4], "test", size=64), large)
    with pytest.raises(ValueError, match=r"render_rgb takes Fashion-MNIST's uint8 \[N, 1, 28, 28\] images, got torch.uint8 \[4, 3, 32, 32\]"):
        render_rgb(test.images[:4], "test")


def test_fashion_rgb_64_is_the_same_pictures_at_64x64(fashion_rgb, fashion_dir: Path) -> None:
    """The same colours and labels as fashion-rgb, resized: its images shrunk back to 32x32 are close to fashion-rgb's."""
    _, test = fashion_rgb
    big = load_dataset("fashion-rgb-64", "test")
    assert big.images.shape == (10000, 3, 64, 64) and torch.equal(big.labels, test.labels)
    assert big.info == DatasetInfo("fashion-rgb-64", test.info.classes, 3, 64, 64, str(fashion_dir))
    assert torch.equal(big.images[:50, :, 0, 0], test.images[:50, :, 0, 0])  # the same background colour per image
    shrunk = torch.nn.functional.avg_pool2d(big.images[:50].float(), 2)
    assert float((shrunk - test.images[:50].float()).abs().mean()) < 12

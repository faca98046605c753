"""Image datasets as uint8 tensors, found on disk without surprises.

Every dataset comes back as :class:`LabeledImages`: ``uint8`` pixels 0..255 shaped
``[N, C, H, W]`` and ``int64`` labels, plus a :class:`DatasetInfo` that says what the
classes are and which directory the pixels were read from.

Where file-based datasets (``fashion-mnist``, ``mnist``, ``cifar10``) are looked for,
in order, per split:

1. the ``data_dir`` argument, else ``$SCANFLOW_DATA_DIR``: the directory itself,
   ``dir/<name>`` (``dir/fashion-mnist``, ``dir/fashion_mnist``, ``dir/mnist``,
   ``dir/cifar10``) and torchvision's layouts (``dir/FashionMNIST/raw``,
   ``dir/MNIST/raw``, ``dir/cifar-10-batches-py``). Named sub-folders are tried before
   the directory itself, because MNIST and Fashion-MNIST files have identical names: a
   directory that holds IDX files directly is taken to be whichever dataset was asked
   for, so keep several datasets in ``dir/<name>`` sub-folders;
2. the Debian package ``dataset-fashion-mnist`` (Fashion-MNIST only);
3. the download cache (``$SCANFLOW_CACHE_DIR``, default ``~/.cache/scanflow/datasets``);
4. a torchvision download into that cache, only when downloads are allowed
   (``allow_download=True``, or ``$SCANFLOW_ALLOW_DOWNLOAD`` in ``1/true/yes``).

``digits`` is scikit-learn's bundled 8x8 digits and is always available.

``fashion-rgb`` is Fashion-MNIST rendered as 32x32 RGB (:func:`render_rgb`), and ``fashion-rgb-64`` the same
images at 64x64: found wherever Fashion-MNIST is, derived from it on each load (nothing is written to disk).

Parsed files are cached in memory per (path, mtime, size); every returned tensor is a
fresh copy that the caller may mutate.
"""

from __future__ import annotations

import functools
import os
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scanflow.data.batches import DatasetInfo
from scanflow.data.formats import _field, _file_key, _read_cifar_batch_cached, _read_idx_cached, _unpickle
from scanflow.errors import (
    DatasetNotFoundError,
    ScanflowError,
    UnknownDatasetError,
)

__all__ = [
    "CALIBRATION_SIZE",
    "CIFAR10_CLASSES",
    "DATASET_NAMES",
    "DEBIAN_FASHION_MNIST_DIR",
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_FRACTION",
    "DatasetAvailability",
    "ENV_ALLOW_DOWNLOAD",
    "ENV_CACHE_DIR",
    "ENV_DATA_DIR",
    "FASHION_MNIST_CLASSES",
    "FASHION_RGB_MIN_CONTRAST",
    "FASHION_RGB_SEED",
    "LabeledImages",
    "SPLITS",
    "TEST_ONLY_SPLIT",
    "canonical_dataset_name",
    "dataset_availability",
    "default_cache_dir",
    "default_dataset_name",
    "derive_train_test",
    "hold_out_calibration",
    "load_dataset",
    "load_train_test",
    "render_rgb",
    "stratified_split",
]

DATASET_NAMES: tuple[str, ...] = ("fashion-mnist", "mnist", "digits", "cifar10", "fashion-rgb", "fashion-rgb-64")
SPLITS: tuple[str, ...] = ("train", "test")
DEFAULT_NAME = "default"

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DIGITS_SOURCE = "scikit-learn (bundled)"

ENV_DATA_DIR = "SCANFLOW_DATA_DIR"
ENV_CACHE_DIR = "SCANFLOW_CACHE_DIR"
ENV_ALLOW_DOWNLOAD = "SCANFLOW_ALLOW_DOWNLOAD"
_TRUE_VALUES = frozenset({"1", "true", "yes"})

TEST_ONLY_SPLIT: Mapping[str, int] = types.MappingProxyType(
    {"train": 5000, "calibration": 1000, "pool": 4000}
)
"""Sizes used when a dataset ships only its test split (MNIST here: t10k only).

:func:`load_train_test` permutes the test split and keeps the first ``train`` images
for training; the remaining ``calibration + pool`` images are returned as the test
split, which the drift-detection benchmark later cuts into ``calibration`` images (to
calibrate thresholds) followed by a ``pool`` to draw monitoring windows from.
"""

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
_DIGIT_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))

_ALIASES: Mapping[str, str] = {
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "mnist": "mnist",
    "digits": "digits",
    "cifar10": "cifar10",
    "fashionrgb": "fashion-rgb",
    "fashionrgb64": "fashion-rgb-64",
    "default": DEFAULT_NAME,
}

_IDX_DATASETS = frozenset({"fashion-mnist", "mnist"})
_IDX_PREFIX: Mapping[str, str] = {"train": "train", "test": "t10k"}
_CIFAR_TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_BATCHES: tuple[str, ...] = ("test_batch",)
_CIFAR_DIRNAME = "cifar-10-batches-py"

_SUBDIRS: Mapping[str, tuple[str, ...]] = {
    "fashion-mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
    "mnist": ("mnist", "MNIST/raw"),
    "cifar10": (
        _CIFAR_DIRNAME, "cifar10", "cifar-10", f"cifar10/{_CIFAR_DIRNAME}", f"cifar-10/{_CIFAR_DIRNAME}",
    ),
}
_CACHE_SUBDIRS: Mapping[str, tuple[str, ...]] = {
    "fashion-mnist": ("FashionMNIST/raw", "fashion-mnist"),
    "mnist": ("MNIST/raw", "mnist"),
    "cifar10": (_CIFAR_DIRNAME,),
}



_INFOS: Mapping[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo("fashion-mnist", FASHION_MNIST_CLASSES, 1, 28, 28, ""),
    "mnist": DatasetInfo("mnist", _DIGIT_CLASSES, 1, 28, 28, ""),
    "digits": DatasetInfo("digits", _DIGIT_CLASSES, 1, 8, 8, DIGITS_SOURCE),
    "cifar10": DatasetInfo("cifar10", CIFAR10_CLASSES, 3, 32, 32, ""),
    "fashion-rgb": DatasetInfo("fashion-rgb", FASHION_MNIST_CLASSES, 3, 32, 32, ""),
    "fashion-rgb-64": DatasetInfo("fashion-rgb-64", FASHION_MNIST_CLASSES, 3, 64, 64, ""),
}
#: Datasets rendered from another one's files (`render_rgb`): the one whose files they are found with.
_RENDERED_FROM: Mapping[str, str] = types.MappingProxyType({"fashion-rgb": "fashion-mnist", "fashion-rgb-64": "fashion-mnist"})


@dataclass(frozen=True, eq=False)
class LabeledImages:
    """A split of a dataset: ``uint8 [N, C, H, W]`` pixels and ``int64 [N]`` labels.

    ``split`` is ``"train"``, ``"test"`` or a description of how the images were
    derived, e.g. ``"test[perm(seed=0)][0:5000]"``. The tensors belong to this object;
    loaders never share them with their in-memory cache.
    """

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo
    split: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ScanflowError(
                f"LabeledImages.images must be uint8 [N, C, H, W], got {self.images.dtype} "
                f"{list(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ScanflowError(
                f"LabeledImages.labels must be int64 [N], got {self.labels.dtype} {list(self.labels.shape)}"
            )
        if len(self.images) != len(self.labels):
            raise ScanflowError(
                f"LabeledImages has {len(self.images)} images but {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor, split: str | None = None) -> LabeledImages:
        """Return the images at ``indices`` (copied) as a new split.

        ``split`` names the result; by default it is ``"<split>[<k> of <n>]"``.
        """
        index = _as_index_tensor(indices)
        name = split if split is not None else f"{self.split}[{len(index)} of {len(self)}]"
        return LabeledImages(self.images[index], self.labels[index], self.info, name)


@dataclass(frozen=True)
class DatasetAvailability:
    """Whether a dataset can be loaded right now without a download, and from where."""

    name: str
    available: bool
    location: str | None
    splits: tuple[str, ...]
    how_to_get: str


@dataclass(frozen=True)
class _Candidate:
    """A directory that was (or will be) searched, with why it is on the list."""

    path: Path
    origin: str


def _as_index_tensor(indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(indices, torch.Tensor):
        return indices.to(torch.int64).reshape(-1)
    return torch.from_numpy(np.asarray(indices, dtype=np.int64).reshape(-1))


# ---------------------------------------------------------------- names, splits, env


def canonical_dataset_name(name: str) -> str:
    """Map a user-typed name to one of :data:`DATASET_NAMES` (or ``"default"``).

    Case, ``_``, ``-`` and spaces are ignored, so ``"Fashion_MNIST"``,
    ``"FashionMNIST"`` and ``"cifar-10"`` are accepted.
    """
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    canonical = _ALIASES.get(key)
    if canonical is None:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)} "
            f"(or {DEFAULT_NAME!r} for the best one available)"
        )
    return canonical


def dataset_info(name: str) -> DatasetInfo:
    """The description (classes, image shape) of a known dataset, without loading it."""
    canonical = canonical_dataset_name(name)
    if canonical not in _INFOS:
        raise UnknownDatasetError(f"{name!r} is not one dataset: name one of {', '.join(_INFOS)}")
    return _INFOS[canonical]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def default_cache_dir() -> Path:
    """Where downloads go and are looked for: ``$SCANFLOW_CACHE_DIR`` or ``~/.cache/scanflow/datasets``."""
    configured = os.environ.get(ENV_CACHE_DIR, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "scanflow" / "datasets"


def _downloads_allowed(allow_download: bool | None) -> bool:
    if allow_download is not None:
        return bool(allow_download)
    return os.environ.get(ENV_ALLOW_DOWNLOAD, "").strip().lower() in _TRUE_VALUES


def _user_data_dir(data_dir: str | Path | None) -> tuple[Path, str] | None:
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser(), "data_dir"
    configured = os.environ.get(ENV_DATA_DIR, "").strip()
    if configured:
        return Path(configured).expanduser(), ENV_DATA_DIR
    return None


# ---------------------------------------------------------------- locating files


def _candidates(name: str, data_dir: str | Path | None) -> list[_Candidate]:
    """Every directory searched for ``name``, in resolution order, without duplicates."""
    name = _RENDERED_FROM.get(name, name)
    found: list[_Candidate] = []
    user = _user_data_dir(data_dir)
    if user is not None:
        root, origin = user
        found += [_Candidate(root / sub, origin) for sub in _SUBDIRS[name]]
        found.append(_Candidate(root, origin))
    if name == "fashion-mnist":
        found.append(_Candidate(DEBIAN_FASHION_MNIST_DIR, "Debian package dataset-fashion-mnist"))
    cache = default_cache_dir()
    found += [_Candidate(cache / sub, "download cache") for sub in _CACHE_SUBDIRS[name]]
    unique: dict[Path, _Candidate] = {}
    for candidate in found:
        unique.setdefault(candidate.path, candidate)
    return list(unique.values())


def _first_existing(directory: Path, stems: Iterable[str]) -> Path | None:
    for stem in stems:
        for filename in (stem, f"{stem}.gz"):
            path = directory / filename
            if path.is_file():
                return path
    return None


def _idx_files(directory: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) IDX files of ``split`` in ``directory``, plain or gzipped."""
    prefix = _IDX_PREFIX[split]
    images = _first_existing(directory, (f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"))
    labels = _first_existing(directory, (f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"))
    if images is None or labels is None:
        return None
    return images, labels


def _cifar_files(directory: Path, split: str) -> tuple[Path, ...] | None:
    names = _CIFAR_TRAIN_BATCHES if split == "train" else _CIFAR_TEST_BATCHES
    paths = tuple(directory / batch for batch in names)
    return paths if all(path.is_file() for path in paths) else None


def _split_files(name: str, directory: Path, split: str) -> tuple[Path, ...] | None:
    name = _RENDERED_FROM.get(name, name)
    if name in _IDX_DATASETS:
        return _idx_files(directory, split)
    return _cifar_files(directory, split)


def _locate(name: str, split: str, data_dir: str | Path | None) -> Path | None:
    """The first searched directory holding ``split`` of ``name``; cheap (stat calls only)."""
    for candidate in _candidates(name, data_dir):
        if _split_files(name, candidate.path, split) is not None:
            return candidate.path
    return None


def _expected_files(name: str, split: str) -> str:
    name = _RENDERED_FROM.get(name, name)
    if name in _IDX_DATASETS:
        prefix = _IDX_PREFIX[split]
        return f"{prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz (gzipped or not)"
    batches = _CIFAR_TRAIN_BATCHES if split == "train" else _CIFAR_TEST_BATCHES
    return f"{', '.join(batches)}, plus batches.meta for the class names (the python version of CIFAR-10)"


def _how_to_get(name: str) -> str:
    """One line telling a user how to make ``name`` available."""
    if name in _RENDERED_FROM:
        return f"rendered from {_RENDERED_FROM[name]}, nothing else to get: {_how_to_get(_RENDERED_FROM[name])}"
    download = f"or allow downloads with --allow-download / {ENV_ALLOW_DOWNLOAD}=1 (saved under {default_cache_dir()})"
    if name == "fashion-mnist":
        return (
            "apt-get install dataset-fashion-mnist; or set SCANFLOW_DATA_DIR to a directory "
            f"holding the IDX .gz files; {download}"
        )
    if name == "mnist":
        return (
            "set SCANFLOW_DATA_DIR to a directory holding the MNIST IDX .gz files "
            f"(directly or in an mnist/ sub-folder); {download}"
        )
    if name == "cifar10":
        return (
            f"set SCANFLOW_DATA_DIR to a directory holding {_CIFAR_DIRNAME}/ (the CIFAR-10 python "
            f"version: data_batch_1..5, test_batch, batches.meta); {download}"
        )
    return "bundled with scikit-learn; nothing to do"


def _not_found(name: str, split: str, data_dir: str | Path | None, reason: str = "") -> DatasetNotFoundError:
    lines = [f"{name} split {split!r} was not found. Looked in:"]
    for candidate in _candidates(name, data_dir):
        missing = "" if candidate.path.is_dir() else ", does not exist"
        lines.append(f"  - {candidate.path} ({candidate.origin}{missing})")
    lines.append(f"Expected files: {_expected_files(name, split)}.")
    test_dir = _locate(name, "test", data_dir) if split == "train" else None
    if test_dir is not None:
        lines.append(
            f"Only the 'test' split is present (in {test_dir}); "
            f"load_train_test({name!r}) derives train and test splits from it."
        )
    if reason:
        lines.append(reason)
    lines.append(f"To get it: {_how_to_get(name)}.")
    return DatasetNotFoundError("\n".join(lines))


def _torchvision_dataset_class(name: str) -> Any:
    """torchvision's downloader for ``name``; imported lazily because it takes seconds, and optional (the `download`
    extra): serving and the step image need no torchvision."""
    try:
        import torchvision.datasets as tvd
    except ImportError as error:
        raise ImportError(f"downloads need torchvision ({error}): pip install 'scanflow[download]'") from error

    return {"fashion-mnist": tvd.FashionMNIST, "mnist": tvd.MNIST, "cifar10": tvd.CIFAR10}[name]


def _download(name: str, split: str, data_dir: str | Path | None) -> None:
    """Fetch ``name`` with torchvision into the cache; only called when downloads are allowed.

    torchvision's own copy of the data is discarded: the files are re-read from the cache
    with this module's readers so downloaded and local data go through the same checks.
    """
    cache = default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        _torchvision_dataset_class(_RENDERED_FROM.get(name, name))(root=str(cache), train=(split == "train"), download=True)
    except Exception as exc:
        raise _not_found(name, split, data_dir, reason=f"Downloading into {cache} failed: {exc}") from exc



# ---------------------------------------------------------------- IDX and CIFAR-10 splits


def _load_idx_split(name: str, directory: Path, split: str) -> LabeledImages:
    files = _idx_files(directory, split)
    assert files is not None
    image_path, label_path = files
    images = _read_idx_cached(*_file_key(image_path))
    labels = _read_idx_cached(*_file_key(label_path))
    info = replace(_INFOS[name], source=str(directory.resolve()))
    _check_idx_arrays(images, labels, image_path, label_path, info)
    return LabeledImages(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        info=info,
        split=split,
    )


def _check_idx_arrays(
    images: np.ndarray, labels: np.ndarray, image_path: Path, label_path: Path, info: DatasetInfo
) -> None:
    """Refuse files that parse but do not hold this dataset (wrong shape, counts, labels)."""
    if images.dtype != np.uint8 or images.shape[1:] != (info.height, info.width):
        raise ScanflowError(
            f"{image_path} holds {images.dtype} images of shape {list(images.shape)}, expected uint8 "
            f"[N, {info.height}, {info.width}] for {info.name}; the file is not {info.name}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ScanflowError(
            f"{label_path} holds {labels.dtype} labels of shape {list(labels.shape)}, expected uint8 [N]"
        )
    if len(images) != len(labels):
        raise ScanflowError(
            f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels; "
            "the two files must come from the same release, fetch them again"
        )
    if len(labels) and int(labels.max()) >= info.n_classes:
        raise ScanflowError(
            f"{label_path} has label {int(labels.max())}, but {info.name} has only {info.n_classes} classes"
        )



def _cifar_classes(directory: Path) -> tuple[str, ...]:
    meta_path = directory / "batches.meta"
    if not meta_path.is_file():
        return CIFAR10_CLASSES
    names = _field(_unpickle(meta_path), "label_names", meta_path)
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _load_cifar_split(directory: Path, split: str) -> LabeledImages:
    files = _cifar_files(directory, split)
    assert files is not None
    batches = [_read_cifar_batch_cached(*_file_key(path)) for path in files]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    info = replace(_INFOS["cifar10"], classes=_cifar_classes(directory), source=str(directory.resolve()))
    if len(labels) and (labels.min() < 0 or labels.max() >= info.n_classes):
        raise ScanflowError(f"{directory}: CIFAR-10 labels must be 0..{info.n_classes - 1}")
    return LabeledImages(torch.from_numpy(images), torch.from_numpy(labels), info, split)



# ---------------------------------------------------------------- digits


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: ``round(test_fraction * n_c)`` images of each class to test.

    Returns sorted ``(train_indices, test_indices)``; independent of scikit-learn's version.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test_parts = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        test_parts.append(rng.permutation(members)[: int(round(len(members) * test_fraction))])
    test = np.sort(np.concatenate(test_parts)) if test_parts else np.empty(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train.astype(np.int64), test.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as read-only ``uint8 [N, 1, 8, 8]`` (0..16 scaled to 0..255) and labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _load_digits_split(split: str) -> LabeledImages:
    """scikit-learn's digits have no official split: "train"/"test" are a stratified
    80/20 split with seed :data:`DIGITS_SPLIT_SEED`, the same on every machine."""
    images, labels = _digits_arrays()
    train_idx, test_idx = stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    index = train_idx if split == "train" else test_idx
    return LabeledImages(torch.from_numpy(images[index]), torch.from_numpy(labels[index]), _INFOS["digits"], split)


# ---------------------------------------------------------------- fashion-rgb

#: Seed of `render_rgb`'s colours; with a split's name and an image's index in it, it fixes that image's colours.
FASHION_RGB_SEED = 24
#: Least difference of luma (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B, on 0..255) between an image's background
#: and foreground colours, so every garment stays visible.
FASHION_RGB_MIN_CONTRAST = 64
#: Colour pairs drawn per image; the first with FASHION_RGB_MIN_CONTRAST is kept (a uniform pair has it with
#: probability about 0.36, so all 32 miss with probability about 1e-6; then the most contrasting pair is kept).
_COLOUR_CANDIDATES = 32
_WORDS_PER_IMAGE = _COLOUR_CANDIDATES * 2 * 3 // 8
_SPLIT_CODES: Mapping[str, int] = types.MappingProxyType({"train": 0, "test": 1})
_LUMA_PER_MILLE = np.array([299, 587, 114], dtype=np.int64)
_RENDER_CHUNK = 4096


def _colour_pairs(split: str, start: int, count: int, seed: int) -> np.ndarray:
    """(background, foreground) colours of images ``start .. start + count - 1`` of ``split``, uint8 [count, 2, 3].

    The bytes are PCG64's raw 64-bit outputs (stable across numpy versions, unlike `Generator` methods), the stream
    seeded by (``seed``, split) and advanced to the image's place, so a slice gets the colours its images have
    in the whole split."""
    bit_generator = np.random.PCG64(np.random.SeedSequence([seed, _SPLIT_CODES[split]]))
    bit_generator.advance(start * _WORDS_PER_IMAGE)
    raw = bit_generator.random_raw(count * _WORDS_PER_IMAGE).astype("<u8")
    candidates = raw.view(np.uint8).reshape(count, _COLOUR_CANDIDATES, 2, 3)
    luma = candidates.astype(np.int64) @ _LUMA_PER_MILLE
    contrast = np.abs(luma[..., 0] - luma[..., 1])
    enough = contrast >= FASHION_RGB_MIN_CONTRAST * 1000
    choice = np.where(enough.any(axis=1), enough.argmax(axis=1), contrast.argmax(axis=1))
    return candidates[np.arange(count), choice]


def _grey_at_size(grey: torch.Tensor, size: int) -> torch.Tensor:
    """28x28 grey images padded with 2 black pixels per side to 32x32, then (size != 32) resized bilinearly."""
    padded = torch.nn.functional.pad(grey, (2, 2, 2, 2))
    if size == 32:
        return padded
    resized = torch.nn.functional.interpolate(
        padded.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=size < 32
    )
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def render_rgb(
    grey: torch.Tensor, split: str, start: int = 0, size: int = 32, seed: int = FASHION_RGB_SEED
) -> torch.Tensor:
    """Fashion-MNIST images as RGB pictures with their own colours: uint8 [N, 1, 28, 28] -> uint8 [N, 3, size, size].

    Each image is padded with 2 black pixels per side to 32x32 (no resampling, so the 32x32 rendering is exact
    integer arithmetic and the garment keeps its 28x28 pixels), and for another ``size`` then resized bilinearly
    (antialiased when shrinking). Its grey value g (0 background .. 255 garment) then blends the image's background
    colour b into its foreground colour f, per channel in integers: ``(b * (255 - g) + f * g + 127) // 255``.
    (b, f) is drawn per image, independently of its label, so colour is a nuisance the models must ignore, not a
    cue to the class (see `_colour_pairs` and FASHION_RGB_MIN_CONTRAST). The same image gets the same colours and
    bytes on every call: ``grey[i]`` is taken to be image ``start + i`` of ``split`` ("train" or "test").

    Raises:
        ValueError: ``grey`` is not uint8 [N, 1, 28, 28], ``split`` is unknown, or ``size`` is below 8.
    """
    if grey.dtype != torch.uint8 or grey.dim() != 4 or tuple(grey.shape[1:]) != (1, 28, 28):
        raise ValueError(f"render_rgb takes Fashion-MNIST's uint8 [N, 1, 28, 28] images, got {grey.dtype} {list(grey.shape)}")
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if size < 8 or start < 0:
        raise ValueError(f"size must be >= 8 and start >= 0, got size {size} and start {start}")
    out = torch.empty(len(grey), 3, size, size, dtype=torch.uint8)
    for first in range(0, len(grey), _RENDER_CHUNK):
        chunk = _grey_at_size(grey[first : first + _RENDER_CHUNK], size).numpy().astype(np.uint16)
        colours = _colour_pairs(split, start + first, len(chunk), seed).astype(np.uint16)[:, :, :, None, None]
        blended = (colours[:, 0] * (255 - chunk) + colours[:, 1] * chunk + 127) // 255
        out[first : first + len(chunk)] = torch.from_numpy(blended.astype(np.uint8))
    return out


# ---------------------------------------------------------------- public loaders


def _resolve_name(name: str, data_dir: str | Path | None) -> str:
    canonical = canonical_dataset_name(name)
    return default_dataset_name(data_dir) if canonical == DEFAULT_NAME else canonical


def _load_from(name: str, directory: Path, split: str) -> LabeledImages:
    if name in _RENDERED_FROM:
        base = _load_from(_RENDERED_FROM[name], directory, split)
        info = replace(_INFOS[name], source=base.info.source)
        return LabeledImages(render_rgb(base.images, split, size=info.height), base.labels, info, split)
    if name in _IDX_DATASETS:
        return _load_idx_split(name, directory, split)
    return _load_cifar_split(directory, split)


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | Path | None = None,
    allow_download: bool | None = None,
) -> LabeledImages:
    """Load one split ("train" or "test") of a dataset as uint8 ``[N, C, H, W]`` tensors.

    ``name`` is one of :data:`DATASET_NAMES` (case and ``_``/``-`` ignored) or
    ``"default"``. See the module docstring for where files are looked for. Raises
    :class:`~scanflow.errors.DatasetNotFoundError` listing every directory searched.
    """
    canonical = _resolve_name(name, data_dir)
    _check_split(split)
    if canonical == "digits":
        return _load_digits_split(split)
    directory = _locate(canonical, split, data_dir)
    if directory is None and _downloads_allowed(allow_download):
        _download(canonical, split, data_dir)
        directory = _locate(canonical, split, data_dir)
    if directory is None:
        raise _not_found(canonical, split, data_dir)
    return _load_from(canonical, directory, split)


def derive_train_test(test: LabeledImages, seed: int = 0) -> tuple[LabeledImages, LabeledImages]:
    """Split a test-only dataset into train and test, deterministically for ``seed``.

    The indices are permuted with ``numpy.random.default_rng(seed)``; train is the first
    ``TEST_ONLY_SPLIT["train"]`` (5,000 of MNIST's 10,000; at most half when fewer), test
    is the rest, to be cut into calibration and pool by the benchmark.
    """
    n = len(test)
    n_train = min(TEST_ONLY_SPLIT["train"], n // 2)
    order = np.random.default_rng(seed).permutation(n)
    prefix = f"{test.split}[perm(seed={seed})]"
    return (
        test.subset(order[:n_train], split=f"{prefix}[0:{n_train}]"),
        test.subset(order[n_train:], split=f"{prefix}[{n_train}:{n}]"),
    )


def load_train_test(
    name: str,
    data_dir: str | Path | None = None,
    allow_download: bool | None = None,
    seed: int = 0,
) -> tuple[LabeledImages, LabeledImages]:
    """Training and test data for ``name``.

    The official splits when both are found; when only the test split exists (MNIST on
    this machine) both are derived from it by :func:`derive_train_test` with ``seed``.
    ``seed`` does not affect digits, whose split is fixed (see :func:`load_dataset`).
    """
    canonical = _resolve_name(name, data_dir)
    if canonical == "digits":
        return _load_digits_split("train"), _load_digits_split("test")
    train_dir = _locate(canonical, "train", data_dir)
    test_dir = _locate(canonical, "test", data_dir)
    if (train_dir is None or test_dir is None) and _downloads_allowed(allow_download):
        _download(canonical, "train" if train_dir is None else "test", data_dir)
        train_dir = _locate(canonical, "train", data_dir)
        test_dir = _locate(canonical, "test", data_dir)
    if test_dir is None:
        raise _not_found(canonical, "test", data_dir)
    test = _load_from(canonical, test_dir, "test")
    if train_dir is None:
        return derive_train_test(test, seed)
    return _load_from(canonical, train_dir, "train"), test


def default_dataset_name(data_dir: str | Path | None = None) -> str:
    """``"fashion-mnist"`` when both its splits are on disk, else ``"digits"`` (always present)."""
    if all(_locate("fashion-mnist", split, data_dir) is not None for split in SPLITS):
        return "fashion-mnist"
    return "digits"


def dataset_availability(data_dir: str | Path | None = None) -> list[DatasetAvailability]:
    """For each of :data:`DATASET_NAMES`, which splits can be loaded now without a download.

    Only checks that files exist; nothing is parsed.
    """
    report = []
    for name in DATASET_NAMES:
        if name == "digits":
            report.append(DatasetAvailability(name, True, DIGITS_SOURCE, SPLITS, _how_to_get(name)))
            continue
        found = {split: _locate(name, split, data_dir) for split in SPLITS}
        splits = tuple(split for split, where in found.items() if where is not None)
        locations = list(dict.fromkeys(str(where.resolve()) for where in found.values() if where is not None))
        report.append(
            DatasetAvailability(
                name=name,
                available=bool(splits),
                location="; ".join(locations) or None,
                splits=splits,
                how_to_get=_how_to_get(name),
            )
        )
    return report


# ---------------------------------------------------------------- calibration hold-out


#: Clean images held out of training to calibrate the drift detector's thresholds (at most this many, and at
#: most a fifth of the training set): thresholds calibrated on images the models were fitted to would be too low.
CALIBRATION_SIZE = 2000


def hold_out_calibration(train: LabeledImages, seed: int = 0, size: int = CALIBRATION_SIZE) -> tuple[LabeledImages, LabeledImages]:
    """Split `train` into (images to fit the models on, clean images to calibrate the detector on), stratified."""
    n_calibration = min(size, len(train) // 5)
    if n_calibration < 20:
        raise ValueError(f"{len(train)} training images are too few to hold out a calibration set (need >= 100)")
    fit_index, calibration_index = stratified_split(train.labels.numpy(), n_calibration / len(train), seed)
    return (
        train.subset(fit_index, split=f"{train.split}[fit]"),
        train.subset(calibration_index, split=f"{train.split}[calibration]"),
    )

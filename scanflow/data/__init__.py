"""Image datasets as uint8 tensors, the files they come from, and the checks production batches go through.

- :mod:`scanflow.data.datasets`: the dataset registry (names, aliases, where files are looked for), the loaders of
  Fashion-MNIST, MNIST, CIFAR-10, digits and the RGB renderings, `LabeledImages` and the splits;
- :mod:`scanflow.data.formats`: on-disk formats: IDX files, CIFAR-10 python batches, ``.npy`` batch files;
- :mod:`scanflow.data.batches`: validation of production batches (`validate_batch`) and `DatasetInfo`.

Everything that was importable from ``scanflow.data`` still is.
"""

from scanflow.data.batches import DatasetInfo, validate_batch
from scanflow.data.datasets import (
    CALIBRATION_SIZE,
    CIFAR10_CLASSES,
    DATASET_NAMES,
    DEBIAN_FASHION_MNIST_DIR,
    DIGITS_SPLIT_SEED,
    DIGITS_TEST_FRACTION,
    ENV_ALLOW_DOWNLOAD,
    ENV_CACHE_DIR,
    ENV_DATA_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_RGB_MIN_CONTRAST,
    FASHION_RGB_SEED,
    SPLITS,
    TEST_ONLY_SPLIT,
    DatasetAvailability,
    LabeledImages,
    canonical_dataset_name,
    dataset_availability,
    default_cache_dir,
    default_dataset_name,
    derive_train_test,
    hold_out_calibration,
    load_dataset,
    load_train_test,
    render_rgb,
    stratified_split,
)
from scanflow.data.datasets import _colour_pairs as _colour_pairs  # read by tests/unit/test_data.py
from scanflow.data.datasets import dataset_info as dataset_info
from scanflow.data.formats import load_batch_file, read_idx

__all__ = [
    "CALIBRATION_SIZE",
    "CIFAR10_CLASSES",
    "DATASET_NAMES",
    "DEBIAN_FASHION_MNIST_DIR",
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_FRACTION",
    "DatasetAvailability",
    "DatasetInfo",
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
    "load_batch_file",
    "load_dataset",
    "load_train_test",
    "read_idx",
    "render_rgb",
    "stratified_split",
    "validate_batch",
]

"""Contract of scanflow.corruptions: the 15 MNIST-C corruptions behind `corrupt`.

The input is real handwriting: scikit-learn's bundled 8x8 digits, upsampled to a
20x20 box centred in a 28x28 frame as in MNIST (no download needed).
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from scanflow.corruptions import (
    CORRUPTIONS,
    FAMILIES,
    SEVERITY_FACTORS,
    corrupt,
    corruption_names,
)
from scanflow.errors import InvalidBatchError, ScanflowError, UnknownCorruptionError

MNIST_C_ORDER = (
    "shot_noise",
    "impulse_noise",
    "glass_blur",
    "motion_blur",
    "shear",
    "scale",
    "rotate",
    "brightness",
    "translate",
    "stripe",
    "fog",
    "spatter",
    "dotted_line",
    "zigzag",
    "canny_edges",
)
NAMES = corruption_names()
RANDOM = tuple(name for name in NAMES if CORRUPTIONS[name].random)
SPATIAL = FAMILIES["blur"] + FAMILIES["geometric"]
TINT = torch.tensor([1.0, 0.6, 0.3]).view(1, 3, 1, 1)


@cache
def _raw_digits() -> torch.Tensor:
    """scikit-learn's 8x8 digits as ``[1797, 1, 8, 8]`` floats in [0, 1] (read once: ~50 ms)."""
    return torch.from_numpy(load_digits().images / 16.0).float()[:, None]


def _digits(count: int, height: int = 28, width: int = 28) -> torch.Tensor:
    """``[count, 1, height, width]`` float digits in [0, 1], MNIST-like framing."""
    raw = _raw_digits()[:count]
    box = F.interpolate(raw, size=(height * 5 // 7, width * 5 // 7), mode="bilinear", align_corners=False)
    top, left = (height - box.shape[-2]) // 2, (width - box.shape[-1]) // 2
    padding = (left, width - box.shape[-1] - left, top, height - box.shape[-2] - top)
    return F.pad(box, padding).clamp(0.0, 1.0)


def _batch(dtype: torch.dtype, channels: int, height: int, width: int, count: int = 8) -> torch.Tensor:
    images = _digits(count, height, width)
    if channels == 3:
        images = images * TINT
    if dtype == torch.uint8:
        return (images * 255).round().to(torch.uint8)
    return images.to(dtype)


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute pixel difference, in the images' own units."""
    return float(np.abs(a.numpy().astype(np.float64) - b.numpy().astype(np.float64)).mean())


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """64 uint8 MNIST-like digits, ``[64, 1, 28, 28]``."""
    return (_digits(64) * 255).round().to(torch.uint8)


# --------------------------------------------------------------------------- registry


def test_registry_lists_the_15_mnist_c_corruptions_in_order() -> None:
    assert NAMES == MNIST_C_ORDER
    assert tuple(CORRUPTIONS) == MNIST_C_ORDER
    assert all(CORRUPTIONS[name].name == name for name in NAMES)


def test_every_corruption_belongs_to_exactly_one_of_five_families() -> None:
    assert tuple(FAMILIES) == ("noise", "blur", "geometric", "artefact", "weather")
    members = [name for family in FAMILIES.values() for name in family]
    assert sorted(members) == sorted(NAMES)
    for family, names in FAMILIES.items():
        assert all(CORRUPTIONS[name].family == family for name in names)


def test_severity_factors_are_the_documented_table() -> None:
    assert dict(SEVERITY_FACTORS) == {1: 0.4, 2: 0.7, 3: 1.0, 4: 1.3, 5: 1.6}


def test_only_the_seedless_corruptions_are_marked_deterministic() -> None:
    assert set(NAMES) - set(RANDOM) == {"scale", "brightness", "stripe", "canny_edges"}


# --------------------------------------------------------------------------- behaviour per corruption


@pytest.mark.parametrize("name", NAMES)
def test_changes_the_image(digits: torch.Tensor, name: str) -> None:
    assert not torch.equal(corrupt(digits, name), digits)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_the_same_output(digits: torch.Tensor, name: str) -> None:
    assert torch.equal(corrupt(digits, name, seed=7), corrupt(digits, name, seed=7))


@pytest.mark.parametrize("name", NAMES)
def test_other_seed_changes_output_only_for_random_corruptions(digits: torch.Tensor, name: str) -> None:
    same = torch.equal(corrupt(digits, name, seed=1), corrupt(digits, name, seed=2))
    assert same is not CORRUPTIONS[name].random


@pytest.mark.parametrize(
    ("dtype", "channels", "height", "width"),
    [
        (torch.uint8, 1, 28, 28),
        (torch.float32, 1, 28, 28),
        (torch.uint8, 3, 28, 28),
        (torch.float32, 3, 32, 32),
        (torch.uint8, 1, 8, 8),
        (torch.float64, 3, 8, 12),
    ],
    ids=["u8-1x28", "f32-1x28", "u8-3x28", "f32-3x32", "u8-1x8", "f64-3x8x12"],
)
@pytest.mark.parametrize("name", NAMES)
def test_keeps_shape_dtype_and_value_range(
    name: str, dtype: torch.dtype, channels: int, height: int, width: int
) -> None:
    images = _batch(dtype, channels, height, width)
    out = corrupt(images, name, severity=5, seed=3)
    assert out.shape == images.shape
    assert out.dtype == images.dtype
    if dtype.is_floating_point:
        assert torch.isfinite(out).all()
        assert out.min() >= 0.0 and out.max() <= 1.0
    assert not torch.equal(out, images)


@pytest.mark.parametrize("name", NAMES)
def test_distance_to_clean_grows_strictly_with_severity(digits: torch.Tensor, name: str) -> None:
    distances = [_distance(corrupt(digits, name, severity, seed=0), digits) for severity in range(1, 6)]
    assert all(low < high for low, high in zip(distances, distances[1:])), distances


@pytest.mark.parametrize("name", NAMES)
def test_never_modifies_the_input(digits: torch.Tensor, name: str) -> None:
    for images in (digits.clone(), digits.float() / 255):
        before = images.clone()
        out = corrupt(images, name)
        assert torch.equal(images, before)
        assert out.data_ptr() != images.data_ptr()


@pytest.mark.parametrize("name", SPATIAL)
def test_spatial_corruptions_move_all_channels_alike(digits: torch.Tensor, name: str) -> None:
    out = corrupt(digits[:16].repeat(1, 3, 1, 1), name, seed=5)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


@pytest.mark.parametrize("name", ["shear", "rotate", "translate", "motion_blur", "dotted_line"])
def test_each_image_of_a_batch_gets_its_own_randomness(digits: torch.Tensor, name: str) -> None:
    out = corrupt(digits[:1].repeat(16, 1, 1, 1), name, seed=0)
    assert len({tuple(image.flatten().tolist()) for image in out}) > 1


def test_empty_batch_gives_an_empty_batch() -> None:
    empty = torch.zeros((0, 1, 28, 28), dtype=torch.uint8)
    assert corrupt(empty, "fog").shape == empty.shape


# --------------------------------------------------------------------------- published parameters


def test_impulse_noise_replaces_17_percent_of_pixels_at_severity_3() -> None:
    grey = torch.full((64, 1, 28, 28), 128, dtype=torch.uint8)
    changed = corrupt(grey, "impulse_noise", severity=3) != grey
    assert changed.float().mean().item() == pytest.approx(0.17, abs=0.01)


def test_stripe_inverts_exactly_columns_0_to_6_and_21_to_27_at_severity_3(digits: torch.Tensor) -> None:
    out = corrupt(digits, "stripe", severity=3)
    inverted = torch.zeros(28, dtype=torch.bool)
    inverted[:7] = inverted[21:] = True
    assert torch.equal(out[..., inverted], 255 - digits[..., inverted])
    assert torch.equal(out[..., ~inverted], digits[..., ~inverted])


def test_translate_shifts_by_3_pixels_on_each_axis_at_severity_3(digits: torch.Tensor) -> None:
    out = corrupt(digits, "translate", severity=3, seed=4)
    padded = F.pad(digits, (3, 3, 3, 3))
    for image, clean in zip(out, padded):
        shifts = [clean[:, 3 + dy : 31 + dy, 3 + dx : 31 + dx] for dy in (-3, 3) for dx in (-3, 3)]
        assert any(torch.equal(image, shifted) for shifted in shifts)


def test_brightness_adds_half_the_range_to_grey_images_at_severity_3(digits: torch.Tensor) -> None:
    out = corrupt(digits, "brightness", severity=3).int()
    expected = (digits.int() + 127.5).clamp(max=255)
    assert (out - expected).abs().max().item() <= 0.5


def test_canny_edges_is_a_pure_binary_edge_map_at_severity_3(digits: torch.Tensor) -> None:
    out = corrupt(digits, "canny_edges", severity=3)
    assert set(out.unique().tolist()) == {0, 255}
    assert (out == 255).float().mean().item() < 0.3


def test_rotate_turns_the_image_by_0_4_radians_at_severity_3() -> None:
    blob = torch.zeros((1, 1, 29, 29))
    blob[..., 14, 24] = 1.0
    out = corrupt(blob, "rotate", severity=3, seed=0)[0, 0].double()
    rows, cols = torch.meshgrid(torch.arange(29.0), torch.arange(29.0), indexing="ij")
    row = (out * rows.double()).sum() / out.sum() - 14
    col = (out * cols.double()).sum() / out.sum() - 14
    assert abs(np.arctan2(row.item(), col.item())) == pytest.approx(0.4, abs=0.02)


# --------------------------------------------------------------------------- errors


def test_unknown_name_lists_the_known_corruptions(digits: torch.Tensor) -> None:
    known = ", ".join(MNIST_C_ORDER)
    message = f"unknown corruption 'blurry'; known corruptions: {known}"
    with pytest.raises(UnknownCorruptionError, match=re.escape(message)) as raised:
        corrupt(digits, "blurry")
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, ScanflowError)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, "3", True])
def test_severity_outside_1_to_5_is_rejected(digits: torch.Tensor, severity: object) -> None:
    with pytest.raises(ValueError, match=re.escape(f"severity must be an integer 1..5, got {severity!r}")):
        corrupt(digits, "fog", severity=severity)  # type: ignore[arg-type]


def test_negative_seed_is_rejected(digits: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=re.escape("seed must be a non-negative integer, got -1")):
        corrupt(digits, "fog", seed=-1)


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28), (2, 1, 1, 28, 28), (2, 2, 28, 28), (2, 1, 7, 28)])
def test_wrong_shape_names_the_expected_shape(shape: tuple[int, ...]) -> None:
    message = f"expected a 4-D tensor [N, C, H, W] with C in {{1, 3}} and H, W >= 8, got shape {shape}"
    with pytest.raises(InvalidBatchError, match=re.escape(message)):
        corrupt(torch.zeros(shape, dtype=torch.uint8), "rotate")


def test_wrong_dtype_is_rejected() -> None:
    message = "images must be uint8 (0..255) or floating point (0..1), got torch.int32"
    with pytest.raises(InvalidBatchError, match=re.escape(message)) as raised:
        corrupt(torch.zeros((2, 1, 28, 28), dtype=torch.int32), "rotate")
    assert isinstance(raised.value, ValueError)


def test_float_images_outside_0_1_are_rejected() -> None:
    message = "floating-point images must hold values in [0, 1], got min 0 and max 255"
    with pytest.raises(InvalidBatchError, match=re.escape(message)):
        corrupt(torch.full((2, 1, 28, 28), 255.0).index_fill_(2, torch.tensor([0]), 0.0), "rotate")

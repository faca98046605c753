"""Image folders, numpy files and stream batches read into a model's contract: labels, conversions, bad files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scanflow.errors import InvalidBatchError, ScanflowError
from scanflow.images import (
    BadFile,
    Conversion,
    ImageContract,
    list_batch_units,
    read_batch_unit,
    read_images,
)

GREY28 = ImageContract(1, 28, 28)
RGB32 = ImageContract(3, 32, 32)


def _save(path: Path, size: tuple[int, int] = (28, 28), mode: str = "L", seed: int = 0, fmt: str | None = None) -> Path:
    """A random image of `size` (width, height) in `mode`, saved as `path` (format from the extension unless `fmt`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    if mode in ("L", "RGB", "RGBA", "CMYK"):
        bands = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
        array = rng.integers(0, 256, (height, width, bands), dtype=np.uint8)
        image = Image.fromarray(array[..., 0] if bands == 1 else array, mode=mode)
    elif mode == "P":
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").convert("P")
    elif mode == "1":
        image = Image.fromarray(rng.integers(0, 2, (height, width), dtype=np.uint8) * 255, "L").convert("1")
    elif mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    elif mode == "F":
        image = Image.fromarray(rng.random((height, width), dtype=np.float32))
    else:
        raise ValueError(mode)
    image.save(path, format=fmt)
    return path


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims `width` x `height` pixels: what a decompression bomb shows before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def _bad_files(folder: Path) -> dict[str, str]:
    """One file of every bad kind in `folder`, with the words its reason must contain."""
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image")
    whole = _save(folder / "whole.png", (28, 28)).read_bytes()
    (folder / "whole.png").unlink()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    jpeg = _save(folder / "whole.jpg", (64, 64), "RGB").read_bytes()
    (folder / "whole.jpg").unlink()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    _save(folder / "float.tif", (28, 28), "F")
    (folder / "gone.png").symlink_to(folder / "no-such-target.png")
    return {
        "empty.png": "empty file (0 bytes)",
        "text.png": "not an image",
        "truncated.png": "truncated or corrupt",
        "truncated.jpg": "truncated or corrupt",
        "float.tif": "unsupported image mode 'F'",
        "gone.png": "cannot be read",
    }


# ------------------------------------------------------------------------------------------------ folders


def test_class_subfolders_give_labels_from_sorted_folder_names_in_sorted_file_order(tmp_path):
    for seed, name in enumerate(["zebra/b.png", "ant/z.png", "ant/a.png", "moth/x.png", "zebra/a.png"]):
        _save(tmp_path / name, seed=seed)
    result = read_images(tmp_path, GREY28)
    assert result.names == ("ant/a.png", "ant/z.png", "moth/x.png", "zebra/a.png", "zebra/b.png")
    assert result.classes == ("ant", "moth", "zebra")
    assert result.labels.tolist() == [0, 0, 1, 2, 2] and result.labels.dtype == torch.int64
    assert result.images.shape == (5, 1, 28, 28) and result.images.dtype == torch.uint8
    assert result.conversions == () and result.skipped == () and result.describe() == ()
    expected = np.asarray(Image.open(tmp_path / "moth/x.png"))
    assert np.array_equal(result.images[2, 0].numpy(), expected)


def test_a_given_class_list_fixes_the_label_order_and_refuses_an_unknown_folder(tmp_path):
    _save(tmp_path / "cat/1.png")
    _save(tmp_path / "dog/1.png")
    result = read_images(tmp_path, GREY28, classes=["dog", "bird", "cat"])
    assert result.classes == ("dog", "bird", "cat") and result.labels.tolist() == [2, 0]
    with pytest.raises(InvalidBatchError, match=r"class folders that are not among the 2 given classes: dog; rename those folders"):
        read_images(tmp_path, GREY28, classes=["cat", "bird"])


def test_a_flat_folder_is_unlabelled_and_nested_class_folders_are_walked(tmp_path):
    for i in range(3):
        _save(tmp_path / "flat" / f"{i}.png", seed=i)
    flat = read_images(tmp_path / "flat", GREY28)
    assert flat.labels is None and flat.classes is None and flat.names == ("0.png", "1.png", "2.png")
    _save(tmp_path / "deep/cat/day1/a.png")
    _save(tmp_path / "deep/dog/b.png")
    deep = read_images(tmp_path / "deep", GREY28)
    assert deep.names == ("cat/day1/a.png", "dog/b.png") and deep.labels.tolist() == [0, 1]


def test_loose_files_beside_class_folders_are_refused_by_name(tmp_path):
    _save(tmp_path / "cat/a.png")
    _save(tmp_path / "stray.png")
    with pytest.raises(InvalidBatchError, match=r"both loose image files \(stray.png\) and class sub-folders: put every image"):
        read_images(tmp_path, GREY28)


def test_hidden_files_and_other_extensions_are_ignored_and_counted(tmp_path):
    _save(tmp_path / "a.png")
    _save(tmp_path / ".hidden.png")
    _save(tmp_path / ".ipynb_checkpoints" / "a-checkpoint.png")
    (tmp_path / "notes.txt").write_text("labels elsewhere")
    (tmp_path / "README").write_text("readme")
    result = read_images(tmp_path, GREY28)
    assert result.names == ("a.png",)
    assert (result.ignored_hidden, result.ignored_other) == (2, 2)
    assert result.describe() == ("2 hidden files ignored", "2 files with other extensions ignored")


def test_an_empty_folder_and_a_folder_without_images_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidBatchError, match=r"empty holds no image files \(0 hidden files and 0 files with other extensions \(none\) were ignored\): put PNG or JPEG"):
        read_images(tmp_path / "empty", GREY28)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.csv").write_text("1,2")
    (tmp_path / "docs" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(InvalidBatchError, match=r"1 hidden files and 1 files with other extensions \(.csv\) were ignored"):
        read_images(tmp_path / "docs", GREY28)
    with pytest.raises(InvalidBatchError, match=r"does not exist: pass a folder of images, a .npy/.npz file or an s3://"):
        read_images(tmp_path / "nowhere", GREY28)
    (tmp_path / "x.csv").write_text("1")
    with pytest.raises(InvalidBatchError, match=r"x.csv is neither an image"):
        read_images(tmp_path / "x.csv", GREY28)


def test_the_order_does_not_depend_on_creation_order(tmp_path):
    names = ["b10.png", "a.png", "b2.png", "B.png", "c/../c.png"]
    for seed, name in enumerate(names[:4]):
        _save(tmp_path / "one" / name, seed=seed)
    for seed, name in reversed(list(enumerate(names[:4]))):
        _save(tmp_path / "two" / name, seed=seed)
    one, two = read_images(tmp_path / "one", GREY28), read_images(tmp_path / "two", GREY28)
    assert one.names == two.names == ("B.png", "a.png", "b10.png", "b2.png")
    assert torch.equal(one.images, two.images)


def test_one_image_file_is_a_batch_of_one(tmp_path):
    _save(tmp_path / "one.jpg", (40, 30), "RGB")
    result = read_images(tmp_path / "one.jpg", RGB32)
    assert result.names == ("one.jpg",) and result.images.shape == (1, 3, 32, 32)


# ------------------------------------------------------------------------------------------------ conversions


def test_mixed_sizes_and_modes_are_converted_and_recorded(tmp_path):
    for i in range(37):
        _save(tmp_path / f"big{i:02d}.png", (48, 64), "RGB", seed=i)  # 64 high, 48 wide
    for i in range(3):
        _save(tmp_path / f"alpha{i}.png", (32, 32), "RGBA", seed=100 + i)
    result = read_images(tmp_path, RGB32)
    assert result.images.shape == (40, 3, 32, 32)
    assert result.conversions == (Conversion("resize", "64x48", "32x32", 37), Conversion("mode", "RGBA", "RGB", 3))
    assert result.describe() == ("37 of 40 images resized from 64x48 to 32x32", "3 of 40 images converted from RGBA to RGB")
    rgba = np.asarray(Image.open(tmp_path / "alpha0.png"))
    assert np.array_equal(result.images[0].numpy(), rgba[..., :3].transpose(2, 0, 1)), "alpha is dropped, colours kept"


def test_every_mode_becomes_grey_or_rgb(tmp_path):
    modes = {"a_grey.png": "L", "b_rgb.png": "RGB", "c_rgba.png": "RGBA", "d_palette.png": "P", "e_bilevel.png": "1",
             "f_16bit.png": "I;16", "g_cmyk.jpg": "CMYK", "h_rgb.jpg": "RGB"}
    for name, mode in modes.items():
        _save(tmp_path / name, (28, 28), mode)
    for contract in (GREY28, ImageContract(3, 28, 28)):
        result = read_images(tmp_path, contract)
        assert result.images.shape == (8, contract.channels, 28, 28) and result.skipped == ()
        already = {1: 1, 3: 2}[contract.channels]  # one grey file, two RGB files
        assert sum(c.count for c in result.conversions) == 8 - already
    sixteen = np.asarray(Image.open(tmp_path / "f_16bit.png"), dtype=np.int64)
    grey = read_images(tmp_path / "f_16bit.png", GREY28)
    assert np.abs(grey.images[0, 0].numpy().astype(np.int64) - sixteen / 257).max() <= 0.5 + 1e-9
    assert grey.conversions == (Conversion("mode", "I;16", "L", 1),)


def test_grey_to_rgb_repeats_the_channel_and_rgb_to_grey_is_luma(tmp_path):
    _save(tmp_path / "grey/g.png", (28, 28), "L")
    as_rgb = read_images(tmp_path / "grey", ImageContract(3, 28, 28))
    grey = np.asarray(Image.open(tmp_path / "grey/g.png"))
    assert all(np.array_equal(as_rgb.images[0, c].numpy(), grey) for c in range(3))
    assert as_rgb.conversions == (Conversion("mode", "L", "RGB", 1),)
    Image.fromarray(np.full((28, 28, 3), (255, 0, 0), dtype=np.uint8)).save(tmp_path / "red.png")
    as_grey = read_images(tmp_path / "red.png", GREY28)
    assert as_grey.images.unique().tolist() == [76]  # ITU-R 601-2: 0.299 * 255
    assert as_grey.describe() == ("1 of 1 images converted from RGB to L",)


def test_resize_stretches_and_center_crop_keeps_the_aspect(tmp_path):
    """A 64 wide x 32 high image: left half black, right half white, with a grey stripe 16 px wide in the centre."""
    array = np.zeros((32, 64), dtype=np.uint8)
    array[:, 32:] = 255
    array[:, 24:40] = 128
    Image.fromarray(array).save(tmp_path / "wide.png")
    resized = read_images(tmp_path / "wide.png", ImageContract(1, 16, 16)).images[0, 0].numpy()
    cropped_set = read_images(tmp_path / "wide.png", ImageContract(1, 16, 16, "center-crop"))
    cropped = cropped_set.images[0, 0].numpy()
    # Resized: the stripe is a quarter of the width; centre-cropped (the middle 32 columns): half of it.
    grey_columns = lambda image: int(((image >= 100) & (image <= 160)).all(axis=0).sum())
    assert grey_columns(resized) <= 4 and grey_columns(cropped) >= 6
    assert resized[:, 0].max() == 0 and resized[:, -1].min() == 255
    middle = Image.fromarray(array[:, 16:48]).resize((16, 16), Image.Resampling.BILINEAR)
    assert np.array_equal(cropped, np.asarray(middle))
    assert cropped_set.describe() == ("1 of 1 images centre-cropped and resized from 32x64 to 16x16",)
    # Antialiased: a 1-pixel checkerboard shrunk 4 times is flat grey, not aliased stripes.
    checker = ((np.indices((64, 64)).sum(axis=0) % 2) * 255).astype(np.uint8)
    Image.fromarray(checker).save(tmp_path / "checker.png")
    small = read_images(tmp_path / "checker.png", ImageContract(1, 16, 16)).images.numpy().astype(int)
    assert np.abs(small - 128).max() <= 2


def test_a_contract_follows_a_dataset_description():
    from scanflow.data import dataset_info

    assert ImageContract.of(dataset_info("cifar10"), "center-crop") == ImageContract(3, 32, 32, "center-crop")
    assert ImageContract.of(dataset_info("fashion-mnist")).image_shape == (1, 28, 28)


def test_a_bad_contract_or_policy_is_refused():
    with pytest.raises(InvalidBatchError, match="1 \\(grey\\) or 3 \\(RGB\\) channels, got 4"):
        ImageContract(4, 28, 28)
    with pytest.raises(InvalidBatchError, match="unknown fit policy 'stretch'"):
        ImageContract(1, 28, 28, "stretch")  # type: ignore[arg-type]
    with pytest.raises(InvalidBatchError, match="unknown bad-file policy 'ignore'"):
        read_images("/nonexistent", GREY28, on_bad="ignore")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ bad files


def test_every_bad_file_is_refused_by_name_with_its_reason(tmp_path):
    _save(tmp_path / "good.png")
    reasons = _bad_files(tmp_path)
    with pytest.raises(InvalidBatchError) as raised:
        read_images(tmp_path, GREY28)
    message = str(raised.value)
    assert isinstance(raised.value, ScanflowError)
    assert message.startswith(f"{len(reasons)} of {len(reasons) + 1} image files in {tmp_path} are unusable: ")
    for name, reason in reasons.items():
        assert f"{name} ({reason}" in message, name
    assert message.endswith("replace or remove them, or read with on_bad='skip' to leave them out and list them")


def test_every_bad_file_is_skipped_and_listed_under_the_skip_policy(tmp_path):
    _save(tmp_path / "good.png")
    reasons = _bad_files(tmp_path)
    result = read_images(tmp_path, GREY28, on_bad="skip")
    assert result.names == ("good.png",) and result.images.shape == (1, 1, 28, 28)
    assert [item.name for item in result.skipped] == sorted(reasons)
    for item in result.skipped:
        assert reasons[item.name] in item.reason
    assert result.describe()[0].startswith(f"{len(reasons)} bad files skipped: empty.png (empty file (0 bytes)); ")


def test_skipping_keeps_labels_aligned_with_the_images_left(tmp_path):
    _save(tmp_path / "a/1.png", seed=1)
    (tmp_path / "a/2.png").write_bytes(b"")
    _save(tmp_path / "b/1.png", seed=3)
    result = read_images(tmp_path, GREY28, on_bad="skip")
    assert result.names == ("a/1.png", "b/1.png") and result.labels.tolist() == [0, 1]
    assert result.skipped == (BadFile("a/2.png", "empty file (0 bytes)"),)
    assert np.array_equal(result.images[1, 0].numpy(), np.asarray(Image.open(tmp_path / "b/1.png")))


def test_a_folder_of_only_bad_files_is_refused_under_either_policy(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    for policy in ("skip", "refuse"):
        with pytest.raises(InvalidBatchError, match=r"1 of 1 image files .* are unusable \(every image file\): a.png \(empty file \(0 bytes\)\); replace or remove them$"):
            read_images(tmp_path, GREY28, on_bad=policy)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_decompression_bomb_is_refused_by_name_under_either_policy(tmp_path):
    _save(tmp_path / "good.png")
    _png_header_only(tmp_path / "bomb.png", 30_000, 30_000)  # 900 M pixels: over twice Pillow's limit
    _png_header_only(tmp_path / "large.png", 10_000, 10_000)  # 100 M pixels: over Pillow's warning limit
    for policy in ("skip", "refuse"):
        with pytest.raises(InvalidBatchError, match=r"2 files in .* are refused whatever the bad-file policy: bomb.png \(decompression bomb.*\); large.png \(decompression bomb: 10000x10000 = 100000000 pixels"):
            read_images(tmp_path, GREY28, on_bad=policy)
    _save(tmp_path / "small/a.png", (100, 100))
    with pytest.raises(InvalidBatchError, match=r"a.png \(decompression bomb: 100x100 = 10000 pixels, over the limit of 9999\)"):
        read_images(tmp_path / "small", GREY28, max_pixels=9999)


# ------------------------------------------------------------------------------------------------ numpy files


def test_npz_with_labels_and_classes_is_read_and_converted(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "b.npz", images=images, labels=np.array([0, 1, 2, 1, 0]), classes=np.array(["x", "y", "z"]))
    result = read_images(tmp_path / "b.npz", RGB32)
    assert result.images.shape == (5, 3, 32, 32) and result.labels.tolist() == [0, 1, 2, 1, 0]
    assert result.classes == ("x", "y", "z") and result.names[0] == "b.npz[0]"
    assert result.describe() == ("5 of 5 images resized from 28x28 to 32x32", "5 of 5 images converted from L to RGB")
    same = read_images(tmp_path / "b.npz", GREY28)
    assert same.conversions == () and torch.equal(same.images, torch.from_numpy(images))
    with pytest.raises(InvalidBatchError, match=r"names its classes x, y, z but the given classes are x, z, y: pass the same class list"):
        read_images(tmp_path / "b.npz", GREY28, classes=["x", "z", "y"])
    np.savez(tmp_path / "unlabelled.npz", images=images[:, 0])
    assert read_images(tmp_path / "unlabelled.npz", GREY28).labels is None


def test_bad_npz_and_npy_files_are_refused_with_the_fix(tmp_path):
    images = np.zeros((3, 1, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "nolabel.npz", pixels=images)
    with pytest.raises(InvalidBatchError, match=r"holds the arrays pixels but no 'images': save it with numpy.savez"):
        read_images(tmp_path / "nolabel.npz", GREY28)
    np.savez(tmp_path / "labels.npz", images=images, labels=np.array([0, 5, 1]), classes=np.array(["a", "b"]))
    with pytest.raises(InvalidBatchError, match=r"labels run from 0 to 5, expected 0..1"):
        read_images(tmp_path / "labels.npz", GREY28)
    np.savez(tmp_path / "float.npz", images=images.astype(np.float32))
    with pytest.raises(InvalidBatchError, match=r"float.npz: expected uint8 pixel values 0..255, got float32"):
        read_images(tmp_path / "float.npz", GREY28)
    np.savez(tmp_path / "objects.npz", images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InvalidBatchError, match=r"Python objects, which are never loaded"):
        read_images(tmp_path / "objects.npz", GREY28)
    np.save(tmp_path / "b.npy", np.zeros((2, 5, 8, 8), dtype=np.uint8))
    with pytest.raises(InvalidBatchError, match=r"holds 5-channel images"):
        read_images(tmp_path / "b.npy", GREY28)
    (tmp_path / "fake.npy").write_text("not numpy")
    with pytest.raises(InvalidBatchError, match=r"is not a .npy file \(no numpy header\)"):
        read_images(tmp_path / "fake.npy", GREY28)


def test_npy_rgb_is_converted_like_an_image_file(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (2, 3, 64, 48), dtype=np.uint8)
    np.save(tmp_path / "b.npy", images)
    Image.fromarray(images[0].transpose(1, 2, 0)).save(tmp_path / "first.png")
    from_array = read_images(tmp_path / "b.npy", GREY28)
    from_file = read_images(tmp_path / "first.png", GREY28)
    assert torch.equal(from_array.images[0], from_file.images[0])
    assert from_array.describe() == ("2 of 2 images resized from 64x48 to 28x28", "2 of 2 images converted from RGB to L")


# ------------------------------------------------------------------------------------------------ streams


def test_stream_sub_folders_are_batches_in_name_order_and_resume_where_they_stopped(tmp_path):
    for name in ["b2/x.png", "b1/z.png", "b1/y.png", "b3/cat/a.png", ".tmp/a.png", "b1/notes.txt"]:
        _save(tmp_path / name) if name.endswith(".png") else (tmp_path / name).write_text("n")
    (tmp_path / "b4").mkdir()  # still empty: not a batch yet
    units = list_batch_units(tmp_path)
    assert [(u.key, u.files) for u in units] == [("b1", ("b1/y.png", "b1/z.png")), ("b2", ("b2/x.png",)), ("b3", ("b3/cat/a.png",))]
    first = read_batch_unit(units[0], GREY28)
    assert first.names == ("y.png", "z.png") and first.ignored_other == 1 and first.source == f"{tmp_path}/b1"
    labelled = read_batch_unit(units[2], GREY28)
    assert labelled.classes == ("cat",) and labelled.labels.tolist() == [0]
    processed = set(units[0].files)
    _save(tmp_path / "b0/late.png")  # a folder sorting before the processed one still comes
    assert [u.key for u in list_batch_units(tmp_path, processed=processed)] == ["b0", "b2", "b3"]


def test_flat_stream_files_are_cut_into_groups_and_an_incomplete_group_waits(tmp_path):
    for i in range(7):
        _save(tmp_path / f"img{i:03d}.png", seed=i)
    (tmp_path / "index.json").write_text("{}")
    units = list_batch_units(tmp_path, files_per_batch=3)
    assert [u.files for u in units] == [("img000.png", "img001.png", "img002.png"), ("img003.png", "img004.png", "img005.png")]
    assert units[0].key == "img000.png"
    batch = read_batch_unit(units[1], GREY28)
    assert batch.names == units[1].files and batch.images.shape == (3, 1, 28, 28)
    processed = set(units[0].files) | set(units[1].files)
    for i in range(7, 9):
        _save(tmp_path / f"img{i:03d}.png", seed=i)
    assert [u.files for u in list_batch_units(tmp_path, files_per_batch=3, processed=processed)] == [("img006.png", "img007.png", "img008.png")]
    with pytest.raises(InvalidBatchError, match="files_per_batch must be 1 or more"):
        list_batch_units(tmp_path, files_per_batch=0)
    with pytest.raises(InvalidBatchError, match="is not a folder"):
        list_batch_units(tmp_path / "img000.png")


def test_a_thousand_small_pngs_are_read(tmp_path):
    """Reads 1,000 28x28 PNGs (the speed is measured by hand, not asserted)."""
    for i in range(1000):
        _save(tmp_path / f"{i % 10}" / f"{i:04d}.png", seed=i)
    result = read_images(tmp_path, GREY28)
    assert result.images.shape == (1000, 1, 28, 28) and result.labels.bincount().tolist() == [100] * 10

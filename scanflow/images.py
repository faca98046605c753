"""Images from folders, numpy files and S3 prefixes, converted to a model's input contract.

:func:`read_images` reads one source into an :class:`ImageSet` (``uint8 [N, C, H, W]``):

- a folder of image files. Class sub-folders (torchvision's ``ImageFolder`` layout,
  ``root/<class>/<file>``, nested deeper allowed) carry labels: class names are the
  sorted sub-folder names, or the caller's ``classes`` in the caller's order. A flat
  folder is unlabelled. A folder with both loose files and sub-folders is refused;
- a ``.npy`` file (checked by :func:`scanflow.data.load_batch_file`) or a ``.npz`` file
  holding an ``images`` array and optionally ``labels`` (int) and ``classes`` (str);
- ``s3://bucket/prefix/``: every object below the prefix, laid out like a folder, read
  through :class:`scanflow.storage.S3Store`.

Files are read in sorted order of their relative paths (``/``-separated). Hidden files
and folders (a name starting with ``.``) and files whose extension is not one of
:data:`IMAGE_EXTENSIONS` are ignored and counted. Every image becomes 8-bit grey or RGB
(palette, 1-bit, 16-bit, CMYK, YCbCr and alpha modes are converted; alpha is dropped as
torchvision's loader does; 16-bit values are scaled to 0..255; grey is RGB repeated, RGB
to grey is Pillow's ITU-R 601-2 luma), then fitted to the contract's size by its
``fit`` policy (see :class:`ImageContract`). Every conversion is counted in
``ImageSet.conversions``. Multi-frame files give their first frame; EXIF orientation is
not applied (as in torchvision).

A file that cannot be used (zero bytes, not an image, truncated or corrupt, an
unsupported mode such as 32-bit float, unreadable) is a :class:`BadFile`; with
``on_bad="refuse"`` (the default) the read raises
:class:`~scanflow.errors.InvalidBatchError` naming every bad file, with ``"skip"`` the
file is left out and listed in ``ImageSet.skipped``. An image larger than ``max_pixels``
(Pillow's decompression-bomb limit by default) is refused under either policy, before
its pixels are decoded.

:func:`list_batch_units` and :func:`read_batch_unit` cut a stream root into batches.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from scanflow.errors import InvalidBatchError
from scanflow.models import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE, check_image_size

if TYPE_CHECKING:
    from scanflow.data import DatasetInfo
    from scanflow.storage import S3Store

__all__ = [
    "ARRAY_EXTENSIONS",
    "BadFile",
    "BatchUnit",
    "Conversion",
    "FIT_POLICIES",
    "IMAGE_EXTENSIONS",
    "ImageContract",
    "ImageSet",
    "ON_BAD_POLICIES",
    "list_batch_units",
    "model_contract",
    "read_batch_unit",
    "read_images",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
"""Extensions read as images (case ignored); torchvision's ``ImageFolder`` list plus GIF."""

ARRAY_EXTENSIONS: tuple[str, ...] = (".npy", ".npz")

Fit = Literal["resize", "center-crop"]
OnBad = Literal["skip", "refuse"]
FIT_POLICIES: tuple[str, ...] = ("resize", "center-crop")
ON_BAD_POLICIES: tuple[str, ...] = ("skip", "refuse")

_GREY_MODES = frozenset({"1", "L", "LA", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr"})
_PALETTE_MODES = frozenset({"P", "PA"})
_NAMES_SHOWN = 10


@dataclass(frozen=True)
class ImageContract:
    """What every image is converted to: ``channels`` (1 grey, 3 RGB) and ``height`` x ``width`` pixels.

    ``fit`` says how a different size becomes ``height x width``: ``"resize"`` (default)
    stretches the whole image with antialiased bilinear resampling; ``"center-crop"``
    first crops the largest centred box of the target's aspect ratio, then resizes it
    the same way (nothing is stretched; borders are lost).
    """

    channels: int
    height: int
    width: int
    fit: Fit = "resize"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise InvalidBatchError(f"an image contract has 1 (grey) or 3 (RGB) channels, got {self.channels}")
        if self.height < 1 or self.width < 1:
            raise InvalidBatchError(f"an image contract needs a positive size, got {self.height}x{self.width}")
        if self.fit not in FIT_POLICIES:
            raise InvalidBatchError(f"unknown fit policy {self.fit!r}: use one of {', '.join(FIT_POLICIES)}")

    @classmethod
    def of(cls, info: DatasetInfo, fit: Fit = "resize") -> ImageContract:
        """The contract of a dataset or model description (its channels, height and width)."""
        return cls(info.channels, info.height, info.width, fit)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """One image's shape as ``(C, H, W)``."""
        return (self.channels, self.height, self.width)


@dataclass(frozen=True)
class BadFile:
    """A file that gave no image: its name (relative to the source) and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class Conversion:
    """``count`` images changed from ``source`` to ``target``.

    ``kind`` is ``"mode"`` (``source``/``target`` are Pillow modes, e.g. ``"RGBA"`` to
    ``"RGB"``) or a fit policy (``"resize"``, ``"center-crop"``; sizes as ``"HxW"``).
    """

    kind: Literal["mode", "resize", "center-crop"]
    source: str
    target: str
    count: int

    def describe(self, total: int) -> str:
        """One sentence, e.g. ``"37 of 40 images resized from 64x48 to 32x32"``."""
        verb = {
            "mode": "converted",
            "resize": "resized",
            "center-crop": "centre-cropped and resized",
        }[self.kind]
        return f"{self.count} of {total} images {verb} from {self.source} to {self.target}"


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images read from one source, in the order of ``names``.

    ``images`` is ``uint8 [N, C, H, W]``; ``labels`` is ``int64 [N]`` indexing ``classes``
    (None for an unlabelled source; ``classes`` may still be the caller's list);
    ``names`` are the files' paths relative to ``source`` (or ``"<file>[i]"`` for arrays).
    ``conversions`` counts what was changed to meet the contract, ``skipped`` lists the
    bad files left out, ``ignored_hidden`` and ``ignored_other`` count the hidden files
    and the files with other extensions that were not read.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: tuple[str, ...] | None
    names: tuple[str, ...]
    source: str
    conversions: tuple[Conversion, ...] = ()
    skipped: tuple[BadFile, ...] = ()
    ignored_hidden: int = 0
    ignored_other: int = 0

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise InvalidBatchError(f"ImageSet.images must be uint8 [N, C, H, W], got {self.images.dtype} {list(self.images.shape)}")
        if len(self.names) != len(self.images):
            raise InvalidBatchError(f"ImageSet has {len(self.images)} images but {len(self.names)} names")
        if self.labels is not None and (self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),)):
            raise InvalidBatchError(f"ImageSet.labels must be int64 [{len(self.images)}], got {self.labels.dtype} {list(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """One image's shape as ``(C, H, W)``."""
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    def describe(self) -> tuple[str, ...]:
        """What a run should say about this read: conversions, skipped and ignored files, one line each."""
        lines = [conversion.describe(len(self)) for conversion in self.conversions]
        if self.skipped:
            lines.append(f"{len(self.skipped)} bad files skipped: {_list_bad(self.skipped)}")
        if self.ignored_hidden:
            lines.append(f"{self.ignored_hidden} hidden files ignored")
        if self.ignored_other:
            lines.append(f"{self.ignored_other} files with other extensions ignored")
        return tuple(lines)


@dataclass(frozen=True)
class BatchUnit:
    """One batch of a stream: image files under ``root`` (a folder or ``s3://`` prefix).

    ``key`` names the batch (its sub-folder, or its first file for a group of files);
    ``files`` are the files' paths relative to ``root``, sorted.
    """

    root: str
    key: str
    files: tuple[str, ...]
    grouped: bool
    ignored_hidden: int = 0
    ignored_other: int = 0


# ------------------------------------------------------------------------------------------------ listing


@dataclass(frozen=True)
class _Listing:
    names: tuple[str, ...]
    hidden: int
    other: int
    other_extensions: tuple[str, ...]


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _classify(relative: Sequence[str]) -> _Listing:
    """Sort relative paths into image files, hidden ones and other extensions."""
    names, hidden, other, extensions = [], 0, 0, set()
    for name in relative:
        if any(part.startswith(".") for part in name.split("/")):
            hidden += 1
        elif _is_image_name(name):
            names.append(name)
        else:
            other += 1
            extensions.add(os.path.splitext(name)[1].lower() or "(none)")
    return _Listing(tuple(sorted(names)), hidden, other, tuple(sorted(extensions)))


def _walk(root: Path) -> list[str]:
    """Every file (and dangling link) below ``root`` as a ``/``-separated relative path."""
    found = []
    for directory, _, files in os.walk(root):
        prefix = Path(directory).relative_to(root).as_posix()
        found += [name if prefix == "." else f"{prefix}/{name}" for name in files]
    return found


def _s3_location(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as (bucket, prefix ending in ``/`` or empty)."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise InvalidBatchError(f"{uri!r} names no bucket: write s3://BUCKET/PREFIX/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _require_store(store: S3Store | None, uri: str) -> S3Store:
    if store is None:
        raise InvalidBatchError(f"reading {uri} needs an S3 store: configure the ScanflowStorage block or SCANFLOW_S3_BUCKET")
    return store


def _s3_relative(store: S3Store, uri: str) -> list[str]:
    bucket, prefix = _s3_location(uri)
    # Keys ending in "/" are folder markers some tools write, not objects.
    return [key[len(prefix):] for key in store.in_bucket(bucket).keys(prefix) if not key.endswith("/")]


def _s3_fetcher(store: S3Store, uri: str) -> Callable[[str], bytes]:
    bucket, prefix = _s3_location(uri)
    bucket_store = store.in_bucket(bucket)
    return lambda name: bucket_store.get_bytes(prefix + name)


# ------------------------------------------------------------------------------------------------ decoding


class _Refused(Exception):
    """A file that is never read, whatever the policy (a decompression bomb)."""


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Decode ``data`` fully; raise ``_Refused`` for a bomb and ``ValueError`` with the reason otherwise."""
    if not data:
        raise ValueError("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise _Refused(f"decompression bomb ({error})") from error
    except UnidentifiedImageError as error:
        raise ValueError("not an image Pillow can read") from error
    except Exception as error:  # noqa: BLE001  (a foreign file may break the parser in any way)
        raise ValueError(f"unreadable image header ({type(error).__name__}: {error})") from error
    width, height = image.size
    if width * height > max_pixels:
        raise _Refused(f"decompression bomb: {width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
    try:
        image.load()
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"truncated or corrupt image data ({type(error).__name__}: {error})") from error
    return image


def _to_mode(image: Image.Image, channels: int) -> Image.Image:
    """``image`` as 8-bit ``"L"`` (channels 1) or ``"RGB"`` (channels 3); ValueError for a mode with no such meaning."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        image = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    elif mode in _GREY_MODES:
        image = image.convert("L")
    elif mode in _PALETTE_MODES:
        image = image.convert("RGBA").convert("RGB")
    elif mode in _COLOUR_MODES:
        image = image.convert("RGB")
    else:
        raise ValueError(f"unsupported image mode {mode!r} (grey, RGB, RGBA, palette, CMYK, YCbCr and 16-bit are read)")
    target = "L" if channels == 1 else "RGB"
    return image if image.mode == target else image.convert(target)


def _crop_box(width: int, height: int, contract: ImageContract) -> tuple[float, float, float, float]:
    """The largest centred box of ``contract``'s aspect ratio inside a ``width x height`` image."""
    target = contract.width / contract.height
    if width / height > target:
        kept = height * target
        return ((width - kept) / 2, 0.0, (width + kept) / 2, float(height))
    kept = width / target
    return (0.0, (height - kept) / 2, float(width), (height + kept) / 2)


def _fit(image: Image.Image, contract: ImageContract) -> Image.Image:
    size = (contract.width, contract.height)
    if image.size == size:
        return image
    box = _crop_box(*image.size, contract) if contract.fit == "center-crop" else None
    return image.resize(size, Image.Resampling.BILINEAR, box=box, reducing_gap=None)


def _pixels(image: Image.Image) -> np.ndarray:
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _size(width: int, height: int) -> str:
    return f"{height}x{width}"


class _Tally:
    """Counts the mode and size conversions of a read."""

    def __init__(self, contract: ImageContract) -> None:
        self.contract = contract
        self.modes: Counter[tuple[str, str]] = Counter()
        self.sizes: Counter[str] = Counter()

    def note(self, mode: str, width: int, height: int) -> None:
        target_mode = "L" if self.contract.channels == 1 else "RGB"
        if mode != target_mode:
            self.modes[(mode, target_mode)] += 1
        if (width, height) != (self.contract.width, self.contract.height):
            self.sizes[_size(width, height)] += 1

    def conversions(self) -> tuple[Conversion, ...]:
        target = _size(self.contract.width, self.contract.height)
        fit_kind = self.contract.fit
        modes = [Conversion("mode", a, b, n) for (a, b), n in sorted(self.modes.items())]
        sizes = [Conversion(fit_kind, a, target, n) for a, n in sorted(self.sizes.items())]
        return tuple(sizes + modes)


def _list_bad(bad: Sequence[BadFile]) -> str:
    shown = "; ".join(f"{item.name} ({item.reason})" for item in bad[:_NAMES_SHOWN])
    return shown + (f"; and {len(bad) - _NAMES_SHOWN} more" if len(bad) > _NAMES_SHOWN else "")


def _check_policy(on_bad: str) -> None:
    if on_bad not in ON_BAD_POLICIES:
        raise InvalidBatchError(f"unknown bad-file policy {on_bad!r}: use 'refuse' (stop on a bad file) or 'skip' (leave it out and list it)")


# ------------------------------------------------------------------------------------------------ labels


def _layout(names: Sequence[str], source: str) -> bool:
    """True when every file is in a class sub-folder, False when none is; refuse a mix."""
    nested = [name for name in names if "/" in name]
    if not nested:
        return False
    if len(nested) != len(names):
        loose = [name for name in names if "/" not in name]
        raise InvalidBatchError(
            f"{source} holds both loose image files ({', '.join(loose[:_NAMES_SHOWN])}) and class sub-folders: "
            "put every image in a class sub-folder (labelled) or all of them directly in the folder (unlabelled)"
        )
    return True


def _labels(names: Sequence[str], classes: Sequence[str] | None, source: str) -> tuple[list[int], tuple[str, ...]]:
    """Each file's label from its top folder, and the class names in label order."""
    folders = [name.split("/", 1)[0] for name in names]
    names_in_order = tuple(classes) if classes is not None else tuple(sorted(set(folders)))
    index = {name: i for i, name in enumerate(names_in_order)}
    unknown = sorted(set(folders) - set(index))
    if unknown:
        raise InvalidBatchError(
            f"{source} has class folders that are not among the {len(names_in_order)} given classes: "
            f"{', '.join(unknown)}; rename those folders to class names ({', '.join(names_in_order[:_NAMES_SHOWN])}"
            f"{', ...' if len(names_in_order) > _NAMES_SHOWN else ''}) or add them to the class list"
        )
    return [index[folder] for folder in folders], names_in_order


def _check_classes(classes: Sequence[str] | None) -> tuple[str, ...] | None:
    if classes is None:
        return None
    result = tuple(str(name) for name in classes)
    duplicates = sorted(name for name, n in Counter(result).items() if n > 1)
    if not result or duplicates:
        raise InvalidBatchError(f"the class list must name each class once, got {len(result)} names (repeated: {', '.join(duplicates) or 'none'})")
    return result


# ------------------------------------------------------------------------------------------------ files


def _read_files(
    listing: _Listing,
    fetch: Callable[[str], bytes],
    source: str,
    contract: ImageContract,
    classes: tuple[str, ...] | None,
    on_bad: str,
    max_pixels: int,
) -> ImageSet:
    if not listing.names:
        ignored = f"{listing.hidden} hidden files and {listing.other} files with other extensions " \
                  f"({', '.join(listing.other_extensions) or 'none'})"
        raise InvalidBatchError(
            f"{source} holds no image files ({ignored} were ignored): put PNG or JPEG files there "
            f"(extensions read: {', '.join(IMAGE_EXTENSIONS)})"
        )
    labelled = _layout(listing.names, source)
    pixels = np.empty((len(listing.names), *contract.image_shape), dtype=np.uint8)
    kept: list[str] = []
    bad: list[BadFile] = []
    refused: list[BadFile] = []
    tally = _Tally(contract)
    for name in listing.names:
        try:
            image = _open(fetch(name), max_pixels)
            mode, (width, height) = image.mode, image.size
            pixels[len(kept)] = _pixels(_fit(_to_mode(image, contract.channels), contract))
        except _Refused as error:
            refused.append(BadFile(name, str(error)))
            continue
        except ValueError as error:
            bad.append(BadFile(name, str(error)))
            continue
        except ConnectionError:
            raise  # an S3 endpoint that stopped answering is not a bad file
        except OSError as error:
            bad.append(BadFile(name, f"cannot be read ({getattr(error, 'strerror', None) or error})"))
            continue
        tally.note(mode, width, height)
        kept.append(name)
    if refused:
        raise InvalidBatchError(
            f"{len(refused)} files in {source} are refused whatever the bad-file policy: {_list_bad(refused)}; "
            "remove them (an image over Pillow's pixel limit is a decompression bomb or not a photo to classify)"
        )
    if bad and (on_bad == "refuse" or not kept):
        everything = " (every image file)" if not kept else ""
        fix = "replace or remove them" + ("" if not kept else ", or read with on_bad='skip' to leave them out and list them")
        raise InvalidBatchError(f"{len(bad)} of {len(listing.names)} image files in {source} are unusable{everything}: {_list_bad(bad)}; {fix}")
    label_tensor, class_names = None, classes
    if labelled:
        labels, class_names = _labels(kept, classes, source)
        label_tensor = torch.tensor(labels, dtype=torch.int64)
    return ImageSet(
        images=torch.from_numpy(pixels[: len(kept)].copy() if len(kept) < len(pixels) else pixels),
        labels=label_tensor,
        classes=class_names,
        names=tuple(kept),
        source=source,
        conversions=tally.conversions(),
        skipped=tuple(bad),
        ignored_hidden=listing.hidden,
        ignored_other=listing.other,
    )


def _read_file_bytes(root: Path) -> Callable[[str], bytes]:
    return lambda name: (root / name).read_bytes()


# ------------------------------------------------------------------------------------------------ arrays


def _convert_array(batch: torch.Tensor, contract: ImageContract, source: str) -> tuple[torch.Tensor, tuple[Conversion, ...]]:
    """A validated uint8 ``[N, C, H, W]`` batch (C 1, 3 or 4 = RGBA) converted to ``contract``."""
    channels, height, width = (int(d) for d in batch.shape[1:])
    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    if channels not in modes:
        raise InvalidBatchError(
            f"{source} holds {channels}-channel images: send 1 (grey), 3 (RGB) or 4 (RGBA) channels in [N, C, H, W] order"
        )
    if batch.shape[1:] == contract.image_shape:
        return batch, ()
    tally = _Tally(contract)
    out = np.empty((len(batch), *contract.image_shape), dtype=np.uint8)
    array = batch.numpy()
    for i, image in enumerate(array):
        picture = Image.fromarray(image[0] if channels == 1 else np.ascontiguousarray(image.transpose(1, 2, 0)), mode=modes[channels])
        out[i] = _pixels(_fit(_to_mode(picture, contract.channels), contract))
        tally.note(modes[channels], width, height)
    return torch.from_numpy(out), tally.conversions()


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive.files:
                raise InvalidBatchError(
                    f"{path} holds the arrays {', '.join(archive.files) or '(none)'} but no 'images': "
                    "save it with numpy.savez(path, images=uint8_array, labels=int_array)"
                )
            images = archive["images"]
            labels = archive["labels"] if "labels" in archive.files else None
            classes = tuple(str(c) for c in archive["classes"].tolist()) if "classes" in archive.files else None
    except ValueError as error:
        reason = "it holds Python objects, which are never loaded" if "allow_pickle" in str(error) else str(error)
        raise InvalidBatchError(f"{path} is not a plain numpy archive ({reason}); save plain arrays with numpy.savez") from error
    except (OSError, EOFError) as error:
        raise InvalidBatchError(f"{path} is not a readable .npz archive ({error}); save it with numpy.savez") from error
    return images, labels, classes


def _check_labels(labels: np.ndarray, n: int, classes: tuple[str, ...] | None, path: Path) -> torch.Tensor:
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        raise InvalidBatchError(f"{path}: 'labels' must be {n} integers (one per image), got {labels.dtype} {list(labels.shape)}")
    if len(labels) and (labels.min() < 0 or (classes is not None and labels.max() >= len(classes))):
        bound = f"0..{len(classes) - 1} (indices into the {len(classes)} classes)" if classes is not None else "0 or more"
        raise InvalidBatchError(f"{path}: labels run from {labels.min()} to {labels.max()}, expected {bound}; fix the labels or the class list")
    return torch.from_numpy(labels.astype(np.int64))


def _read_array_file(path: Path, contract: ImageContract, classes: tuple[str, ...] | None) -> ImageSet:
    from scanflow.data import load_batch_file, validate_batch

    labels = None
    if path.suffix.lower() == ".npz":
        images, raw_labels, stored_classes = _read_npz(path)
        if classes is not None and stored_classes is not None and stored_classes != classes:
            raise InvalidBatchError(
                f"{path} names its classes {', '.join(stored_classes[:_NAMES_SHOWN])} but the given classes are "
                f"{', '.join(classes[:_NAMES_SHOWN])}: pass the same class list, or drop 'classes' from the archive"
            )
        classes = classes if classes is not None else stored_classes
        try:
            batch = validate_batch(images)
        except InvalidBatchError as error:
            raise InvalidBatchError(f"{path}: {error}") from error
        if raw_labels is not None:
            labels = _check_labels(raw_labels, len(batch), classes, path)
    else:
        batch = load_batch_file(path)
    converted, conversions = _convert_array(batch, contract, str(path))
    return ImageSet(
        images=converted.contiguous(),
        labels=labels,
        classes=classes,
        names=tuple(f"{path.name}[{i}]" for i in range(len(converted))),
        source=str(path),
        conversions=conversions,
    )


# ------------------------------------------------------------------------------------------------ public


def model_contract(channels: int, height: int, width: int, fit: Fit = "resize") -> ImageContract:
    """The contract that brings ``height x width`` images to a size the models are built for.

    Images of at most :data:`~scanflow.models.MAX_IMAGE_SIDE` pixels a side keep their size. Larger ones,
    by ``fit``:

    - ``"resize"``: the whole image is shrunk, aspect ratio kept, to a longer side of ``MAX_IMAGE_SIDE`` (the
      shorter one rounded, at least :data:`~scanflow.models.MIN_IMAGE_SIDE`): 224x224 to 96x96, 300x150 to 96x48;
    - ``"center-crop"``: each side is capped at ``MAX_IMAGE_SIDE`` (300x150 to 96x96, 120x80 to 96x80), and the
      largest centred box of that aspect ratio is cropped and resized to it: nothing is stretched, borders are lost.

    Raises:
        InvalidBatchError: ``channels`` is not 1 or 3, or ``fit`` is unknown.
        UnsupportedImageSizeError: a side is below ``MIN_IMAGE_SIDE``.
    """
    if fit not in FIT_POLICIES:
        raise InvalidBatchError(f"unknown fit policy {fit!r}: use one of {', '.join(FIT_POLICIES)}")
    if max(height, width) > MAX_IMAGE_SIDE:
        if fit == "resize":
            scale = MAX_IMAGE_SIDE / max(height, width)
            height, width = (max(MIN_IMAGE_SIDE, min(MAX_IMAGE_SIDE, round(side * scale))) for side in (height, width))
        else:
            height, width = min(height, MAX_IMAGE_SIDE), min(width, MAX_IMAGE_SIDE)
    contract = ImageContract(channels, height, width, fit)
    check_image_size(channels, height, width)
    return contract


def read_images(
    source: str | Path,
    contract: ImageContract,
    *,
    classes: Sequence[str] | None = None,
    on_bad: OnBad = "refuse",
    store: S3Store | None = None,
    max_pixels: int | None = None,
) -> ImageSet:
    """Read a folder, a ``.npy``/``.npz`` file, one image file or an ``s3://bucket/prefix/`` into ``contract``.

    ``classes`` fixes the class names and label order (class sub-folders must be among
    them); ``on_bad`` is ``"refuse"`` or ``"skip"``; ``store`` is needed for ``s3://``
    (its endpoint and credentials, any bucket); ``max_pixels`` defaults to Pillow's
    ``Image.MAX_IMAGE_PIXELS``. Raises :class:`~scanflow.errors.InvalidBatchError` for a
    missing or empty source, bad files under ``"refuse"``, a decompression bomb, a loose
    file beside class folders or an unknown class folder; S3 failures raise
    :class:`~scanflow.storage.StorageUnavailableError`.
    """
    _check_policy(on_bad)
    given = _check_classes(classes)
    limit = int(max_pixels if max_pixels is not None else (Image.MAX_IMAGE_PIXELS or 2**62))
    text = str(source)
    if text.startswith("s3://"):
        s3 = _require_store(store, text)
        return _read_files(_classify(_s3_relative(s3, text)), _s3_fetcher(s3, text), text, contract, given, on_bad, limit)
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_files(_classify(_walk(path)), _read_file_bytes(path), str(path), contract, given, on_bad, limit)
    if not path.is_file():
        raise InvalidBatchError(f"{path} does not exist: pass a folder of images, a .npy/.npz file or an s3://bucket/prefix/")
    if path.suffix.lower() in ARRAY_EXTENSIONS:
        return _read_array_file(path, contract, given)
    if _is_image_name(path.name):
        return _read_files(_classify([path.name]), _read_file_bytes(path.parent), str(path), contract, given, on_bad, limit)
    raise InvalidBatchError(
        f"{path} is neither an image ({', '.join(IMAGE_EXTENSIONS)}) nor a numpy file (.npy, .npz): "
        "pass a folder of images, a .npy/.npz file or an s3://bucket/prefix/"
    )


def list_batch_units(
    root: str | Path,
    *,
    files_per_batch: int | None = None,
    processed: Collection[str] = (),
    store: S3Store | None = None,
) -> tuple[BatchUnit, ...]:
    """The batches of a stream root (a folder or ``s3://bucket/prefix/``) not yet processed, oldest name first.

    Without ``files_per_batch`` each non-hidden sub-folder is a batch (sorted by name;
    files directly under ``root`` belong to no batch); with it, the image files directly under ``root`` are taken in sorted order, in
    groups of ``files_per_batch``, and a last incomplete group waits for more files.
    ``processed`` holds file paths relative to ``root`` (``BatchUnit.files``) already
    handled: they are left out, so a caller that records ``files`` after each batch
    resumes without repeating or skipping one; a sub-folder with no new image file
    yields no batch. Listing reads no image.
    """
    text = str(root)
    if files_per_batch is not None and files_per_batch < 1:
        raise InvalidBatchError(f"files_per_batch must be 1 or more, got {files_per_batch}")
    if text.startswith("s3://"):
        bucket, prefix = _s3_location(text)
        relative = _s3_relative(_require_store(store, text), text)
        text = f"s3://{bucket}/{prefix}"
    else:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise InvalidBatchError(f"stream root {path} is not a folder: pass a folder (or s3://bucket/prefix/) that receives batches")
        relative, text = _walk(path), str(path)
    done = frozenset(processed)
    if files_per_batch is None:
        return _folder_units(text, relative, done)
    return _group_units(text, relative, done, files_per_batch)


def _folder_units(root: str, relative: Sequence[str], done: frozenset[str]) -> tuple[BatchUnit, ...]:
    by_folder: dict[str, list[str]] = {}
    for name in relative:
        if "/" in name:
            by_folder.setdefault(name.split("/", 1)[0], []).append(name.split("/", 1)[1])
    units = []
    for folder in sorted(by_folder):
        if folder.startswith("."):
            continue
        listing = _classify(by_folder[folder])
        new = tuple(f"{folder}/{name}" for name in listing.names if f"{folder}/{name}" not in done)
        if new:
            units.append(BatchUnit(root, folder, new, False, listing.hidden, listing.other))
    return tuple(units)


def _group_units(root: str, relative: Sequence[str], done: frozenset[str], size: int) -> tuple[BatchUnit, ...]:
    listing = _classify([name for name in relative if "/" not in name])
    new = [name for name in listing.names if name not in done]
    groups = [tuple(new[i : i + size]) for i in range(0, len(new) - size + 1, size)]
    return tuple(BatchUnit(root, group[0], group, True) for group in groups)


def read_batch_unit(
    unit: BatchUnit,
    contract: ImageContract,
    *,
    classes: Sequence[str] | None = None,
    on_bad: OnBad = "refuse",
    store: S3Store | None = None,
    max_pixels: int | None = None,
) -> ImageSet:
    """Read exactly ``unit.files`` as :func:`read_images` reads a folder (same policies and errors).

    Names in the result are relative to the unit's folder (``cat/x.png``), so class
    sub-folders inside a batch folder carry labels; ``source`` is the unit's location.
    """
    _check_policy(on_bad)
    given = _check_classes(classes)
    limit = int(max_pixels if max_pixels is not None else (Image.MAX_IMAGE_PIXELS or 2**62))
    base = "" if unit.grouped else f"{unit.key}/"
    names = tuple(name.removeprefix(base) for name in unit.files)
    location = unit.root if unit.grouped else f"{unit.root.rstrip('/')}/{unit.key}"
    if unit.root.startswith("s3://"):
        fetch = _s3_fetcher(_require_store(store, unit.root), location)
    else:
        fetch = _read_file_bytes(Path(location))
    listing = _Listing(tuple(sorted(names)), unit.ignored_hidden, unit.ignored_other, ())
    return _read_files(listing, fetch, location, contract, given, on_bad, limit)


def read_batch(path: str | Path, info: DatasetInfo) -> ImageSet:
    """A production batch in a model's contract (`info`): a ``.npy`` file of uint8 images (checked by
    :func:`scanflow.data.load_batch_file`: its shape must already be the model's), or a folder of image files, one
    image file or an ``.npz`` (read by :func:`read_images`: converted to the contract, every conversion recorded,
    bad files refused by name). For an ``s3://`` prefix call :func:`read_images` with a store."""
    from scanflow.data import load_batch_file

    path = Path(path).expanduser()
    if path.suffix.lower() == ".npy" or not (path.is_dir() or path.suffix.lower() == ".npz" or _is_image_name(path.name)):
        images = load_batch_file(path, info)
        return ImageSet(images, None, None, tuple(f"{path.name}[{i}]" for i in range(len(images))), str(path))
    return read_images(path, ImageContract.of(info), classes=info.classes)

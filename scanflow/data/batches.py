"""Production batches checked before a model sees them: uint8 ``[N, C, H, W]`` pixels 0..255.

:func:`validate_batch` returns a numpy array or torch tensor as that tensor, or raises
:class:`~scanflow.errors.InvalidBatchError` with a message that names the problem and its fix: not an array,
wrong rank, empty, NaN, not uint8, or an image shape other than the model's. :class:`DatasetInfo` describes a
dataset (classes, image geometry, origin); its ``image_shape`` is the shape a batch is checked against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from scanflow.errors import InvalidBatchError

__all__ = [
    "DatasetInfo",
    "validate_batch",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: class names in label order, image geometry and origin."""

    name: str
    classes: tuple[str, ...]
    channels: int
    height: int
    width: int
    source: str

    @property
    def n_classes(self) -> int:
        """Number of classes; labels run from 0 to ``n_classes - 1``."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """One image's shape as ``(C, H, W)`` in pixels."""
        return (self.channels, self.height, self.width)


# ---------------------------------------------------------------- batch validation


def _format_shape(dims: Sequence[int]) -> str:
    return "[N, " + ", ".join(str(d) for d in dims) + "]"


def _dtype_message(dtype_name: str, is_float: bool, is_torch: bool) -> str:
    if is_float:
        fix = "(x * 255).round().to(torch.uint8)" if is_torch else "(x * 255).round().astype('uint8')"
        return f"expected uint8 pixel values 0..255, got {dtype_name}; convert with {fix} if your values are in [0, 1]"
    fix = "x.to(torch.uint8)" if is_torch else "x.astype('uint8')"
    return f"expected uint8 pixel values 0..255, got {dtype_name}; convert with {fix} once values are within 0..255"


def _shape_message(shape: tuple[int, ...], original_rank: int, info: DatasetInfo) -> str:
    message = (
        f"this model expects images of shape {_format_shape(info.image_shape)} ({info.name}), "
        f"got {_format_shape(shape[1:])}"
    )
    c, h, w = info.image_shape
    if original_rank == 4 and shape[1:] == (h, w, c):
        return message + (
            "; the batch looks channels-last, transpose it with x.permute(0, 3, 1, 2) / x.transpose(0, 3, 1, 2)"
        )
    if original_rank == 3:
        message += " (an [N, H, W] batch is read as 1 channel)"
    return message + f"; send {c}-channel {h}x{w} images like the data the model was trained on"


def validate_batch(images: np.ndarray | torch.Tensor, info: DatasetInfo | None = None) -> torch.Tensor:
    """Check a production batch and return it as a uint8 ``[N, C, H, W]`` tensor.

    ``[N, H, W]`` input is given one channel. The result shares memory with a torch input
    or a writable numpy input. Raises :class:`~scanflow.errors.InvalidBatchError` whose
    message names the problem and the fix: not an array, wrong rank, empty, NaN, not
    uint8, or (with ``info``) an image shape other than ``info.image_shape``.
    """
    if isinstance(images, np.ndarray):
        is_torch, dtype_name = False, images.dtype.name
        is_float = images.dtype.kind in "fc"
    elif isinstance(images, torch.Tensor):
        is_torch, dtype_name = True, str(images.dtype).removeprefix("torch.")
        is_float = images.is_floating_point() or images.is_complex()
    else:
        raise InvalidBatchError(
            f"expected a numpy array or torch tensor of images, got {type(images).__name__}; "
            "convert with numpy.asarray(x, dtype='uint8')"
        )
    shape = tuple(int(d) for d in images.shape)
    if len(shape) not in (3, 4):
        raise InvalidBatchError(
            f"expected a batch shaped [N, C, H, W] or [N, H, W], got shape {list(shape)} (rank {len(shape)}); "
            "for a single image add a batch axis with x[None]"
        )
    if shape[0] == 0:
        raise InvalidBatchError(f"the batch is empty (N = 0, shape {list(shape)}); send at least one image")
    if is_float:
        nan_images = _count_nan_images(images)
        if nan_images:
            raise InvalidBatchError(
                f"the batch contains NaN pixel values ({nan_images} of {shape[0]} images); "
                "drop or repair those images and send uint8 pixel values 0..255"
            )
    if dtype_name != "uint8":
        raise InvalidBatchError(_dtype_message(dtype_name, is_float, is_torch))
    tensor = _to_tensor(images)
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(1)
    if info is not None and tuple(tensor.shape[1:]) != info.image_shape:
        raise InvalidBatchError(_shape_message(tuple(tensor.shape), len(shape), info))
    return tensor.contiguous()


def _count_nan_images(images: np.ndarray | torch.Tensor) -> int:
    if isinstance(images, torch.Tensor):
        return int(torch.isnan(images).reshape(images.shape[0], -1).any(dim=1).sum())
    return int(np.isnan(images).reshape(images.shape[0], -1).any(axis=1).sum())


def _to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images
    array = images if images.flags.writeable else images.copy()
    return torch.from_numpy(np.ascontiguousarray(array))


"""Labelled image grids as PNG, for people: corruption galleries now, critical-sample grids for drift reviews."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

PADDING_PX = 4


def _to_pil(image: torch.Tensor, scale: int) -> Image.Image:
    """One uint8 [C, H, W] image (C = 1 or 3) as a PIL image, enlarged `scale` times with nearest neighbours."""
    array = image.detach().cpu().numpy()
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    mode_array = array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0))
    picture = Image.fromarray(mode_array, mode="L" if array.shape[0] == 1 else "RGB").convert("RGB")
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def image_grid(
    cells: Sequence[Sequence[torch.Tensor]],
    row_labels: Sequence[str] = (),
    column_labels: Sequence[str] = (),
    scale: int = 3,
) -> Image.Image:
    """A grid of images: `cells[r][c]` is a uint8 [C, H, W] or [K, C, H, W] tensor (K images side by side).

    Row labels are drawn at the left, column labels on top; every cell has the size of the largest one.
    """
    if not cells or not cells[0]:
        raise ValueError("image_grid needs at least one row with one cell")
    strips = [[_strip(cell, scale) for cell in row] for row in cells]
    cell_w = max(s.width for row in strips for s in row)
    cell_h = max(s.height for row in strips for s in row)
    font = ImageFont.load_default()
    label_w = max((int(font.getlength(label)) for label in row_labels), default=0) + (2 * PADDING_PX if row_labels else 0)
    label_h = (font.size + 2 * PADDING_PX) if column_labels else 0
    columns = max(len(row) for row in strips)
    canvas = Image.new(
        "RGB",
        (label_w + columns * (cell_w + PADDING_PX) + PADDING_PX, label_h + len(strips) * (cell_h + PADDING_PX) + PADDING_PX),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(column_labels):
        draw.text((label_w + PADDING_PX + c * (cell_w + PADDING_PX), PADDING_PX), label, fill="black", font=font)
    for r, row in enumerate(strips):
        top = label_h + PADDING_PX + r * (cell_h + PADDING_PX)
        if r < len(row_labels):
            draw.text((PADDING_PX, top + cell_h // 2 - font.size // 2), row_labels[r], fill="black", font=font)
        for c, strip in enumerate(row):
            canvas.paste(strip, (label_w + PADDING_PX + c * (cell_w + PADDING_PX), top))
    return canvas


def _strip(cell: torch.Tensor, scale: int) -> Image.Image:
    images = cell.unsqueeze(0) if cell.dim() == 3 else cell
    pictures = [_to_pil(image, scale) for image in images]
    strip = Image.new("RGB", (sum(p.width for p in pictures) + (len(pictures) - 1), pictures[0].height), "white")
    x = 0
    for picture in pictures:
        strip.paste(picture, (x, 0))
        x += picture.width + 1
    return strip


def save_png(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def corruption_gallery(
    images: torch.Tensor, names: Sequence[str], severities: Sequence[int] = (1, 2, 3, 4, 5), seed: int = 0, scale: int = 3
) -> Image.Image:
    """Rows: corruptions; columns: the clean images, then each severity. `images` is uint8 [K, C, H, W]."""
    from scanflow.corruptions import corrupt

    cells = [[images] + [corrupt(images, name, severity=s, seed=seed) for s in severities] for name in names]
    return image_grid(cells, row_labels=list(names), column_labels=["clean"] + [f"severity {s}" for s in severities], scale=scale)

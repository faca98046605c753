"""The 15 MNIST-C corruptions (Mu & Gilmer, 2019), re-implemented on numpy/scipy.

Scanflow uses these to simulate the drift a deployed digit classifier meets: each
corruption turns a clean batch into a shifted one, at one of five severities.

Severity 3 reproduces the parameter that MNIST-C published for that corruption
(the one used to build the MNIST-C data set). Severities 1, 2, 4 and 5 multiply a
single *strength* parameter by ``SEVERITY_FACTORS`` (x0.4, x0.7, x1, x1.3, x1.6),
so the mean absolute difference to the clean image grows strictly with severity.
Intensities are on the [0, 1] scale (uint8 batches are divided by 255 and
converted back). Pixel sizes are quoted for 28x28 images; they scale with ``min(H, W) / 28``
(columns with ``W / 28``, rows with ``H / 28`` where a corruption is anchored to
the image frame).

==============  =================================  =========  =========  =========  =========  =========
corruption      strength (units)                   sev 1      sev 2      sev 3      sev 4      sev 5
==============  =================================  =========  =========  =========  =========  =========
shot_noise      1/c; c = photons per unit value    c=7.5      c=4.29     c=3        c=2.31     c=1.88
impulse_noise   fraction of pixels set to 0 or 1   0.068      0.119      0.17       0.221      0.272
glass_blur      sigma (px) / fraction moved        0.28/0.2   0.49/0.35  0.7/0.5    0.91/0.65  1.12/0.8
motion_blur     sigma (px); radius 10/3 sigma      1.2        2.1        3          3.9        4.8
shear           shear angle (rad), random sign     0.16       0.28       0.4        0.52       0.64
scale           shrink = 1 - zoom                  0.12       0.21       0.3        0.39       0.48
rotate          angle (rad), random sign           0.16       0.28       0.4        0.52       0.64
brightness      added to HSV value                 0.2        0.35       0.5        0.65       0.8
translate       shift per axis (px), random sign   1.2        2.1        3          3.9        4.8
stripe          inverted band per side (x W)       0.1        0.175      0.25       0.325      0.4
fog             fractal weight c0                  1.2        2.1        3          3.9        4.8
spatter         wet fraction of liquid layer       0.2        0.35       0.5        0.65       0.8
dotted_line     stroke profile width (px)          0.92       1.61       2.3        2.99       3.68
zigzag          stroke profile width (px)          0.92       1.61       2.3        2.99       3.68
canny_edges     edge weight w, then growth r (px)  w=0.4      w=0.7      w=1        r=1        r=2
==============  =================================  =========  =========  =========  =========  =========

MNIST-C took each published value from a different level of its own severity
tables (e.g. shot noise from its level 5, glass blur from its level 1); here all of
them sit at severity 3. Clamps (zoom >= 0.1, band <= W/2, fractions <= 1) never
bind at these factors.

Where this departs from the MNIST-C code, and why:

* glass_blur: MNIST-C swaps pixels sequentially in a Python loop; here each of the
  2 rounds moves a fraction of the pixels to a uniformly random neighbour within
  1 px in one vectorised gather, so values may duplicate instead of strictly
  swapping. Scaling the blur alone would not be monotone: a light blur keeps the
  shuffled pixels sharp, which looks further from the clean image than a heavier one.
* motion_blur: the ImageMagick kernel (one-sided half-gaussian taps along the angle,
  edge pixels repeated) is rebuilt in numpy, since Wand is not a dependency.
* fog: the plasma map is generated at the image's own size (next power of two), not
  cropped from a 256 px map, so the fog varies across the whole image.
* spatter: MNIST-C's "mud" mode (gaussian liquid layer, sigma 1 px, thresholded at its
  mean, mask blurred with sigma 1.5 px and cut at 0.8, grey 63/255). The threshold is
  expressed as the wet fraction of the layer, 0.5 at severity 3 as published.
* dotted_line, zigzag: strokes use MNIST-C's profile ``1 + ln(1 - d / 2.3)`` but with
  ``d`` the perpendicular distance to the segment, so steep strokes are not thicker.
* canny_edges: the edge map (sigma 1 px, hysteresis thresholds 0.1 and 0.2 on the
  Sobel magnitude, as in ``skimage.feature.canny``) uses 4-direction non-maximum
  suppression. Severities 1-2 blend it over the image; severity 3 is the pure map,
  which no blend can move further from the image, so 4-5 grow the edges by
  ``(factor - 1) * 10 / 3`` px (not scaled with image size) over dark pixels.
* Randomness is drawn per image from one ``numpy.random.default_rng(seed)``, in an
  order that does not depend on severity, so severities of one seed share their
  random layout (same angles, lines, blobs) and differ only in strength.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch
from scipy import ndimage, special

from scanflow.errors import InvalidBatchError, UnknownCorruptionError

__all__ = [
    "CORRUPTIONS",
    "FAMILIES",
    "SEVERITY_FACTORS",
    "Corruption",
    "corrupt",
    "corruption_names",
]

CorruptionFn = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
"""``(pixels [N, C, H, W] float64 in [0, 1], strength factor, rng) -> pixels``; may leave [0, 1]."""

SEVERITY_FACTORS: Mapping[int, float] = MappingProxyType({1: 0.4, 2: 0.7, 3: 1.0, 4: 1.3, 5: 1.6})

MNIST_SIZE = 28
"""Side in pixels of the images MNIST-C's pixel-size parameters were chosen for."""

MUD_GREY = 63 / 255
LUMINANCE_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])
"""Rec. 709 weights, as ``skimage.color.rgb2gray``."""


@dataclass(frozen=True)
class Corruption:
    """One registered corruption.

    ``parameter`` is the published MNIST-C value that severity 3 reproduces;
    ``random`` is False for corruptions whose output does not depend on the seed.
    """

    name: str
    family: str
    random: bool
    parameter: str
    apply: CorruptionFn


# --------------------------------------------------------------------------- helpers


def _pixel_scale(x: np.ndarray) -> float:
    """How many pixels of this image correspond to one pixel of a 28x28 MNIST image."""
    return min(x.shape[-2:]) / MNIST_SIZE


def _blur(planes: np.ndarray, sigma: float, mode: str = "nearest") -> np.ndarray:
    """Gaussian blur of the last two axes only (never across images or channels)."""
    sigmas = (0.0,) * (planes.ndim - 2) + (sigma, sigma)
    return ndimage.gaussian_filter(planes, sigmas, mode=mode)


def _gather(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Read ``x[n, c, rows, cols]`` with integer coordinates shaped like ``[N, H, W]``.

    Coordinates are clamped to the image, i.e. edge pixels repeat outwards.
    """
    n, c, h, w = x.shape
    rows = np.clip(rows, 0, h - 1)[:, None]
    cols = np.clip(cols, 0, w - 1)[:, None]
    return x[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols]


def _bilinear(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``x`` at real coordinates ``[N, H, W]``; outside the image is 0."""
    _, _, h, w = x.shape
    top, left = np.floor(rows), np.floor(cols)
    out = np.zeros(x.shape)
    for corner_row, row_weight in ((top, 1 - (rows - top)), (top + 1, rows - top)):
        for corner_col, col_weight in ((left, 1 - (cols - left)), (left + 1, cols - left)):
            inside = (corner_row >= 0) & (corner_row < h) & (corner_col >= 0) & (corner_col < w)
            weight = row_weight * col_weight * inside
            values = _gather(x, corner_row.astype(np.intp), corner_col.astype(np.intp))
            out += weight[:, None] * values
    return out


def _warp(x: np.ndarray, inverse: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """Affine resampling about the image centre, like ``skimage.transform.warp``.

    ``inverse`` (``[N, 2, 2]``, acting on (col, row)) maps each output pixel to the
    input pixel it is read from; ``shift`` (``[N, 2]``, pixels, (col, row)) is added
    to that source position. Bilinear, zero fill.
    """
    n, _, h, w = x.shape
    centre_row, centre_col = (h - 1) / 2, (w - 1) / 2
    rows = np.arange(h, dtype=float)[None, :, None] - centre_row
    cols = np.arange(w, dtype=float)[None, None, :] - centre_col
    shift = np.zeros((n, 2)) if shift is None else shift
    m = inverse[:, :, :, None, None]
    src_cols = m[:, 0, 0] * cols + m[:, 0, 1] * rows + centre_col + shift[:, 0, None, None]
    src_rows = m[:, 1, 0] * cols + m[:, 1, 1] * rows + centre_row + shift[:, 1, None, None]
    return _bilinear(x, src_rows, src_cols)


def _random_signs(rng: np.random.Generator, shape: int | tuple[int, ...]) -> np.ndarray:
    """-1.0 or +1.0 with equal odds (the direction of a shear, rotation or shift)."""
    return rng.choice(np.array([-1.0, 1.0]), size=shape)


def _luminance(x: np.ndarray) -> np.ndarray:
    """Grey level ``[N, H, W]`` of a grey or RGB batch."""
    if x.shape[1] == 1:
        return x[:, 0]
    return np.tensordot(x, LUMINANCE_WEIGHTS, axes=([1], [0]))


def _segment_distance(start: np.ndarray, end: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Distance (px) from every pixel centre to the segments ``start -> end``.

    ``start`` and ``end`` are ``[N, 2]`` (row, col) arrays; the result is ``[N, H, W]``.
    """
    rows = np.arange(shape[0], dtype=float)[None, :, None]
    cols = np.arange(shape[1], dtype=float)[None, None, :]
    r0, c0 = start[:, 0, None, None], start[:, 1, None, None]
    dr, dc = (end - start)[:, 0, None, None], (end - start)[:, 1, None, None]
    length2 = np.maximum(dr * dr + dc * dc, 1e-12)
    t = np.clip(((rows - r0) * dr + (cols - c0) * dc) / length2, 0.0, 1.0)
    return np.hypot(rows - r0 - t * dr, cols - c0 - t * dc)


def _stroke(distance: np.ndarray, width: float) -> np.ndarray:
    """MNIST-C's antialiased line profile ``1 + ln(1 - d / width)`` clipped to [0, 1].

    With ``width`` = 2.3 px the stroke is fully white on its axis, 0.43 at 1 px and
    vanishes beyond 1.45 px; a wider profile is pointwise brighter.
    """
    return np.clip(1 + np.log(np.clip(1 - distance / width, 1e-12, None)), 0.0, 1.0)


# --------------------------------------------------------------------------- noise


def _shot_noise(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson photon noise with ``c = 3 / factor`` photons per unit intensity."""
    photons = 3.0 / factor
    return rng.poisson(x * photons) / photons


def _impulse_noise(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper: each value is replaced, with probability ``0.17 * factor``, by 0 or 1."""
    amount = min(0.17 * factor, 1.0)
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(float), x)


# --------------------------------------------------------------------------- blur


def _glass_blur(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Blur, shuffle locally twice, blur again (ImageNet-C glass blur).

    The blur sigma is ``0.7 * factor`` px and each round moves a fraction
    ``0.5 * factor`` of the pixels to a random neighbour within 1 px.
    """
    scale = _pixel_scale(x)
    sigma = 0.7 * factor * scale
    delta = max(1, round(scale))
    moved_fraction = min(0.5 * factor, 1.0)
    n, _, h, w = x.shape
    rows = np.arange(h)[None, :, None]
    cols = np.arange(w)[None, None, :]
    out = _blur(x, sigma)
    for _ in range(2):
        moves = rng.random((n, h, w)) < moved_fraction
        d_rows, d_cols = rng.integers(-delta, delta + 1, size=(2, n, h, w)) * moves
        out = _gather(out, rows + d_rows, cols + d_cols)
    return _blur(out, sigma)


def _motion_blur(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """ImageMagick-style motion blur: half-gaussian taps along a random angle in +-45 deg.

    Sigma is ``3 * factor`` px and the radius ``10 * factor`` px (``2 * radius + 1`` taps).
    """
    scale = _pixel_scale(x)
    sigma = 3.0 * factor * scale
    radius = max(1, round(10.0 * factor * scale))
    n, _, h, w = x.shape
    angle = np.deg2rad(rng.uniform(-45.0, 45.0, size=n))
    taps = np.arange(2 * radius + 1)
    weights = np.exp(-(taps**2) / (2 * sigma**2))
    weights /= weights.sum()
    d_cols = np.ceil(taps[None, :] * np.cos(angle)[:, None] - 0.5).astype(np.intp)
    d_rows = np.ceil(taps[None, :] * np.sin(angle)[:, None] - 0.5).astype(np.intp)
    rows = np.arange(h)[None, :, None]
    cols = np.arange(w)[None, None, :]
    out = np.zeros(x.shape)
    for k, weight in enumerate(weights):
        shifted_rows = rows + d_rows[:, k, None, None]
        shifted_cols = cols + d_cols[:, k, None, None]
        out += weight * _gather(x, shifted_rows, shifted_cols)
    return out


# --------------------------------------------------------------------------- geometric


def _shear(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Centred shear by ``0.4 * factor`` rad (skimage's shear angle), random sign per image."""
    angle = 0.4 * factor * _random_signs(rng, x.shape[0])
    inverse = np.zeros((x.shape[0], 2, 2))
    inverse[:, 0, 0] = 1.0
    inverse[:, 0, 1] = -np.sin(angle)
    inverse[:, 1, 1] = np.cos(angle)
    return _warp(x, inverse)


def _scale(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Zoom out about the centre to ``1 - 0.3 * factor`` of the size (70 % at severity 3)."""
    zoom = max(1.0 - 0.3 * factor, 0.1)
    inverse = np.broadcast_to(np.eye(2) / zoom, (x.shape[0], 2, 2))
    return _warp(x, inverse)


def _rotate(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Rotate about the centre by ``0.4 * factor`` rad, random sign per image."""
    angle = 0.4 * factor * _random_signs(rng, x.shape[0])
    cos, sin = np.cos(angle), np.sin(angle)
    inverse = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    return _warp(x, inverse)


def _translate(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Shift by ``3 * factor`` px along each axis, with a random sign per axis and image."""
    n, _, h, w = x.shape
    magnitude = 3.0 * factor * np.array([w, h]) / MNIST_SIZE
    shift = magnitude * _random_signs(rng, (n, 2))
    return _warp(x, np.broadcast_to(np.eye(2), (n, 2, 2)), shift)


# --------------------------------------------------------------------------- artefacts


def _stripe(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Invert (``v -> 1 - v``) a band of ``0.25 * factor * W`` columns at each side.

    At severity 3 on 28 columns that is exactly columns 0-6 and 21-27; a fractional
    band width inverts its last column partially, so the band grows continuously.
    """
    width = x.shape[-1]
    band = min(0.25 * factor, 0.5) * width
    left = np.clip(band - np.arange(width), 0.0, 1.0)
    coverage = np.maximum(left, left[::-1])
    return x + coverage * (1 - 2 * x)


def _dotted_line(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Add one white line from the left to the right edge, drawn in 2 px dashes."""
    n, _, h, w = x.shape
    scale = _pixel_scale(x)
    end_rows = rng.uniform(0, h - 1, size=(n, 2))
    start = np.stack([end_rows[:, 0], np.zeros(n)], axis=1)
    end = np.stack([end_rows[:, 1], np.full(n, w - 1.0)], axis=1)
    stroke = _stroke(_segment_distance(start, end, (h, w)), 2.3 * factor * scale)
    dash = max(1, round(2 * scale))
    stroke = stroke * ((np.arange(w) // dash) % 2 == 1)
    return x + stroke[:, None]


def _zigzag_vertices(n: int, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``[N, K, 2]`` (row, col) vertices of one MNIST-C zigzag per image.

    A triangle wave of 2 px amplitude and 2 px quarter period runs along a base line
    from column 2 to 25, starting at a random row and tilted by up to +-5 rows.
    Polylines shorter than the longest repeat their last vertex.
    """
    h, w = shape
    scale = min(h, w) / MNIST_SIZE
    quarter = amplitude = 2.0 * scale
    c0, c1 = 2.0 * w / MNIST_SIZE, 25.0 * w / MNIST_SIZE
    r0 = rng.uniform(0, h - 1, size=n)
    r1 = r0 + rng.uniform(-5.0, 5.0, size=n) * h / MNIST_SIZE
    theta = np.arctan2(r1 - r0, c1 - c0)
    length = np.hypot(r1 - r0, c1 - c0)[:, None]
    peaks = quarter * (2 * np.arange(int(length.max() // (2 * quarter)) + 1) + 1)
    along = np.minimum(np.concatenate([np.zeros(1), peaks])[None, :], length)
    along = np.concatenate([along, length], axis=1)
    phase = np.mod(along + quarter, 4 * quarter)
    across = amplitude * (1 - np.abs(phase - 2 * quarter) / quarter)
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    cols = c0 + along * cos - across * sin
    rows = r0[:, None] + along * sin + across * cos
    return np.stack([rows, cols], axis=-1)


def _zigzag(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Add one white zigzag polyline across the image."""
    n, _, h, w = x.shape
    vertices = _zigzag_vertices(n, (h, w), rng)
    distance = np.full((n, h, w), np.inf)
    for k in range(vertices.shape[1] - 1):
        segment = _segment_distance(vertices[:, k], vertices[:, k + 1], (h, w))
        distance = np.minimum(distance, segment)
    return x + _stroke(distance, 2.3 * factor * _pixel_scale(x))[:, None]


def _smooth_for_canny(grey: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing with zero padding, renormalised at the border (as skimage)."""
    blurred = _blur(grey, sigma, mode="constant")
    support = _blur(np.ones(grey.shape[1:]), sigma, mode="constant")
    return blurred / support


def _sobel(planes: np.ndarray, axis: int) -> np.ndarray:
    """Sobel derivative along ``axis`` (-2 rows, -1 columns) of a ``[N, H, W]`` stack."""
    other = -1 if axis == -2 else -2
    derivative = ndimage.correlate1d(planes, [-1.0, 0.0, 1.0], axis=axis)
    return ndimage.correlate1d(derivative, [1.0, 2.0, 1.0], axis=other)


def _shifted(planes: np.ndarray, d_row: int, d_col: int) -> np.ndarray:
    """``planes[:, r + d_row, c + d_col]`` for any offset, zero outside the image."""
    h, w = planes.shape[1:]
    out = np.zeros(planes.shape)
    src_rows = slice(max(d_row, 0), h + min(d_row, 0))
    dst_rows = slice(max(-d_row, 0), h + min(-d_row, 0))
    src_cols = slice(max(d_col, 0), w + min(d_col, 0))
    dst_cols = slice(max(-d_col, 0), w + min(-d_col, 0))
    out[:, dst_rows, dst_cols] = planes[:, src_rows, src_cols]
    return out


def _non_maximum_suppression(magnitude: np.ndarray, d_rows: np.ndarray, d_cols: np.ndarray) -> np.ndarray:
    """Pixels whose gradient magnitude is a maximum across the edge (4 quantised directions)."""
    angle = np.mod(np.rad2deg(np.arctan2(d_rows, d_cols)), 180.0)
    sector = np.floor_divide(angle + 22.5, 45.0).astype(int) % 4
    across = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    maxima = np.zeros(magnitude.shape, dtype=bool)
    for index, (dr, dc) in across.items():
        peak = (magnitude >= _shifted(magnitude, dr, dc)) & (magnitude >= _shifted(magnitude, -dr, -dc))
        maxima |= (sector == index) & peak
    maxima[:, [0, -1], :] = False
    maxima[:, :, [0, -1]] = False
    return maxima & (magnitude > 0)


def _canny(grey: np.ndarray, sigma: float = 1.0, low: float = 0.1, high: float = 0.2) -> np.ndarray:
    """Boolean Canny edge maps ``[N, H, W]`` of grey images in [0, 1].

    Thresholds apply to the Sobel gradient magnitude, as in ``skimage.feature.canny``;
    weak edges survive when 8-connected to a strong one (hysteresis).
    """
    smoothed = _smooth_for_canny(grey, sigma)
    d_rows, d_cols = _sobel(smoothed, -2), _sobel(smoothed, -1)
    magnitude = np.hypot(d_rows, d_cols)
    maxima = _non_maximum_suppression(magnitude, d_rows, d_cols)
    weak = maxima & (magnitude >= low)
    within_image = np.zeros((3, 3, 3), dtype=bool)
    within_image[1] = True
    labels, count = ndimage.label(weak, structure=within_image)
    if count == 0:
        return weak
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[maxima & (magnitude >= high)])] = True
    return keep[labels]


def _grow_into_dark(edges: np.ndarray, grey: np.ndarray, radius: float) -> np.ndarray:
    """Edges widened to every dark pixel (grey < 0.5) within ``radius`` px of an edge.

    Growing only over dark pixels makes every added white pixel move the output
    further from the clean image, which bright pixels would not.
    """
    reach = int(np.floor(radius + 1e-9))
    near = edges.copy()
    for d_row in range(-reach, reach + 1):
        for d_col in range(-reach, reach + 1):
            if np.hypot(d_row, d_col) <= radius + 1e-9:
                near |= _shifted(edges, d_row, d_col).astype(bool)
    return edges | (near & (grey < 0.5))


def _canny_edges(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Replace the image by its Canny edge map (white edges on black).

    Below severity 3 the map is blended over the image with weight ``factor``; above,
    the edges grow by ``(factor - 1) * 10 / 3`` px (1 px at severity 4, 2 px at 5)
    into the dark background.
    """
    grey = _luminance(x)
    edges = _canny(grey)
    if factor > 1:
        edges = _grow_into_dark(edges, grey, (factor - 1) * 10 / 3)
    weight = min(factor, 1.0)
    return x + weight * (edges[:, None] - x)


# --------------------------------------------------------------------------- weather


def _brightness(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Add ``0.5 * factor`` to the HSV value (grey: to the intensity), keeping hue and saturation."""
    lift = 0.5 * factor
    if x.shape[1] == 1:
        return x + lift
    value = x.max(axis=1, keepdims=True)
    brighter = np.minimum(value + lift, 1.0)
    ratio = np.divide(brighter, value, out=np.zeros_like(value), where=value > 0)
    return np.where(value > 0, x * ratio, brighter)


def _plasma_fractal(count: int, size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """``count`` diamond-square height maps in [0, 1], ``2**k >= size`` pixels square.

    The ImageNet-C recipe: the random displacement starts at 100 and is divided by
    ``decay`` at every halving of the step; the map wraps around (toroidal).
    """
    mapsize = 1 << (size - 1).bit_length()
    grid = np.zeros((count, mapsize, mapsize))
    step, wibble = mapsize, 100.0
    while step >= 2:
        half = step // 2

        def wibbled_mean(total: np.ndarray) -> np.ndarray:
            return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

        corners = grid[:, ::step, ::step]
        square = corners + np.roll(corners, -1, axis=1)
        square = square + np.roll(square, -1, axis=2)
        grid[:, half::step, half::step] = wibbled_mean(square)
        centres = grid[:, half::step, half::step]
        top = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        grid[:, ::step, half::step] = wibbled_mean(top)
        left = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        grid[:, half::step, ::step] = wibbled_mean(left)
        step, wibble = half, wibble / decay
    grid -= grid.min(axis=(1, 2), keepdims=True)
    return grid / grid.max(axis=(1, 2), keepdims=True)


def _fog(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Add ``c0 = 3 * factor`` times a plasma fractal (decay 1.4), then rescale to the image's peak."""
    c0 = 3.0 * factor
    n, _, h, w = x.shape
    plasma = _plasma_fractal(n, max(h, w), 1.4, rng)[:, None, :h, :w]
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    return (x + c0 * plasma) * peak / (peak + c0)


def _noise_std_after_blur(sigma: float) -> float:
    """Standard deviation of unit white noise after ``_blur`` with ``sigma`` (away from borders)."""
    radius = int(4 * sigma + 0.5) + 1
    impulse = np.zeros((2 * radius + 1, 2 * radius + 1))
    impulse[radius, radius] = 1.0
    return float(np.sqrt(np.sum(_blur(impulse, sigma, mode="constant") ** 2)))


def _spatter(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Grey mud blobs (MNIST-C spatter, mud mode) where a liquid layer is wet.

    The wet fraction of the layer is ``0.5 * factor``; 0.5 is MNIST-C's threshold at the layer's mean.
    """
    scale = _pixel_scale(x)
    wet_fraction = min(0.5 * factor, 0.99)
    n, _, h, w = x.shape
    liquid_sigma = 1.0 * scale
    liquid = _blur(rng.standard_normal((n, h, w)), liquid_sigma) / _noise_std_after_blur(liquid_sigma)
    wet = (liquid > special.ndtri(1 - wet_fraction)).astype(float)
    mud = _blur(wet, 1.5 * scale)
    mud = np.where(mud < 0.8, 0.0, mud)[:, None]
    return x * (1 - mud) + MUD_GREY * mud


# --------------------------------------------------------------------------- registry


def _registry() -> dict[str, Corruption]:
    entries = [
        Corruption("shot_noise", "noise", True, "Poisson c = 3 photons per unit intensity", _shot_noise),
        Corruption("impulse_noise", "noise", True, "salt-and-pepper amount 0.17", _impulse_noise),
        Corruption("glass_blur", "blur", True, "sigma 0.7 px, max delta 1 px, 2 iterations", _glass_blur),
        Corruption("motion_blur", "blur", True, "radius 10 px, sigma 3 px, angle in +-45 deg", _motion_blur),
        Corruption("shear", "geometric", True, "shear 0.4 rad, random sign", _shear),
        Corruption("scale", "geometric", False, "zoom out to 70 % about the centre", _scale),
        Corruption("rotate", "geometric", True, "rotation 0.4 rad, random sign", _rotate),
        Corruption("brightness", "weather", False, "+0.5 on the HSV value", _brightness),
        Corruption("translate", "geometric", True, "+-3 px on each axis, random signs", _translate),
        Corruption("stripe", "artefact", False, "invert columns 0-6 and 21-27 of 28", _stripe),
        Corruption("fog", "weather", True, "plasma weight c0 = 3, wibble decay 1.4", _fog),
        Corruption("spatter", "weather", True, "mud: liquid cut at its mean, blobs >= 0.8", _spatter),
        Corruption("dotted_line", "artefact", True, "one line, 2 px dashes, width 2.3 px", _dotted_line),
        Corruption("zigzag", "artefact", True, "one zigzag, amplitude and quarter period 2 px", _zigzag),
        Corruption("canny_edges", "artefact", False, "pure Canny edge map, sigma 1 px", _canny_edges),
    ]
    return {corruption.name: corruption for corruption in entries}


CORRUPTIONS: Mapping[str, Corruption] = MappingProxyType(_registry())

FAMILIES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        family: tuple(name for name, c in CORRUPTIONS.items() if c.family == family)
        for family in ("noise", "blur", "geometric", "artefact", "weather")
    }
)


def corruption_names() -> tuple[str, ...]:
    """The registered corruption names, in MNIST-C order."""
    return tuple(CORRUPTIONS)


# --------------------------------------------------------------------------- entry point


def _lookup(name: str) -> Corruption:
    try:
        return CORRUPTIONS[name]
    except (KeyError, TypeError):
        known = ", ".join(CORRUPTIONS)
        raise UnknownCorruptionError(f"unknown corruption {name!r}; known corruptions: {known}") from None


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _severity_factor(severity: int) -> float:
    if not _is_integer(severity) or severity not in SEVERITY_FACTORS:
        raise ValueError(f"severity must be an integer 1..5, got {severity!r}")
    return SEVERITY_FACTORS[int(severity)]


def _check_seed(seed: int) -> None:
    if not _is_integer(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _check_images(images: torch.Tensor) -> None:
    """Reject anything but a ``[N, C, H, W]`` uint8 or floating-point batch."""
    expected = "expected a 4-D tensor [N, C, H, W] with C in {1, 3} and H, W >= 8"
    if not isinstance(images, torch.Tensor):
        raise InvalidBatchError(f"images must be a torch.Tensor, got {type(images).__name__}; {expected}")
    if images.ndim != 4:
        raise InvalidBatchError(f"{expected}, got shape {tuple(images.shape)}")
    _, channels, h, w = images.shape
    if channels not in (1, 3) or h < 8 or w < 8:
        raise InvalidBatchError(f"{expected}, got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise InvalidBatchError(f"images must be uint8 (0..255) or floating point (0..1), got {images.dtype}")


def _to_unit(images: torch.Tensor) -> np.ndarray:
    """Float64 numpy copy in [0, 1]; float input outside [0, 1] (or NaN) is rejected.

    Conversions run in numpy: small torch ops pay a thread hand-off on every call.
    """
    source = images.detach().cpu()
    if source.dtype == torch.bfloat16:
        source = source.float()
    pixels = source.numpy().astype(np.float64)
    if images.dtype == torch.uint8:
        return pixels / 255.0
    low, high = pixels.min(), pixels.max()
    if not (0.0 <= low and high <= 1.0):
        raise InvalidBatchError(
            f"floating-point images must hold values in [0, 1], got min {low:g} and max {high:g}"
        )
    return pixels


def _from_unit(pixels: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """Tensor with the dtype, device and value range of ``like``."""
    pixels = np.clip(pixels, 0.0, 1.0)
    if like.dtype == torch.uint8:
        out = torch.from_numpy(np.rint(pixels * 255.0).astype(np.uint8))
    elif like.dtype == torch.bfloat16:
        out = torch.from_numpy(pixels.astype(np.float32)).to(torch.bfloat16)
    else:
        out = torch.from_numpy(pixels.astype(torch.empty((), dtype=like.dtype).numpy().dtype))
    return out.to(like.device)


def corrupt(images: torch.Tensor, name: str, severity: int = 3, seed: int = 0) -> torch.Tensor:
    """Return a corrupted copy of ``images`` (same shape, dtype, device and value range).

    ``images`` is ``[N, C, H, W]`` with C in {1, 3} and H, W >= 8, either uint8 in
    0..255 or floating point in [0, 1]; it is never modified. ``severity`` 1..5 scales
    the corruption's strength by ``SEVERITY_FACTORS`` (3 = published MNIST-C value).
    All randomness comes from ``numpy.random.default_rng(seed)``, drawn per image,
    so equal inputs and seeds give equal outputs.

    Raises:
        UnknownCorruptionError: ``name`` is not in ``CORRUPTIONS``.
        ValueError: ``severity`` is not an integer 1..5, or ``seed`` is negative.
        InvalidBatchError: wrong rank, channel count, size, dtype or value range.
    """
    corruption = _lookup(name)
    factor = _severity_factor(severity)
    _check_seed(seed)
    _check_images(images)
    if images.shape[0] == 0:
        return images.clone()
    pixels = corruption.apply(_to_unit(images), factor, np.random.default_rng(int(seed)))
    return _from_unit(pixels, images)

"""Drawing primitives shared by every phantom generator (the three modalities, the twin-cells phantom).

Whole-array numpy expressions and PIL resizing, all float32, every value a pure function of the
``np.random.Generator`` passed in: a fixed seed reproduces an image to the byte (with numpy's SIMD level
pinned, see :mod:`seg4seg_utils.kernels`).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image

__all__ = ["MIN_SIDE", "MIN_DATASET_SIDE", "Size", "Canvas", "canvas", "image_shape", "pixel_grid", "smooth_noise", "ramp",
           "fourier_series", "segment_distance", "to_uint8", "as_rng"]

MIN_SIDE = 16  # the generators work down to this; datasets ask for at least MIN_DATASET_SIDE
MIN_DATASET_SIDE = 32

Size = int | tuple[int, int]

def image_shape(size: Size) -> tuple[int, int]:
    """(height, width) from an int or an (h, w) pair, refusing sizes too small to draw anything."""
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ValueError(f"size must be an int or an (height, width) pair, got {size!r}") from None
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"size must be at least {MIN_SIDE} pixels per side, got {h}x{w} (HxW)")
    return h, w


class Canvas(NamedTuple):
    """What every generator starts from: the size, its Generator, the shorter side ``s``, ``px`` = pixels per
    pixel at 256 px (textures and line widths scale with the image) and the pixel-centre coordinates."""

    h: int
    w: int
    rng: np.random.Generator
    s: int
    px: float
    yy: np.ndarray
    xx: np.ndarray


def canvas(size: Size, rng: np.random.Generator | int) -> Canvas:
    """The :class:`Canvas` of an image of ``size`` drawn from ``rng`` (a Generator or an int seed)."""
    h, w = image_shape(size)
    s = min(h, w)
    yy, xx = pixel_grid(h, w)
    return Canvas(h, w, as_rng(rng), s, s / 256, yy, xx)


def pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as broadcastable float32 columns/rows (PIL's convention: centre = index)."""
    return np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """Smooth noise (mean ~0, std ~1) with about ``cells`` bumps across the shorter side.

    Low-resolution white noise, upsampled bicubically: a fraction of the cost of filtering a full-size field.
    """
    h, w = shape
    s = min(h, w)
    lh, lw = max(2, round(cells * h / s)) + 1, max(2, round(cells * w / s)) + 1
    low = rng.standard_normal((lh, lw), dtype=np.float32)
    up = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    return (up - up.mean()) / (up.std() + 1e-6)


def ramp(x: np.ndarray | float) -> np.ndarray:
    """Anti-aliased step: 0 below -0.5, 1 above 0.5 (x in pixels or any soft-edge unit)."""
    return np.clip(np.asarray(x, dtype=np.float32) + 0.5, 0.0, 1.0)


def fourier_series(angle: np.ndarray, ks: Sequence[int], coef: Sequence[float], phase: Sequence[float]) -> np.ndarray:
    """sum_i coef[i] * cos(ks[i] * angle + phase[i]): a random smooth periodic function of an angle."""
    out = np.zeros_like(angle, dtype=np.float32)
    for k, c, p in zip(ks, coef, phase):
        out += np.float32(c) * np.cos(np.float32(k) * angle + np.float32(p))
    return out


def segment_distance(xx: np.ndarray, yy: np.ndarray, p: tuple[float, float], q: tuple[float, float]) -> np.ndarray:
    """Distance of every pixel to the line segment p-q."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    t = np.clip(((xx - p[0]) * dx + (yy - p[1]) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
    return np.hypot(xx - p[0] - t * dx, yy - p[1] - t * dy)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Round a float image to uint8 (half up), clipping to 0..255."""
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    """A Generator (passed through unchanged) from a Generator or an int seed."""
    # default_rng passes a Generator through unchanged, and lets quick experiments pass an int seed
    return np.random.default_rng(rng)

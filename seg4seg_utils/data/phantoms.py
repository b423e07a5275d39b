"""Phantom generators: the embedded default data, synthetic medical-like images with exact masks.

Three modalities, each a function ``(size, rng) -> (image, mask)``:

* ``ultrasound``: HC18-like fetal-head ultrasound (uint8 HxW); mask = filled head ellipse (outer skull contour).
* ``dermoscopy``: ISIC-like skin lesion photograph (uint8 HxWx3); mask = the lesion region.
* ``fundus``: FIVES-like retinal photograph (uint8 HxWx3); mask = the vessel tree.

Every image is a pure function of its ``np.random.Generator``, so a fixed seed reproduces it exactly.
The images are built from whole-array numpy expressions, low-resolution noise upsampled with PIL and
shapes drawn with PIL ImageDraw, which keeps each generator well above 50 images/s at 256 px.
``return_attributes=True`` adds a dict of simple per-image descriptors (sizes, visibility, artefacts);
:func:`generate_phantom_dataset` stores them as attribute columns that later explain failure slices.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from tqdm.auto import tqdm

from seg4seg_utils.data.drawing import (
    MIN_DATASET_SIDE,
    Size,
    canvas,
    fourier_series,
    image_shape,
    ramp,
    segment_distance,
    smooth_noise,
    to_uint8,
)
from seg4seg_utils.data.records import SampleTable, assign_splits, build_dataset
from seg4seg_utils.seeding import rng_for

__all__ = [
    "GENERATOR_VERSIONS", "MODALITIES", "ID_PREFIXES", "Phantom", "ultrasound", "dermoscopy", "fundus",
    "generate_phantom_dataset",
]

# Bump whenever any generator's output changes: it is part of the dataset config, so cached datasets
# made by an older generator are rejected instead of silently mixed with new ones.
# bumped per modality when its pixels change, so only that modality's cached datasets are invalidated
GENERATOR_VERSIONS = {"ultrasound": "phantoms-1", "dermoscopy": "phantoms-2", "fundus": "phantoms-2"}


# (image, mask), or (image, mask, attributes) with return_attributes=True
Phantom = tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict[str, Any]]


def _finish(image: np.ndarray, mask: np.ndarray, attributes: dict[str, Any], return_attributes: bool) -> Phantom:
    if return_attributes:
        return image, mask, attributes
    return image, mask


# --------------------------------------------------------------------------------------- ultrasound
def _sample_fan(h: int, w: int, rng: np.random.Generator) -> dict[str, float]:
    """A sector scan: apex above the top centre, near-field arc r0, far arc r1 near the bottom, half opening angle."""
    off = rng.uniform(0.03, 0.12) * h
    r0 = off + rng.uniform(0.02, 0.06) * h
    r1 = h + off - rng.uniform(0.01, 0.04) * h
    half = math.asin(min(0.99, rng.uniform(0.95, 1.3) * w / (2 * r1)))
    return {"ax": (w - 1) / 2, "ay": -off, "r0": r0, "r1": r1, "half": min(max(half, math.radians(22)), math.radians(70))}


def _in_fan(x: np.ndarray, y: np.ndarray, fan: dict[str, float], margin: float = 0.0) -> np.ndarray:
    r = np.hypot(x - fan["ax"], y - fan["ay"])
    th = np.arctan2(x - fan["ax"], y - fan["ay"])  # 0 = straight down the beam axis
    # the side margin is an arc length, so it means the same number of pixels at every depth
    return (r >= fan["r0"] + margin) & (r <= fan["r1"] - margin) & (np.abs(th) * r <= fan["half"] * r - margin)


def _sample_head(h: int, w: int, fan: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
    """Head ellipse: major axis 25-60 % of the width, HC18-like aspect, placed (by rejection) inside the fan."""
    a = min(rng.uniform(0.25, 0.60) * w / 2, 0.44 * min(h, w))
    b = a * rng.uniform(0.72, 0.92)
    ang = rng.uniform(0, math.pi)
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    margin = 0.02 * min(h, w)
    for attempt in range(60):
        if attempt and attempt % 15 == 0:  # a large head that fits nowhere: shrink it a little
            a, b = a * 0.9, b * 0.9
        ex = math.hypot(a * math.cos(ang), b * math.sin(ang))
        ey = math.hypot(a * math.sin(ang), b * math.cos(ang))
        if 2 * ex >= w - 2 * margin or 2 * ey >= h - 2 * margin:
            continue
        cx = rng.uniform(ex + margin, w - 1 - ex - margin)
        cy = rng.uniform(ey + margin, h - 1 - ey - margin)
        bx = cx + a * np.cos(t) * math.cos(ang) - b * np.sin(t) * math.sin(ang)
        by = cy + a * np.cos(t) * math.sin(ang) + b * np.sin(t) * math.cos(ang)
        if _in_fan(bx, by, fan, margin).all():
            break
    else:  # never seen in practice: fall back to mid-depth on the beam axis
        cx, cy = fan["ax"], fan["ay"] + (fan["r0"] + fan["r1"]) / 2
    return {"cx": cx, "cy": cy, "a": a, "b": b, "ang": ang}


def _ellipse_fields(xx: np.ndarray, yy: np.ndarray, e: dict[str, float]) -> dict[str, np.ndarray]:
    """Normalised radius rho (1 on the contour), approx. signed pixel distance d, outward normal, contour angle."""
    ca, sa = math.cos(e["ang"]), math.sin(e["ang"])
    x, y = xx - np.float32(e["cx"]), yy - np.float32(e["cy"])
    u, v = x * ca + y * sa, -x * sa + y * ca
    a, b = e["a"], e["b"]
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    gu, gv = u / (a * a), v / (b * b)  # gradient of rho^2 / 2 in the ellipse frame
    gx, gy = gu * ca - gv * sa, gu * sa + gv * ca
    gnorm = np.sqrt(gx * gx + gy * gy) + 1e-6
    # first-order distance to the contour: (rho - 1) / |grad rho|, with |grad rho| = |g| / rho
    d = (rho - 1) * np.maximum(rho, 1e-3) / gnorm
    return {"rho": rho, "d": d, "nx": gx / gnorm, "ny": gy / gnorm, "phi": np.arctan2(v / b, u / a), "u": u, "v": v}


def _arc(xx: np.ndarray, yy: np.ndarray, ox: float, oy: float, radius: float, mid: float, half_span: float,
         half_width: float) -> np.ndarray:
    """A bright curved band: circle of ``radius`` around (ox, oy), spanning mid +- half_span, faded at its ends."""
    dx, dy = xx - np.float32(ox), yy - np.float32(oy)
    band = np.exp(-((np.sqrt(dx * dx + dy * dy) - radius) / half_width) ** 2)
    off = np.abs(np.arctan2(np.sin(np.arctan2(dy, dx) - mid), np.cos(np.arctan2(dy, dx) - mid)))
    return band * np.clip((half_span - off) / (0.3 * half_span + 1e-3), 0, 1)


def _skull_visibility(phi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Echo strength along the skull: smooth random variation times a few dropout gaps (shadowing, off-plane)."""
    vis = 0.7 + fourier_series(phi, range(1, 6), rng.normal(0, 1, 5) * np.array([0.22, 0.15, 0.1, 0.07, 0.05]),
                           rng.uniform(0, 2 * math.pi, 5))
    for _ in range(rng.integers(1, 5)):
        centre, half = rng.uniform(-math.pi, math.pi), rng.uniform(0.1, 0.5)
        off = np.abs(np.arctan2(np.sin(phi - centre), np.cos(phi - centre)))
        vis = vis * (1 - rng.uniform(0.75, 1.0) * np.clip((half - off) / (0.4 * half), 0, 1))
    return np.clip(vis, 0.0, 1.0)


def ultrasound(size: Size, rng: np.random.Generator, *, return_attributes: bool = False) -> Phantom:
    """HC18-like fetal-head ultrasound: (uint8 HxW image, bool HxW filled head ellipse[, attributes])."""
    h, w, rng, s, px, yy, xx = canvas(size, rng)
    fan = _sample_fan(h, w, rng)
    bx, by = xx - np.float32(fan["ax"]), yy - np.float32(fan["ay"])
    r = np.sqrt(bx * bx + by * by)
    theta = np.arctan2(bx, by)
    in_fan = (r >= fan["r0"]) & (r <= fan["r1"]) & (np.abs(theta) <= fan["half"])

    head = _sample_head(h, w, fan, rng)
    g = _ellipse_fields(xx, yy, head)
    mask = g["rho"] <= 1.0

    # maternal tissue / uterus: mid-grey with blotchy echogenicity and faint layers under the probe
    echo = rng.uniform(0.3, 0.45) + 0.15 * smooth_noise(rng, (h, w), 2.5) + 0.1 * smooth_noise(rng, (h, w), 8)
    for _ in range(rng.integers(1, 4)):
        layer_r = fan["r0"] + rng.uniform(0.03, 0.3) * (fan["r1"] - fan["r0"])
        echo = echo + rng.uniform(0.15, 0.4) * np.exp(-((r - layer_r) / (rng.uniform(1, 3) * px)) ** 2)
    # amniotic fluid pocket around the head (dark); small pockets let tissue touch the skull -> ambiguous edges
    fluid_scale = rng.uniform(1.0, 1.7)
    fluid_edge = fluid_scale * (1 + 0.18 * smooth_noise(rng, (h, w), 4)) - g["rho"]
    fluid = np.clip(fluid_edge / 0.08, 0, 1)
    echo = echo * (1 - fluid) + rng.uniform(0.03, 0.10) * fluid
    # brain: darker than tissue, with some structure; faint midline echo and thalami
    inside = ramp(-g["d"] / (1.5 * px))
    brain = rng.uniform(0.12, 0.38) + 0.08 * smooth_noise(rng, (h, w), 7)
    brain -= 0.08 * np.exp(-((np.abs(g["v"]) - 0.22 * head["b"]) ** 2 / (0.12 * head["b"]) ** 2
                              + (g["u"] / (0.3 * head["a"])) ** 2))  # thalami: darker ovals beside the midline
    midline = np.exp(-(g["v"] / (1.2 * px)) ** 2) * np.clip((0.85 - np.abs(g["u"]) / head["a"]) / 0.1, 0, 1)
    brain += rng.uniform(0.15, 0.45) * midline * np.clip(0.6 + 0.6 * smooth_noise(rng, (h, w), 10), 0, 1)  # broken line
    echo = echo * (1 - inside) + np.maximum(brain, 0.02) * inside

    # skull: a thick bright ring just inside the outer contour, strongest where the beam hits it head-on
    thick = max(2.0 * px, rng.uniform(0.08, 0.14) * head["b"])
    ring = np.exp(-np.abs((g["d"] + thick / 2) / (0.5 * thick)) ** 3)  # flat-topped band
    incidence = np.abs(g["nx"] * bx + g["ny"] * by) / np.maximum(r, 1.0)
    # side walls, parallel to the beam, reflect little back: in real scans they are often nearly invisible
    vis = _skull_visibility(g["phi"], rng) * (0.15 + 0.85 * incidence ** rng.uniform(1.5, 3.0))
    skull_gain = rng.uniform(1.4, 2.6)
    # strong reflectors (bone, membranes) are specular: kept apart from the diffuse echo, they get less speckle
    bright = skull_gain * ring * vis * (0.7 + 0.3 * smooth_noise(rng, (h, w), 20))
    skull_visibility = float((ring * vis).sum() / max(float(ring.sum()), 1e-6))

    echo, extra, n_distractors = _us_distractors(echo, xx, yy, head, g["d"], fan, px, rng)
    bright += extra

    # acoustic shadows: beams crossing a strongly reflecting part of the skull are darker beyond it
    head_theta = math.atan2(head["cx"] - fan["ax"], head["cy"] - fan["ay"])
    head_r = math.hypot(head["cx"] - fan["ax"], head["cy"] - fan["ay"])
    shadow = np.ones_like(r)
    for _ in range(rng.integers(0, 3)):
        centre = head_theta + rng.uniform(-0.6, 0.6) * head["b"] / head_r
        width = rng.uniform(0.02, 0.08)
        beam = np.clip((width - np.abs(theta - centre)) / (0.5 * width), 0, 1)
        shadow *= 1 - rng.uniform(0.3, 0.7) * beam * ramp((r - head_r + 0.3 * head["b"]) / (4 * px))

    # speckle: Rayleigh magnitude of smoothed complex noise, grains elongated across the beam
    sig = (1.0 * px, 1.7 * px)
    re = ndimage.gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), sig)
    im = ndimage.gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), sig)
    speckle = (re * re + im * im) ** 0.75  # between amplitude and intensity: bright grains on a dark floor
    speckle /= speckle.mean() + 1e-6

    depth = np.clip((r - fan["r0"]) / (fan["r1"] - fan["r0"]), 0, 1)
    atten = np.exp(-rng.uniform(0.3, 1.1) * depth)  # what time-gain compensation did not recover
    near_field = 0.5 * np.exp(-(r - fan["r0"]) / (0.04 * s))  # bright reverberation just under the probe
    gain = rng.uniform(0.8, 1.2)
    # diffuse scatter is weak next to bone echoes: scale it so only bright structures reach white
    diffuse = 0.6 * (np.maximum(echo, 0) + near_field) * speckle
    intensity = gain * (diffuse + bright * (0.5 + 0.5 * speckle)) * atten * shadow
    img = 255 * (np.clip(intensity / 1.6, 0, 1) ** 0.9)
    img *= ramp((fan["half"] - np.abs(theta)) * r)  # anti-aliased fan sides
    img[~in_fan] = 0  # black outside the fan, exactly
    attributes = {"head_fraction": round(float(mask.mean()), 5), "skull_visibility": round(skull_visibility, 4),
                  "fluid": round(float(fluid_scale - 1), 4), "gain": round(float(gain), 4),
                  "n_distractors": int(n_distractors)}
    return _finish(to_uint8(img), mask, attributes, return_attributes)


def _ellipse_point(e: dict[str, float], t: float, scale: float = 1.0) -> tuple[float, float]:
    """The point at parameter angle ``t`` on the (scaled) ellipse ``e``."""
    u, v = scale * e["a"] * math.cos(t), scale * e["b"] * math.sin(t)
    ca, sa = math.cos(e["ang"]), math.sin(e["ang"])
    return e["cx"] + u * ca - v * sa, e["cy"] + u * sa + v * ca


def _us_distractors(echo: np.ndarray, xx: np.ndarray, yy: np.ndarray, head: dict[str, float], head_d: np.ndarray,
                    fan: dict[str, float], px: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Bright curved structures around the head (uterine wall, placenta edge, fetal body, limb bones).

    They may touch the skull from outside, which is what makes the head outline ambiguous, but never
    cross into the head (``head_d`` is the signed distance to the outer skull contour). Returns the
    diffuse echo (with placenta / body texture painted in), the specular bright structures and their count.
    """
    a, cx, cy = head["a"], head["cx"], head["cy"]
    outside = np.clip(head_d / (1.5 * px), 0, 1)
    extra = np.zeros_like(echo)
    n = 0
    # uterine wall: a long bright arc roughly parallel to part of the skull -> a second, false outline
    if rng.random() < 0.8:
        extra += rng.uniform(0.6, 1.5) * _arc(
            xx, yy, cx + rng.normal(0, 0.1 * a), cy + rng.normal(0, 0.1 * a), a * rng.uniform(1.12, 1.6),
            rng.uniform(-math.pi, math.pi), rng.uniform(0.5, 1.3), rng.uniform(1.5, 4.0) * px)
        n += 1
    # placenta: a thick, granular band across the fan with a bright chorionic edge
    if rng.random() < 0.6:
        depth = rng.uniform(fan["r0"] + 0.05 * fan["r1"], fan["r1"])
        rr = np.hypot(xx - fan["ax"], yy - fan["ay"])
        thick = rng.uniform(0.06, 0.15) * fan["r1"]
        band = ramp((thick / 2 - np.abs(rr - depth)) / (3 * px)) * outside
        echo = echo * (1 - band) + band * (0.55 + 0.12 * smooth_noise(rng, echo.shape, 14))
        edge_r = depth - thick / 2 if rng.random() < 0.5 else depth + thick / 2
        extra += rng.uniform(0.5, 1.2) * np.exp(-((rr - edge_r) / (1.8 * px)) ** 2)
        n += 1
    # fetal body beside the head: similar texture, a softer, fainter and broken curved outline
    if rng.random() < 0.5:
        bx, by = _ellipse_point(head, rng.uniform(-math.pi, math.pi), rng.uniform(1.5, 2.0))
        body = {"cx": bx, "cy": by, "a": a * rng.uniform(0.9, 1.3), "b": head["b"] * rng.uniform(0.75, 1.1),
                "ang": rng.uniform(0, math.pi)}
        gb = _ellipse_fields(xx, yy, body)
        inside = ramp(-gb["d"] / (2 * px)) * outside
        echo = echo * (1 - inside) + inside * (0.3 + 0.08 * smooth_noise(rng, echo.shape, 8))
        outline = np.exp(-(gb["d"] / (rng.uniform(2.0, 3.5) * px)) ** 2) * _skull_visibility(gb["phi"], rng)
        extra += rng.uniform(0.25, 0.6) * outline
        n += 1
    # limb bones: short, very bright bars close to the skull
    for _ in range(rng.integers(0, 3)):
        t = rng.uniform(-math.pi, math.pi)
        p = _ellipse_point(head, t, rng.uniform(1.05, 1.4))
        direction = t + head["ang"] + math.pi / 2 + rng.normal(0, 0.5)  # roughly tangential to the skull
        length = rng.uniform(0.2, 0.5) * a
        q = (p[0] + length * math.cos(direction), p[1] + length * math.sin(direction))
        extra += rng.uniform(0.8, 1.6) * np.exp(-(segment_distance(xx, yy, p, q) / (rng.uniform(1.2, 2.5) * px)) ** 2)
        n += 1
    return echo, extra * outside, n


# --------------------------------------------------------------------------------------- dermoscopy
_SKIN_LIGHT = np.array([238, 200, 182], dtype=np.float32)
_SKIN_DARK = np.array([150, 98, 70], dtype=np.float32)


def dermoscopy(size: Size, rng: np.random.Generator, *, return_attributes: bool = False) -> Phantom:
    """ISIC-like dermoscopy image: (uint8 HxWx3 RGB, bool HxW lesion mask[, attributes])."""
    h, w, rng, s, px, yy, xx = canvas(size, rng)

    # skin: tone varies between images (skewed light, as in ISIC), low-frequency mottling + fine grain
    tone = float(rng.beta(1.6, 3.0))
    base = (_SKIN_LIGHT + tone * (_SKIN_DARK - _SKIN_LIGHT) + rng.normal(0, [5, 5, 7])).astype(np.float32)
    shade = 1 + 0.04 * smooth_noise(rng, (h, w), 3) + 0.02 * smooth_noise(rng, (h, w), 10)
    grain = 0.025 * smooth_noise(rng, (h, w), 60)
    erythema = np.maximum(smooth_noise(rng, (h, w), 4), 0) * rng.uniform(0.0, 0.08)  # patchy redness, never greenish
    skin = base[None, None, :] * (shade + grain)[..., None]
    skin *= (1 - erythema[..., None] * np.array([0.0, 1.0, 0.8], dtype=np.float32))

    # lesion: star-shaped radius function around a centre that is usually close to the image centre
    mean_r = min(rng.uniform(0.15, 0.60) * w / 2, 0.42 * s)
    spread = 0.06 if rng.random() < 0.85 else 0.14
    off = np.clip(rng.normal(0, spread, 2), -0.3, 0.3) * s
    cx, cy = (w - 1) / 2 + off[0], (h - 1) / 2 + off[1]
    irregular = rng.uniform(0.05, 0.22)
    k = np.arange(2, 10)
    dx, dy = xx - np.float32(cx), yy - np.float32(cy)
    dist = np.sqrt(dx * dx + dy * dy)
    ang = np.arctan2(dy, dx)
    wobble = fourier_series(ang, k, irregular * rng.normal(0, 1, k.size) / k ** 0.9, rng.uniform(0, 2 * math.pi, k.size))
    radius = mean_r * np.clip(1 + wobble, 0.4, 1.8)
    mask = dist < radius
    edge_w = rng.uniform(1.0, 4.0) * px
    alpha = np.clip(0.5 + (radius - dist) / (2 * edge_w), 0, 1)  # soft, and 0.5 exactly on the mask edge

    # pigment: lighter at the rim, darker centre, multi-scale blotches, optional network, dots and veil
    depth = np.clip(1 - dist / np.maximum(radius, 1e-3), 0, 1)
    darkness = (rng.uniform(0.1, 0.6) + rng.uniform(0.1, 0.5) * np.sqrt(depth)
                + 0.2 * smooth_noise(rng, (h, w), 3) + 0.1 * smooth_noise(rng, (h, w), 10))
    # an off-centre dark blotch makes the pigmentation asymmetric
    bx, by = cx + rng.normal(0, 0.3) * mean_r, cy + rng.normal(0, 0.3) * mean_r
    darkness += rng.uniform(0.1, 0.4) * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (rng.uniform(0.3, 0.6) * mean_r) ** 2)
    if rng.random() < 0.5:  # reticular pigment network, in patches
        darkness += rng.uniform(0.15, 0.35) * _network(rng, xx, yy, rng.uniform(6, 10) * px) \
            * np.clip(0.6 + smooth_noise(rng, (h, w), 4), 0, 1)
    if rng.random() < 0.5:  # dark dots and globules
        darkness += 0.35 * np.clip((smooth_noise(rng, (h, w), 35) - 1.8) / 0.3, 0, 1)
    darkness = np.clip(darkness, 0, 1.2)[..., None]
    # brown palette, but always darker than this patient's skin
    light_brown = np.minimum(base * np.array([0.82, 0.70, 0.64]), [180, 125, 92]).astype(np.float32)
    dark_brown = np.minimum(base * np.array([0.42, 0.30, 0.26]), [92, 58, 42]).astype(np.float32)
    lesion = light_brown + darkness * (dark_brown - light_brown)
    if rng.random() < 0.15:  # blue-white veil over part of the lesion
        veil = np.clip(smooth_noise(rng, (h, w), 3) - 0.5, 0, 1)[..., None] * rng.uniform(0.2, 0.45)
        lesion = lesion * (1 - veil) + veil * np.array([110, 112, 135], dtype=np.float32)
    lesion *= (1 + 0.6 * grain)[..., None]
    alpha = alpha * np.clip(0.75 + depth / 0.2, 0, 1)  # pigment thins out just inside the border
    img = skin * (1 - alpha[..., None]) + lesion * alpha[..., None]

    # optics: mild vignetting; often the dermatoscope's round field leaves dark, brownish corners. Like in
    # ISIC, dark regions touching the border are then usually *not* lesion - a position cue that a model
    # can learn and that cropped, border-touching lesions (case B) break.
    ccx, ccy = (w - 1) / 2, (h - 1) / 2
    rad = np.sqrt((xx - ccx) ** 2 + (yy - ccy) ** 2) / (0.5 * math.hypot(h, w))
    img *= (1 - rng.uniform(0.0, 0.25) * rad ** 2.5)[..., None]
    dark_corners = bool(rng.random() < 0.6)
    if dark_corners:
        field = rng.uniform(0.72, 0.95)
        fade = np.clip((field - rad) / rng.uniform(0.04, 0.14), 0, 1)[..., None]
        corner = base * rng.uniform(0.12, 0.35) * (1 + 0.15 * smooth_noise(rng, (h, w), 6))[..., None]
        img = img * fade + (1 - fade) * corner

    hair = bool(rng.random() < 0.3)
    if hair:
        img = _draw_hairs(img, rng, px)
    img += 2.0 * rng.standard_normal(img.shape, dtype=np.float32)  # sensor noise
    offset = math.hypot(off[0], off[1]) / s
    attributes = {"lesion_fraction": round(float(mask.mean()), 5), "skin_tone": round(tone, 4), "hair": hair,
                  "dark_corners": dark_corners, "center_offset": round(float(offset), 4),
                  "irregularity": round(float(irregular), 4)}
    return _finish(to_uint8(img), mask, attributes, return_attributes)


def _network(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, period: float) -> np.ndarray:
    """A honeycomb-like mesh in [0, 1] (1 on the lines): three plane waves at 60 degrees, warped by smooth noise."""
    shape = (yy.shape[0], xx.shape[1])
    k, rot = 2 * math.pi / period, rng.uniform(0, math.pi)
    f = np.zeros(shape, dtype=np.float32)
    for i in range(3):
        a = rot + i * 2 * math.pi / 3
        f += np.cos(k * (xx * math.cos(a) + yy * math.sin(a)) + 2.2 * smooth_noise(rng, shape, 18))
    return np.clip((-0.2 - f) / 0.8 + 0.5, 0, 1)  # cell centres (f high) stay clear, the rims between them fill


def _draw_hairs(img: np.ndarray, rng: np.random.Generator, px: float) -> np.ndarray:
    """Overlay a few thin, dark, gently curved hairs (quadratic Bezier polylines drawn with PIL)."""
    h, w = img.shape[:2]
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    t = np.linspace(0, 1, 24)[:, None]
    for _ in range(rng.integers(1, 10)):
        p0 = rng.uniform([0, 0], [w, h])
        ang = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(0.3, 0.9) * min(h, w)
        p2 = p0 + length * np.array([math.cos(ang), math.sin(ang)])
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.15 * length, 2)  # control point: bends the hair
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        width = max(1, round(rng.uniform(0.8, 2.2) * px))
        draw.line([tuple(p) for p in pts.tolist()], fill=int(rng.uniform(170, 250)), width=width, joint="curve")
    alpha = np.asarray(layer, dtype=np.float32)[..., None] / 255
    colour = np.array([40, 28, 22], dtype=np.float32) * rng.uniform(0.5, 1.5)
    return img * (1 - alpha) + colour * alpha


# ------------------------------------------------------------------------------------------- fundus
# Vessel widths in pixels at 256 px (they scale with the image): vein and artery where they leave the disc, and
# the narrowest a branch tapers to. Real FIVES vessels are 1-2 px at 256 px, but the cpu preset trains at 96 px,
# where such vessels vanish: with widths 4/3/1 even the ground truth, resized to 96 px and back, reached a Dice of
# only 0.59 against itself, and the clean model 0.43. At 8/6/3 that resolution ceiling is 0.88 and a cpu-preset
# model reaches 0.86-0.87 on images without the failure (tests/test_phantoms.py; issue 15's "realistic baselines").
VESSEL_WIDTHS = {2: 8.0, 1: 6.0}
VESSEL_MIN_WIDTH = 3.0


class _Draws:
    """Pre-drawn random numbers consumed one by one: scalar calls on a Generator are slow in a Python loop."""

    def __init__(self, rng: np.random.Generator, n: int = 4096):
        self.rng, self.n = rng, n
        self._refill()

    def _refill(self) -> None:
        self.u, self.g, self.i = self.rng.random(self.n).tolist(), self.rng.standard_normal(self.n).tolist(), 0

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        if self.i >= self.n:
            self._refill()
        self.i += 1
        return lo + (hi - lo) * self.u[self.i - 1]

    def normal(self, sd: float = 1.0) -> float:
        if self.i >= self.n:
            self._refill()
        self.i += 1
        return sd * self.g[self.i - 1]


class _VesselTree:
    """Grows vessels as steered random walks that branch recursively, and draws them into a label image."""

    def __init__(self, draws: _Draws, centre: tuple[float, float], radius: float, fovea: tuple[float, float],
                 scale: float, layer: ImageDraw.ImageDraw, min_width: float = 1.0):
        self.r, self.centre, self.radius, self.fovea = draws, centre, radius, fovea
        self.scale, self.draw, self.min_width = scale, layer, min_width
        self.step = max(1.0, 2.5 * scale)

    def grow(self, x: float, y: float, heading: float, width: float, length: float, label: int,
             target: float | None = None, turn: float = 0.0, depth: int = 0) -> None:
        """One vessel from (x, y); ``target``/``turn`` steer the heading (arcades bend round the macula)."""
        pts, widths = [(x, y)], []
        travelled, r = 0.0, self.r
        while travelled < length:
            if target is not None:
                heading += turn * math.atan2(math.sin(target - heading), math.cos(target - heading))
            heading += r.normal(0.07)
            x, y = x + self.step * math.cos(heading), y + self.step * math.sin(heading)
            travelled += self.step
            if math.hypot(x - self.centre[0], y - self.centre[1]) > 0.985 * self.radius:
                break
            if math.hypot(x - self.fovea[0], y - self.fovea[1]) < 0.1 * self.radius:
                break  # the fovea is vessel-free
            pts.append((x, y))
            widths.append(width)
            if width > 1.2 * self.min_width and depth < 6 and r.uniform() < 0.07:
                side = 1 if r.uniform() < 0.5 else -1
                child_w = max(self.min_width, width * r.uniform(0.5, 0.8))
                self.grow(x, y, heading + side * r.uniform(0.5, 1.2), child_w, (length - travelled) * r.uniform(0.4, 0.9)
                          + 10 * self.scale, label, heading + side * 0.3, 0.03, depth + 1)
                width = max(self.min_width, width * 0.9)  # the parent thins after giving off a branch
            width = max(self.min_width, width - 0.004 * self.step)  # and tapers with distance
        self._render(pts, widths, label)

    def _render(self, pts: list[tuple[float, float]], widths: list[float], label: int) -> None:
        """Draw the polyline in runs of equal pixel width, with round joins so runs connect without gaps."""
        i = 0
        while i < len(widths):
            wpx = max(1, round(widths[i] * self.scale))
            j = i
            while j + 1 < len(widths) and max(1, round(widths[j + 1] * self.scale)) == wpx:
                j += 1
            run = pts[i:j + 2]
            self.draw.line(run, fill=label, width=wpx, joint="curve" if wpx > 2 else None)
            if wpx > 2:
                x0, y0 = run[0]
                self.draw.ellipse([x0 - wpx / 2 + 0.5, y0 - wpx / 2 + 0.5, x0 + wpx / 2 - 0.5, y0 + wpx / 2 - 0.5], fill=label)
            i = j + 1


def fundus(size: Size, rng: np.random.Generator, *, return_attributes: bool = False) -> Phantom:
    """FIVES-like colour fundus photograph: (uint8 HxWx3 RGB, bool HxW vessel mask[, attributes])."""
    h, w, rng, s, scale, yy, xx = canvas(size, rng)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    R = rng.uniform(0.45, 0.495) * s
    dfov = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    fov = dfov <= R - 0.5

    side = "right" if rng.random() < 0.5 else "left"
    nasal = 1.0 if side == "right" else -1.0  # the disc lies nasal; the macula temporal of it
    disc_r = rng.uniform(0.12, 0.16) * R
    disc = (cx + nasal * rng.uniform(0.4, 0.55) * R, cy + rng.normal(0, 0.05) * R)
    fovea = (disc[0] - nasal * rng.uniform(0.62, 0.75) * R, disc[1] + rng.uniform(0.02, 0.12) * R)

    # retina: orange-red, brightest near an off-centre illumination point, with choroidal mottling
    illumination = float(rng.uniform(0.7, 1.15))
    colour = np.array([rng.uniform(195, 235), rng.uniform(75, 115), rng.uniform(25, 55)], dtype=np.float32)
    ix, iy = cx + rng.normal(0, 0.15) * R, cy + rng.normal(0, 0.15) * R
    fall = rng.uniform(0.25, 0.6)
    light = illumination * (1 - fall * (((xx - ix) ** 2 + (yy - iy) ** 2) / (R * R)))
    tex = 1 + 0.05 * smooth_noise(rng, (h, w), 6) + 0.025 * smooth_noise(rng, (h, w), 30)
    # macula: broad darkening with a darker fovea; disc: a bright yellow-white spot with a paler cup and a glow
    dm = ((xx - fovea[0]) ** 2 + (yy - fovea[1]) ** 2) / (R * R)
    macula = 1 - rng.uniform(0.2, 0.35) * np.exp(-dm / 0.03) - 0.1 * np.exp(-dm / 0.002)
    shade = np.clip(light * tex * macula, 0.05, None)
    img = colour[None, None, :] * shade[..., None]
    dd = np.sqrt((xx - disc[0]) ** 2 + (yy - disc[1]) ** 2) / disc_r
    disc_a = np.clip((1 - dd) / 0.12 + 0.5, 0, 1) * (0.85 + 0.15 * smooth_noise(rng, (h, w), 25))
    glow = 0.25 * np.exp(-np.maximum(dd - 1, 0) ** 2 / 0.6)
    disc_rgb = np.array([250, 205, 130], dtype=np.float32) * min(1.0, illumination + 0.15)
    cup = np.clip((rng.uniform(0.35, 0.6) - dd) / 0.15, 0, 1)
    disc_rgb = disc_rgb[None, None, :] + cup[..., None] * np.array([5, 35, 70], dtype=np.float32)
    img = img * (1 + glow[..., None]) * (1 - disc_a[..., None]) + disc_rgb * disc_a[..., None]

    labels = _draw_vessels((h, w), rng, (cx, cy), R, disc, disc_r, fovea, nasal, scale)
    vessels = (labels > 0) & fov
    # vessels: darker red; veins (label 2) darker and wider than arteries (label 1); slightly blurred edges
    dark = np.array([0.0, 0.33, 0.48], dtype=np.float32)[labels] * vessels
    dark = ndimage.gaussian_filter(dark, 0.45 * scale)
    img *= (1 - dark[..., None] * np.array([0.6, 1.25, 1.05], dtype=np.float32))

    img *= ramp(R - 0.5 - dfov)[..., None]  # black outside the circular field of view
    img = ndimage.gaussian_filter(img, (0.5 * scale, 0.5 * scale, 0)) if scale > 1.5 else img
    img += 1.5 * rng.standard_normal(img.shape, dtype=np.float32) * fov[..., None]
    attributes = {"disc_side": side, "vessel_fraction": round(float(vessels.mean()), 5),
                  "illumination": round(illumination, 4), "fov_fraction": round(float(fov.mean()), 4)}
    return _finish(to_uint8(img), vessels, attributes, return_attributes)


def _draw_vessels(shape: tuple[int, int], rng: np.random.Generator, centre: tuple[float, float], R: float,
                  disc: tuple[float, float], disc_r: float, fovea: tuple[float, float], nasal: float,
                  scale: float) -> np.ndarray:
    """Label image of the vessel tree (1 = artery, 2 = vein): arcades round the macula plus nasal branches."""
    h, w = shape
    layer = Image.new("L", (w, h), 0)
    draws = _Draws(rng)
    tree = _VesselTree(draws, centre, R, fovea, scale, ImageDraw.Draw(layer), VESSEL_MIN_WIDTH)
    temporal = 0.0 if nasal < 0 else math.pi  # heading pointing away from the disc, towards the macula
    for label, width in ((2, VESSEL_WIDTHS[2]), (1, VESSEL_WIDTHS[1])):  # veins first, arteries drawn over them
        for up in (-1.0, 1.0):  # superior and inferior arcade
            x0 = disc[0] + draws.normal(0.25 * disc_r)
            y0 = disc[1] + up * draws.uniform(0.1, 0.4) * disc_r
            start = up * math.pi / 2 + (-0.25 if temporal == 0.0 else 0.25) * up + draws.normal(0.15)
            # target: temporal, tilted back towards the horizontal raphe so the arcade hugs the macula
            target = temporal + (0.35 if temporal == 0.0 else -0.35) * up
            tree.grow(x0, y0, start, width * draws.uniform(0.9, 1.1), 1.3 * R, label, target, 0.09)
        for _ in range(1 + int(draws.uniform() * 2.5)):  # nasal branches fan out away from the macula
            ang = (0.0 if nasal > 0 else math.pi) + draws.uniform(-1.2, 1.2)
            tree.grow(disc[0], disc[1] + draws.normal(0.3 * disc_r), ang, width * draws.uniform(0.55, 0.75),
                      0.8 * R, label, ang, 0.02)
        # a small macular branch heading straight for the fovea (it stops short of it)
        ang = temporal + draws.normal(0.2)
        tree.grow(disc[0], disc[1], ang, width * 0.4, 0.6 * R, label, ang, 0.03)
    return np.asarray(layer)


# ----------------------------------------------------------------------------------------- datasets
MODALITIES: dict[str, Callable[..., Phantom]] = {"ultrasound": ultrasound, "dermoscopy": dermoscopy, "fundus": fundus}
ID_PREFIXES: dict[str, str] = {"ultrasound": "us", "dermoscopy": "derm", "fundus": "fundus"}


def generate_phantom_dataset(modality: str, root: str | Path, n: int, size: Size = 256, seed: int = 0,
                             fractions: Sequence[float] = (0.64, 0.16, 0.20), progress: bool = True) -> SampleTable:
    """Write (or reuse) a phantom dataset of ``n`` samples at ``root``, with train/val/test splits and attributes."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown phantom modality {modality!r}; choose one of {sorted(MODALITIES)}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 3:
        raise ValueError(f"n must be an integer of at least 3 (one sample per split at best), got {n!r}")
    try:
        hw = image_shape(size)
    except ValueError:
        hw = None
    if hw is None or min(hw) < MIN_DATASET_SIDE:
        raise ValueError(f"size must be an int (or an (height, width) pair) of at least {MIN_DATASET_SIDE} pixels, "
                         f"got {size!r}")
    n, seed = int(n), int(seed)
    fractions = [float(f) for f in fractions]
    width = max(5, len(str(n - 1)))
    ids = [f"{ID_PREFIXES[modality]}_{i:0{width}d}" for i in range(n)]
    splits = assign_splits(ids, fractions, seed)  # validates fractions before anything is written
    generator = MODALITIES[modality]
    config = {"kind": "phantom", "modality": modality, "n": n, "size": list(hw) if hw[0] != hw[1] else hw[0],
              "seed": seed, "fractions": fractions, "generator_version": GENERATOR_VERSIONS[modality]}

    def build(writer) -> dict[str, Any]:
        for sid, split in tqdm(list(zip(ids, splits)), desc=f"phantom {modality}", unit="img", disable=not progress):
            image, mask, attrs = generator(hw, rng_for(seed, modality, sid), return_attributes=True)
            writer.add(sid, split, image, mask, source=f"phantom-{modality}", **attrs)
        return {}

    meta = {"kind": "phantom", "modality": modality, "generator_version": GENERATOR_VERSIONS[modality],
            "image_mode": "L" if modality == "ultrasound" else "RGB", "size": config["size"], "seed": seed}
    return build_dataset(root, config, build, meta=meta)

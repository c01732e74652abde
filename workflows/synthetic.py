"""A synthetic fine-detail dataset in the AVA format, with a known answer.

GPF-CNN's claim (paper, sections III-IV) is that a foveal crop chosen by
top-down attention sees what a low-resolution peripheral view cannot. This
module plants exactly such a case so the claim can be checked where the truth
is known (``benchmarks/fine_detail.py``, ``gpf demo``):

* a *carrier* (a rounded panel with a dark frame, <= 10 % of the image) sits at
  a random place among untextured distractor shapes of the same palette and
  size. Its colour (cool .. warm) moves the score a little, so a peripheral-only
  stage-1 classifier learns to look at it;
* a fine plaid on the carrier moves the score a lot. Its period ``p`` (original
  pixels) is chosen from the view sizes so that ``p * s <= 0.9`` with the
  peripheral scale ``s = view_size / long_side`` (above the peripheral view's
  sampling rate, so the antialiased downscale averages it to the flat colour)
  and ``p * z >= 4`` with the foveal zoom ``z = fovea_size / carrier_side`` (a
  crop of the carrier's size keeps it at >= 4 pixels per period);
* the background gradient's light direction (from above scores higher) is a
  global-layout component the peripheral view sees.

Hidden quality ``q`` = weighted sum of the centred components + noise; the
target mean score is ``centre + q``; each image gets 100-250 votes over the 10
AVA buckets from a discretised normal whose mean equals the target. The
``control`` task draws the same images but the score uses an independent hidden
bit instead of the drawn plaid, so every variant should tie.

Output is the real AVA layout (``AVA.txt``, ``tags.txt``, ``challenges.txt``,
``aesthetics_image_lists/*.jpgl``, ``images/{id}.jpg``) plus the ground truth
``synthetic_truth.csv`` and the parameters ``synthetic_info.json``. The same
seed and arguments give byte-identical files, whatever ``workers`` is. See
``docs/synthetic.md``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from ..errors import GPFError

TASKS = ("detail", "control")
N_BUCKETS = 10                      # AVA scores 1..10
SCORE_THRESHOLD = 5.0               # AVA high/low cut (paper, section IV-B)
FIRST_ID = 100001                   # image ids are FIRST_ID, FIRST_ID + 1, ...

# Scale argument (docs/synthetic.md). The detail's period p in original pixels
# satisfies p * s <= PERIPHERAL_MAX_CYCLES (s = view_size / long side: one period
# covers less than a peripheral pixel, so Lanczos averages it away) and
# p * z >= FOVEAL_MIN_PIXELS (z = fovea_size / carrier side).
PERIPHERAL_MAX_CYCLES = 0.9
FOVEAL_MIN_PIXELS = 4.0
MAX_AREA_FRACTION = 0.10            # carrier box <= 10 % of the image
MIN_PERIPHERAL_SIDE = 8.0           # carrier side >= 8 peripheral pixels (visible)
BOX_MIN_RATIO = 0.65                # carrier sides are drawn in [0.65, 1] * box_max
DETAIL_AMPLITUDE = 32.0             # plaid peak, grey levels (luma only: survives 4:2:0 JPEG)

# Carrier colour runs from COOL (coarse = 0) to WARM (coarse = 1). Every channel
# stays inside [60, 195] so plaid + shading + grain never clip: clipping would
# shift the mean and make the plaid visible after the downscale.
COOL = np.array([70.0, 110.0, 185.0], dtype=np.float32)
WARM = np.array([185.0, 115.0, 70.0], dtype=np.float32)
FRAME = np.array([38.0, 36.0, 40.0], dtype=np.float32)
GRAIN_STD = 3.0                     # per-pixel luma noise, grey levels
CLOUD_AMPLITUDE = 9.0               # low-frequency background texture, grey levels
CARRIER_SHADING = 6.0               # +- grey levels of the carrier's vertical shading

# Background palettes: (light colour, dark colour, AVA category list or None, tag id).
PALETTES = {
    "landscape": ((150, 185, 225), (70, 110, 70), "landscape", 14),
    "cityscape": ((175, 175, 185), (65, 70, 85), "cityscape", 2),
    "floral": ((225, 195, 205), (85, 125, 80), "floral", 38),
    "abstract": ((215, 205, 150), (90, 60, 100), None, 1),
}
TAGS = {1: "Abstract", 2: "Cityscape", 14: "Landscape", 15: "Nature", 38: "Floral"}  # AVA's ids
EXTRA_TAG = 15                      # second tag on some images, independent of the score
CHALLENGES = {1: "Synthetic_Light", 2: "Synthetic_Panels", 3: "Synthetic_Colour"}
CHALLENGE_BLOCK = 50                # consecutive ids share a challenge, as in AVA
DISTRACTOR_KINDS = ("ellipse", "triangle", "panel")

TRUTH_FILE = "synthetic_truth.csv"
INFO_FILE = "synthetic_info.json"
LIST_DIR = "aesthetics_image_lists"
TRUTH_COLUMNS = ("id", "width", "height", "x0", "y0", "x1", "y1", "detail", "coarse",
                 "layout", "score_bit", "noise", "q", "target_mean", "category", "period")


class SyntheticError(GPFError, ValueError):
    """A bad argument or an impossible geometry; the message says what to change."""


class UnknownImageIdError(SyntheticError, KeyError):
    """An image id that is not in the synthetic truth (boxes from another dataset)."""

    __str__ = Exception.__str__  # the message as written, not KeyError's quoted repr


class DatasetExistsError(GPFError, FileExistsError):
    """The output folder already holds a dataset; the message says what to do."""


# ------------------------------------------------------------------ geometry

@dataclass(frozen=True)
class DetailGeometry:
    """Image size, view sizes and what follows from them (docs/synthetic.md)."""
    width: int
    height: int
    view_size: int                  # peripheral view: longest side
    fovea_size: int                 # foveal view: square side
    peripheral_scale: float         # s = view_size / long side
    period: int                     # plaid period p, original pixels
    box_min: int                    # carrier box side range, original pixels
    box_max: int
    frame: int                      # carrier frame width, original pixels

    @property
    def peripheral_cycles(self) -> float:
        """Plaid periods per peripheral pixel's width, p * s (must be < 1)."""
        return self.period * self.peripheral_scale

    @property
    def max_resolved_side(self) -> float:
        """Longest crop side whose foveal view still resolves the plaid (p * z >= 2, Nyquist).

        A larger crop is downscaled into the fovea with an antialiasing filter
        that removes the plaid, as the peripheral view does.
        """
        return self.period * self.fovea_size / 2

    @property
    def foveal_pixels(self) -> tuple[float, float]:
        """Foveal pixels per period, p * z, for the largest and smallest carrier."""
        return (self.period * self.fovea_size / self.box_max,
                self.period * self.fovea_size / self.box_min)


def detail_geometry(width: int = 640, height: int = 480, view_size: int = 224,
                    fovea_size: int | None = None) -> DetailGeometry:
    """Pick the plaid period and carrier size for these image and view sizes.

    ``p`` = the largest integer >= 2 with ``p * s <= 0.9``; the carrier side
    ``b_max = min(fovea_size * p / 4, sqrt(0.10 * W * H), short side / 2)``,
    ``b_min = 0.65 * b_max``, and ``b_min * s >= 8`` peripheral pixels.
    Raises ``SyntheticError`` naming the limit when no such choice exists.
    """
    fovea_size = view_size if fovea_size is None else fovea_size
    for name, value in (("width", width), ("height", height), ("view_size", view_size),
                        ("fovea_size", fovea_size)):
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise SyntheticError(f"{name} must be a positive whole number of pixels, "
                                 f"got {value!r}")
    long_side, short_side = max(width, height), min(width, height)
    scale = view_size / long_side
    period = math.floor(PERIPHERAL_MAX_CYCLES / scale + 1e-9)
    if period < 2:
        raise SyntheticError(
            f"view_size {view_size} is too close to the image's long side {long_side}: a "
            f"detail that vanishes in the peripheral view needs a period p >= 2 pixels with "
            f"p * view_size / long_side <= {PERIPHERAL_MAX_CYCLES}, i.e. view_size <= "
            f"{int(PERIPHERAL_MAX_CYCLES / 2 * long_side)}; use larger images or a smaller "
            f"view_size")
    box_max = int(min(fovea_size * period / FOVEAL_MIN_PIXELS,
                      math.sqrt(MAX_AREA_FRACTION * width * height), short_side / 2))
    box_min = int(math.ceil(BOX_MIN_RATIO * box_max))
    if box_min * scale < MIN_PERIPHERAL_SIDE:
        raise SyntheticError(
            f"with {width}x{height} images, view_size {view_size} and fovea_size "
            f"{fovea_size} the carrier can be at most {box_max} px (period {period} px, "
            f">= {FOVEAL_MIN_PIXELS:g} foveal pixels per period), which is under "
            f"{MIN_PERIPHERAL_SIDE:g} peripheral pixels: the peripheral view could not see "
            f"it. Use a larger fovea_size or view_size, or smaller images")
    frame = max(2, int(math.ceil(max(0.08 * box_min, 1.5 / scale))))
    return DetailGeometry(width, height, view_size, fovea_size, scale, period,
                          box_min, box_max, frame)


# ------------------------------------------------------------------- scores

@dataclass(frozen=True)
class ScoreModel:
    """Hidden quality and votes: ``q = sum_k w_k (c_k - 0.5) + noise``, mean = centre + q.

    Components lie in [0, 1]: the score bit (the plaid, or in the control task
    an independent hidden bit), the carrier colour (coarse) and the light
    direction (layout). Votes: ``n ~ U{min_votes..max_votes}`` drawn from a
    discretised normal over the buckets with spread ``vote_spread`` whose mean
    equals the target mean.
    """
    detail_weight: float = 2.0
    coarse_weight: float = 1.2
    layout_weight: float = 0.8
    noise_std: float = 0.25
    centre: float = 5.3
    vote_spread: float = 1.5
    min_votes: int = 100
    max_votes: int = 250

    def quality(self, score_bit: float, coarse: float, layout: float, noise: float) -> float:
        return (self.detail_weight * (score_bit - 0.5) + self.coarse_weight * (coarse - 0.5)
                + self.layout_weight * (layout - 0.5) + noise)

    def target_mean(self, q: float) -> float:
        """Mean score the votes aim at, kept inside the scale's reachable range."""
        return float(min(max(self.centre + q, 1.5), N_BUCKETS - 0.5))

    def check(self) -> None:
        if not 1 <= self.min_votes <= self.max_votes:
            raise SyntheticError(f"ScoreModel needs 1 <= min_votes <= max_votes, got "
                                 f"{self.min_votes}..{self.max_votes}")
        if self.vote_spread <= 0 or self.noise_std < 0:
            raise SyntheticError("ScoreModel needs vote_spread > 0 and noise_std >= 0, got "
                                 f"{self.vote_spread} and {self.noise_std}")


def _bucket_weights(location: np.ndarray, spread: float) -> np.ndarray:
    """Discretised normal over buckets 1..N at ``location`` (rows sum to 1)."""
    buckets = np.arange(1, N_BUCKETS + 1, dtype=np.float64)
    logits = -0.5 * ((buckets[None, :] - np.asarray(location, np.float64)[:, None]) / spread) ** 2
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


@lru_cache(maxsize=8)
def _location_table(spread: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean of the truncated distribution, location) on a fine grid, mean increasing."""
    locations = np.linspace(-10.0, N_BUCKETS + 11.0, 8401)
    means = _bucket_weights(locations, spread) @ np.arange(1, N_BUCKETS + 1)
    return means, locations


def vote_probabilities(mean: float, spread: float = 1.5) -> np.ndarray:
    """Bucket probabilities (scores 1..10) of a discretised normal whose mean is ``mean``.

    Truncation to 1..10 pulls the mean towards the middle, so the normal's
    location is solved (by interpolation in a fine table) to give exactly ``mean``.
    """
    if not 1.0 < mean < N_BUCKETS:
        raise SyntheticError(f"mean score must lie strictly inside 1..{N_BUCKETS}, got {mean}")
    means, locations = _location_table(float(spread))
    location = np.interp(mean, means, locations)
    return _bucket_weights(np.array([location]), spread)[0]


# -------------------------------------------------------------------- scenes

@dataclass(frozen=True)
class Shape:
    kind: str                           # 'ellipse' | 'triangle' | 'panel'
    box: tuple[int, int, int, int]      # x0, y0, x1, y1, half-open
    colour: tuple[float, float, float]
    shading: float                      # +- grey levels top to bottom
    flip: bool = False                  # triangle apex down


@dataclass(frozen=True)
class Scene:
    """Everything random about one image; ``render_scene`` turns it into pixels."""
    index: int
    image_id: str
    width: int
    height: int
    period: int
    frame: int
    palette: str
    light: tuple[float, float, float]
    dark: tuple[float, float, float]
    light_angle: float                  # radians; pi/2 = light from the top
    carrier: tuple[int, int, int, int]  # x0, y0, x1, y1, half-open, original pixels
    detail: bool                        # plaid drawn on the carrier
    coarse: float                       # carrier colour, 0 = COOL .. 1 = WARM
    layout: float                       # (1 + sin light_angle) / 2: 1 = light from the top
    score_bit: int                      # the bit the score uses (== detail in task 'detail')
    noise: float
    q: float
    target_mean: float
    votes: tuple[int, ...]
    tags: tuple[int, int]
    challenge: int
    distractors: tuple[Shape, ...]
    cloud_seed: int
    grain_seed: int

    @property
    def category(self) -> str | None:
        return PALETTES[self.palette][2]


def _scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, index)))


def _carrier_colour(coarse: float) -> np.ndarray:
    return COOL + np.float32(coarse) * (WARM - COOL)


def _draw_distractors(rng: np.random.Generator, geometry: DetailGeometry,
                      carrier: tuple[int, int, int, int]) -> tuple[Shape, ...]:
    """2-5 shapes of the carrier's size range and palette, mostly away from it."""
    W, H = geometry.width, geometry.height
    shapes = []
    for _ in range(int(rng.integers(2, 6))):
        kind = DISTRACTOR_KINDS[int(rng.integers(len(DISTRACTOR_KINDS)))]
        w = int(rng.integers(geometry.box_min // 2, geometry.box_max + 1))
        h = int(rng.integers(geometry.box_min // 2, geometry.box_max + 1))
        for _attempt in range(8):   # keep most of each distractor off the carrier
            x0 = int(rng.integers(0, W - w + 1))
            y0 = int(rng.integers(0, H - h + 1))
            if _overlap((x0, y0, x0 + w, y0 + h), carrier) < 0.25 * w * h:
                break
        colour = tuple(float(v) for v in _carrier_colour(float(rng.random())))
        shapes.append(Shape(kind, (x0, y0, x0 + w, y0 + h), colour,
                            float(rng.uniform(-12, 12)), bool(rng.random() < 0.5)))
    return tuple(shapes)


def draw_scene(index: int, *, seed: int, geometry: DetailGeometry, task: str = "detail",
               score_model: ScoreModel | None = None) -> Scene:
    """The random content of image ``index`` (independent of every other index).

    Draws happen in a fixed order whatever ``task`` is, so the detail and
    control datasets of one seed have identical images and differ in votes only.
    """
    if task not in TASKS:
        raise SyntheticError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    model = score_model or ScoreModel()
    rng = _scene_rng(seed, index)
    W, H = geometry.width, geometry.height
    palette = list(PALETTES)[int(rng.integers(len(PALETTES)))]
    base_light, base_dark = (np.array(c, np.float64) for c in PALETTES[palette][:2])
    light = tuple(np.clip(base_light + rng.uniform(-15, 15, 3), 0, 255).tolist())
    dark = tuple(np.clip(base_dark + rng.uniform(-15, 15, 3), 0, 255).tolist())
    light_angle = float(rng.uniform(0, 2 * math.pi))

    cw = int(rng.integers(geometry.box_min, geometry.box_max + 1))
    ch = int(rng.integers(geometry.box_min, geometry.box_max + 1))
    margin = 4
    cx0 = int(rng.integers(margin, max(margin, W - cw - margin) + 1))
    cy0 = int(rng.integers(margin, max(margin, H - ch - margin) + 1))
    carrier = (cx0, cy0, cx0 + cw, cy0 + ch)
    coarse = float(rng.random())
    detail = bool(rng.random() < 0.5)
    hidden_bit = int(rng.random() < 0.5)
    distractors = _draw_distractors(rng, geometry, carrier)
    cloud_seed, grain_seed = (int(s) for s in rng.integers(0, 2**63 - 1, size=2))
    extra_tag = EXTRA_TAG if rng.random() < 0.3 else 0

    layout = (1.0 + math.sin(light_angle)) / 2.0
    score_bit = int(detail) if task == "detail" else hidden_bit
    # Last: how many numbers the multinomial consumes depends on the target mean.
    noise, q, target, votes = _draw_votes(rng, model, score_bit, coarse, layout)
    tags = (PALETTES[palette][3], extra_tag)
    challenge = 1 + (index // CHALLENGE_BLOCK) % len(CHALLENGES)
    return Scene(index, str(FIRST_ID + index), W, H, geometry.period, geometry.frame,
                 palette, light, dark, light_angle, carrier, detail, coarse, layout,
                 score_bit, noise, q, target, votes, tags, challenge, distractors,
                 cloud_seed, grain_seed)


def _draw_votes(rng: np.random.Generator, model: ScoreModel, score_bit: int, coarse: float,
                layout: float) -> tuple[float, float, float, tuple[int, ...]]:
    """(noise, q, target mean, vote counts) of one image under ``model``."""
    noise = float(rng.normal(0.0, model.noise_std)) if model.noise_std > 0 else 0.0
    q = model.quality(score_bit, coarse, layout, noise)
    target = model.target_mean(q)
    n_votes = int(rng.integers(model.min_votes, model.max_votes + 1))
    votes = rng.multinomial(n_votes, vote_probabilities(target, model.vote_spread))
    return noise, q, target, tuple(int(v) for v in votes)


# ----------------------------------------------------------------- rendering

def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection area of two (x0, y0, x1, y1) boxes."""
    return (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))


def _pixel_grid(box: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x row, y column) of a half-open box."""
    x0, y0, x1, y1 = box
    return (np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5,
            np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5)


def _coverage(signed_distance: np.ndarray) -> np.ndarray:
    """Antialiased mask (1 inside, 0 outside, a one-pixel ramp) from a signed distance."""
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


def _panel_mask(box: Sequence[float], radius: float, xs, ys) -> np.ndarray:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hx, hy = (box[2] - box[0]) / 2 - radius, (box[3] - box[1]) / 2 - radius
    qx, qy = np.abs(xs - cx) - hx, np.abs(ys - cy) - hy
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    inside = np.minimum(np.maximum(qx, qy), 0)
    return _coverage(outside + inside - radius)


def _ellipse_mask(box: Sequence[float], xs, ys) -> np.ndarray:
    a, b = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    r = np.sqrt(((xs - box[0] - a) / a) ** 2 + ((ys - box[1] - b) / b) ** 2)
    return _coverage((r - 1.0) * min(a, b))


def _triangle_mask(box: Sequence[float], flip: bool, xs, ys) -> np.ndarray:
    x0, y0, x1, y1 = box
    apex_y, base_y = (y1, y0) if flip else (y0, y1)
    pts = [((x0 + x1) / 2, apex_y), (x1, base_y), (x0, base_y)]
    area2 = (pts[1][0] - pts[0][0]) * (pts[2][1] - pts[0][1]) - \
        (pts[2][0] - pts[0][0]) * (pts[1][1] - pts[0][1])
    orient = 1.0 if area2 > 0 else -1.0
    distance = None
    for (ax, ay), (bx, by) in zip(pts, pts[1:] + pts[:1]):
        ex, ey = bx - ax, by - ay
        d = orient * ((xs - ax) * ey - (ys - ay) * ex) / math.hypot(ex, ey)  # > 0 outside
        distance = d if distance is None else np.maximum(distance, d)
    return _coverage(distance)


def _blend(img: np.ndarray, box: Sequence[int], mask: np.ndarray, colour: np.ndarray) -> None:
    """img[:, box] <- mix(img[:, box], colour, mask) in place (img is channel-first).

    ``colour`` is (3,) or broadcasts to the (3, h, w) window.
    """
    window = img[:, box[1]:box[3], box[0]:box[2]]
    if colour.ndim == 1:
        colour = colour[:, None, None]
    window += mask * (colour - window)


def _shading(ys: np.ndarray, box: Sequence[int], amount: float) -> np.ndarray:
    """Vertical light fall-off, +-amount grey levels, shape (h, 1)."""
    t = (ys - box[1]) / max(1, box[3] - box[1]) - 0.5
    return 2 * amount * t


@lru_cache(maxsize=4)
def _cloud_basis(length: int, knots: int) -> np.ndarray:
    """(length, knots) Gaussian bumps a knot spacing wide, rows of unit norm.

    A random field ``basis_y @ amplitudes @ basis_x.T`` with standard normal
    amplitudes then has unit variance at every pixel.
    """
    spacing = length / (knots - 1)
    centres = np.arange(knots) * spacing - spacing / 2
    u = (np.arange(length)[:, None] + 0.5 - centres[None, :]) / spacing
    basis = np.exp(-u * u)
    return (basis / np.linalg.norm(basis, axis=1, keepdims=True)).astype(np.float32)


def _background(scene: Scene) -> np.ndarray:
    """Light-to-dark gradient towards ``light_angle`` + a soft cloud texture, (3, H, W)."""
    W, H = scene.width, scene.height
    xs = np.arange(W, dtype=np.float32)[None, :] - W / 2
    ys = np.arange(H, dtype=np.float32)[:, None] - H / 2
    ux, uy = math.cos(scene.light_angle), -math.sin(scene.light_angle)  # image y points down
    t = (xs * ux + ys * uy) / (abs(ux) * W + abs(uy) * H) + 0.5         # 1 on the light side
    amplitudes = np.random.default_rng(scene.cloud_seed).standard_normal((6, 8))
    columns = _cloud_basis(H, 6) @ (CLOUD_AMPLITUDE * amplitudes).astype(np.float32)
    basis_x = _cloud_basis(W, 8)
    # Sum of outer products rather than a (H, 8) @ (8, W) matmul: a multithreaded
    # BLAS makes that tiny product 20x slower on a busy machine.
    cloud = columns[:, :1] * basis_x[None, :, 0]
    for k in range(1, basis_x.shape[1]):
        cloud += columns[:, k:k + 1] * basis_x[None, :, k]
    img = np.empty((3, H, W), np.float32)
    for c, (dark, light) in enumerate(zip(scene.dark, scene.light)):
        np.multiply(t, np.float32(light - dark), out=img[c])
        img[c] += cloud + np.float32(dark)
    return img


def _draw_shape(img: np.ndarray, shape: Shape) -> None:
    xs, ys = _pixel_grid(shape.box)
    if shape.kind == "ellipse":
        mask = _ellipse_mask(shape.box, xs, ys)
    elif shape.kind == "triangle":
        mask = _triangle_mask(shape.box, shape.flip, xs, ys)
    else:
        side = min(shape.box[2] - shape.box[0], shape.box[3] - shape.box[1])
        mask = _panel_mask(shape.box, 0.15 * side, xs, ys)
    colour = np.array(shape.colour, np.float32)[:, None, None] + \
        _shading(ys, shape.box, shape.shading)
    _blend(img, shape.box, mask, colour)


def plaid(width: int, height: int, period: int) -> np.ndarray:
    """``cos(2 pi x / p) * cos(2 pi y / p)``, shape (height, width): zero mean per period.

    For p = 2 it is the +-1 pixel checkerboard. A pure frequency (1/p, 1/p):
    the scale argument of docs/synthetic.md applies to it exactly.
    """
    x = np.cos(2 * np.pi * np.arange(width) / period).astype(np.float32)
    y = np.cos(2 * np.pi * np.arange(height) / period).astype(np.float32)
    return y[:, None] * x[None, :]


def _draw_carrier(img: np.ndarray, scene: Scene, detail: bool) -> None:
    box = scene.carrier
    xs, ys = _pixel_grid(box)
    side = min(box[2] - box[0], box[3] - box[1])
    radius = 0.15 * side
    _blend(img, box, _panel_mask(box, radius, xs, ys), FRAME)
    f = scene.frame
    inner = (box[0] + f, box[1] + f, box[2] - f, box[3] - f)
    ixs, iys = _pixel_grid(inner)
    mask = _panel_mask(inner, max(0.0, radius - f), ixs, iys)
    colour = _carrier_colour(scene.coarse)[:, None, None] + \
        _shading(iys, inner, CARRIER_SHADING)
    if detail:
        texture = plaid(inner[2] - inner[0], inner[3] - inner[1], scene.period)
        colour = colour + DETAIL_AMPLITUDE * texture
    _blend(img, inner, mask, colour)


def _grain(scene: Scene) -> np.ndarray:
    """Per-pixel luma grain, uniform with std GRAIN_STD (cheap: one random byte a pixel)."""
    noise = np.random.default_rng(scene.grain_seed).integers(
        0, 256, (scene.height, scene.width), dtype=np.uint8).astype(np.float32)
    return (noise - 127.5) * np.float32(GRAIN_STD / math.sqrt((256 ** 2 - 1) / 12))


def render_image(scene: Scene, *, detail: bool | None = None) -> Image.Image:
    """The RGB image of ``scene``; ``detail`` overrides whether the plaid is drawn.

    Everything else, grain included, is identical with and without the plaid.
    """
    img = _background(scene)
    for shape in scene.distractors:
        _draw_shape(img, shape)
    _draw_carrier(img, scene, scene.detail if detail is None else detail)
    grain = _grain(scene) + np.float32(0.5)   # + 0.5: the uint8 cast below then rounds
    planes = []
    for plane in img:
        plane += grain
        np.clip(plane, 0, 255, out=plane)
        planes.append(Image.fromarray(plane.astype(np.uint8)))
    return Image.merge("RGB", planes)


def render_scene(scene: Scene, *, detail: bool | None = None) -> np.ndarray:
    """``render_image`` as a uint8 (height, width, 3) array."""
    return np.array(render_image(scene, detail=detail))


def encode_scene(scene: Scene, jpeg_quality: int = 90) -> bytes:
    """JPEG bytes of the rendered scene (fixed settings: baseline, 4:2:0, no optimise)."""
    buffer = io.BytesIO()
    render_image(scene).save(buffer, format="JPEG", quality=jpeg_quality, subsampling=2,
                             optimize=False, progressive=False)
    return buffer.getvalue()


# ------------------------------------------------------------------- writing

@dataclass(frozen=True)
class _Job:
    root: str
    seed: int
    geometry: DetailGeometry
    task: str
    score_model: ScoreModel
    jpeg_quality: int


def _make_images(job: _Job, indices: Sequence[int]) -> list[Scene]:
    """Draw, render and write the images of ``indices``; return their scenes."""
    images = Path(job.root) / "images"
    scenes = []
    for index in indices:
        scene = draw_scene(index, seed=job.seed, geometry=job.geometry, task=job.task,
                           score_model=job.score_model)
        (images / f"{scene.image_id}.jpg").write_bytes(encode_scene(scene, job.jpeg_quality))
        scenes.append(scene)
    return scenes


def _make_images_star(args: tuple[_Job, Sequence[int]]) -> list[Scene]:
    return _make_images(*args)


def _render_all(job: _Job, n_images: int, workers: int) -> list[Scene]:
    if workers <= 1 or n_images < 64:
        return _make_images(job, range(n_images))
    import multiprocessing
    chunk = 32
    tasks = [(job, range(i, min(i + chunk, n_images))) for i in range(0, n_images, chunk)]
    with multiprocessing.get_context().Pool(workers) as pool:
        return [s for part in pool.imap(_make_images_star, tasks) for s in part]


def _test_indices(n_images: int, test_fraction: float, seed: int) -> set[int]:
    n_test = int(round(test_fraction * n_images))
    if test_fraction > 0:
        n_test = max(1, n_test)
    n_test = min(n_test, n_images - 1)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    return set(rng.permutation(n_images)[:n_test].tolist())


def _write_text(path: Path, lines: Iterable[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="ascii")


def _ava_line(scene: Scene) -> str:
    fields = [scene.index + 1, scene.image_id, *scene.votes, *scene.tags, scene.challenge]
    return " ".join(str(v) for v in fields)


def _truth_row(scene: Scene) -> list[str]:
    return [scene.image_id, str(scene.width), str(scene.height), *map(str, scene.carrier),
            str(int(scene.detail)), f"{scene.coarse:.6f}", f"{scene.layout:.6f}",
            str(scene.score_bit), f"{scene.noise:.6f}", f"{scene.q:.6f}",
            f"{scene.target_mean:.6f}", scene.palette, str(scene.period)]


def _write_labels(root: Path, scenes: Sequence[Scene], test: set[int], seed: int) -> None:
    _write_text(root / "AVA.txt", (_ava_line(s) for s in scenes))
    _write_text(root / "tags.txt", (f"{k} {v}" for k, v in TAGS.items()))
    _write_text(root / "challenges.txt", (f"{k} {v}" for k, v in CHALLENGES.items()))
    lists = root / LIST_DIR
    lists.mkdir(exist_ok=True)
    # Test lists in a seeded order (like AVA's), train lists in id order.
    order = [s for s in scenes if s.index in test]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    order = [order[i] for i in rng.permutation(len(order))]
    _write_text(lists / "generic_test.jpgl", (s.image_id for s in order))
    _write_text(lists / "generic_ls_train.jpgl",
                (s.image_id for s in scenes if s.index not in test))
    for category in sorted({p[2] for p in PALETTES.values() if p[2]}):
        _write_text(lists / f"{category}_test.jpgl",
                    (s.image_id for s in order if s.category == category))
        _write_text(lists / f"{category}_train.jpgl",
                    (s.image_id for s in scenes if s.index not in test
                     and s.category == category))
    with open(root / TRUTH_FILE, "w", newline="", encoding="ascii") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(TRUTH_COLUMNS)
        writer.writerows(_truth_row(s) for s in scenes)


def _written_files(root: Path) -> list[Path]:
    """Files a previous make_ava_dataset may have written in ``root``.

    Its ``synthetic_info.json`` is written first, so even an interrupted run
    says how many images (ids FIRST_ID ...) it was writing.
    """
    files = [root / n for n in ("AVA.txt", "tags.txt", "challenges.txt", TRUTH_FILE, INFO_FILE)]
    lists = root / LIST_DIR
    names = ["generic_test", "generic_ls_train"] + [
        f"{c}_{s}" for c in {p[2] for p in PALETTES.values() if p[2]} for s in ("test", "train")]
    files += [lists / f"{n}.jpgl" for n in names]
    n_images = int(json.loads((root / INFO_FILE).read_text(encoding="ascii"))["n_images"])
    files += [root / "images" / f"{FIRST_ID + i}.jpg" for i in range(n_images)]
    return files


def _prepare_root(root: Path, overwrite: bool) -> None:
    """Refuse a folder holding a dataset unless ``overwrite``; then remove only our files."""
    existing = [n for n in ("AVA.txt", TRUTH_FILE, INFO_FILE) if (root / n).exists()]
    if (root / "images").is_dir() and any((root / "images").iterdir()):
        existing.append("images/")
    if existing and not overwrite:
        raise DatasetExistsError(
            f"{root} already holds a dataset ({', '.join(existing)}); pass overwrite=True to "
            "replace a synthetic one, or choose an empty folder")
    if existing:
        if not (root / INFO_FILE).is_file():
            raise DatasetExistsError(
                f"{root} holds {', '.join(existing)} but no {INFO_FILE}: it is not a "
                "synthetic dataset written by gpf, so it is left alone; choose another folder")
        for path in _written_files(root):
            path.unlink(missing_ok=True)
    (root / "images").mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class SyntheticInfo:
    """What ``make_ava_dataset`` wrote (``params`` is also saved as synthetic_info.json)."""
    root: Path
    params: dict
    geometry: DetailGeometry
    ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    share_above_threshold: float        # share of images with mean score > 5
    mean_score_range: tuple[float, float]
    detail_share: float
    seconds: float = field(compare=False)

    @property
    def images_per_second(self) -> float:
        return len(self.ids) / self.seconds if self.seconds > 0 else float("inf")


def _check_arguments(n_images, seed, task, test_fraction, jpeg_quality, workers) -> None:
    if task not in TASKS:
        raise SyntheticError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if not isinstance(n_images, (int, np.integer)) or n_images < 2:
        raise SyntheticError(f"n_images must be a whole number >= 2 (a train and a test "
                             f"split), got {n_images!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SyntheticError(f"seed must be a whole number >= 0, got {seed!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise SyntheticError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if not isinstance(jpeg_quality, (int, np.integer)) or not 1 <= jpeg_quality <= 100:
        raise SyntheticError(f"jpeg_quality must be a whole number in 1..100, got "
                             f"{jpeg_quality!r}")
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise SyntheticError(f"workers must be a whole number >= 1, got {workers!r}")


def make_ava_dataset(root: str | os.PathLike, n_images: int, *, seed: int, width: int = 640,
                     height: int = 480, view_size: int = 224, fovea_size: int | None = None,
                     task: str = "detail", test_fraction: float = 0.2, jpeg_quality: int = 90,
                     workers: int = 1, score_model: ScoreModel | None = None,
                     overwrite: bool = False) -> SyntheticInfo:
    """Write a synthetic fine-detail dataset in the AVA layout under ``root``.

    Files: ``AVA.txt`` (15 columns: index, id, 10 counts, tag1, tag2, challenge),
    ``tags.txt``, ``challenges.txt``, ``aesthetics_image_lists/generic_test.jpgl``
    (``test_fraction`` of the ids), ``generic_ls_train.jpgl`` and per-category
    ``{landscape,cityscape,floral}_{test,train}.jpgl`` (from the background
    palette; 'abstract' scenes are in no category), ``images/{id}.jpg``,
    ``synthetic_truth.csv`` and ``synthetic_info.json``. Label files are written
    after all images, so an interrupted run leaves no ``AVA.txt``.
    ``fovea_size`` defaults to ``view_size``. Deterministic in every argument but
    ``workers``.
    """
    t0 = time.perf_counter()
    _check_arguments(n_images, seed, task, test_fraction, jpeg_quality, workers)
    model = score_model or ScoreModel()
    model.check()
    geometry = detail_geometry(width, height, view_size, fovea_size)
    root = Path(root).expanduser()
    _prepare_root(root, overwrite)
    params = {"generator": "gpf.workflows.synthetic", "seed": int(seed), "task": task,
              "n_images": int(n_images), "test_fraction": test_fraction,
              "jpeg_quality": int(jpeg_quality), "geometry": asdict(geometry),
              "score_model": asdict(model), "detail_amplitude": DETAIL_AMPLITUDE}
    (root / INFO_FILE).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n",
                                  encoding="ascii")   # first: marks the folder as ours
    job = _Job(str(root), int(seed), geometry, task, model, int(jpeg_quality))
    scenes = _render_all(job, int(n_images), int(workers))
    test = _test_indices(len(scenes), test_fraction, int(seed))
    _write_labels(root, scenes, test, int(seed))
    means = [float(np.dot(s.votes, np.arange(1, N_BUCKETS + 1)) / sum(s.votes)) for s in scenes]
    return SyntheticInfo(
        root=root, params=params, geometry=geometry,
        ids=tuple(s.image_id for s in scenes),
        test_ids=tuple(s.image_id for s in scenes if s.index in test),
        share_above_threshold=float(np.mean(np.array(means) > SCORE_THRESHOLD)),
        mean_score_range=(min(means), max(means)),
        detail_share=float(np.mean([s.detail for s in scenes])),
        seconds=time.perf_counter() - t0)


# ------------------------------------------------------------- ground truth

@dataclass(frozen=True)
class CarrierTruth:
    """One row of ``synthetic_truth.csv``."""
    image_id: str
    width: int
    height: int
    box: tuple[int, int, int, int]      # carrier x0, y0, x1, y1, half-open, original pixels
    detail: bool
    coarse: float
    layout: float
    score_bit: int
    noise: float
    q: float
    target_mean: float
    category: str
    period: int


def read_truth(path: str | os.PathLike) -> dict[str, CarrierTruth]:
    """``synthetic_truth.csv`` (or the dataset folder holding it) as id -> CarrierTruth."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / TRUTH_FILE
    truth = {}
    with open(path, newline="", encoding="ascii") as f:
        reader = csv.DictReader(f)
        missing = set(TRUTH_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise SyntheticError(f"{path}: header lacks {', '.join(sorted(missing))}; expected "
                                 f"{','.join(TRUTH_COLUMNS)} (write it with make_ava_dataset)")
        for line, row in enumerate(reader, start=2):
            try:
                truth[row["id"]] = CarrierTruth(
                    row["id"], int(row["width"]), int(row["height"]),
                    tuple(int(row[k]) for k in ("x0", "y0", "x1", "y1")),
                    row["detail"] == "1", float(row["coarse"]), float(row["layout"]),
                    int(row["score_bit"]), float(row["noise"]), float(row["q"]),
                    float(row["target_mean"]), row["category"], int(row["period"]))
            except (TypeError, ValueError) as e:
                raise SyntheticError(f"{path}, line {line} (id {row.get('id')!r}): {e}; "
                                     "the file is damaged, regenerate it") from None
    return truth


def _as_truth(truth: Mapping[str, CarrierTruth] | str | os.PathLike) -> Mapping[str, CarrierTruth]:
    return truth if isinstance(truth, Mapping) else read_truth(truth)


def _truth_of(truth: Mapping[str, CarrierTruth], image_id) -> CarrierTruth:
    try:
        return truth[str(image_id)]
    except KeyError:
        raise UnknownImageIdError(f"image id {image_id!r} is not in the synthetic truth "
                                  f"({len(truth)} ids); boxes must come from the same dataset") from None


def carrier_cover(box: Sequence[float], carrier: Sequence[float]) -> float:
    """Share of the carrier's area inside ``box`` (both x0, y0, x1, y1)."""
    return _overlap(box, carrier) / ((carrier[2] - carrier[0]) * (carrier[3] - carrier[1]))


def _check_min_cover(min_cover: float) -> None:
    if not 0.0 < min_cover <= 1.0:
        raise SyntheticError(f"min_cover must be in (0, 1], got {min_cover!r}")


def hit_rate(boxes_by_id: Mapping[str, Sequence[float]],
             truth: Mapping[str, CarrierTruth] | str | os.PathLike, *,
             min_cover: float = 0.5, max_side: float | None = None) -> float:
    """Pointing-game hit rate: share of boxes that cover >= ``min_cover`` of the carrier.

    ``boxes_by_id``: image id -> crop box (x0, y0, x1, y1) in original pixels
    (the Parquet/JSON order). The carrier is the target whether or not its plaid
    is drawn (stage 1 cannot see the plaid); pass a subset of ids to restrict.
    ``truth``: ``read_truth`` output, or the truth file / dataset folder.
    ``max_side``: if given, a box whose longer side exceeds it is a miss (pass
    ``DetailGeometry.max_resolved_side``: the fovea could not resolve the plaid).
    """
    _check_min_cover(min_cover)
    if not boxes_by_id:
        raise SyntheticError("hit_rate needs at least one box")
    truth = _as_truth(truth)
    hits = 0
    for image_id, box in boxes_by_id.items():
        carrier = _truth_of(truth, image_id).box
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (x1 > x0 and y1 > y0):
            raise SyntheticError(f"image {image_id}: box {tuple(box)} is empty; expected "
                                 "x0 < x1 and y0 < y1 (x0, y0, x1, y1 order)")
        resolved = max_side is None or max(x1 - x0, y1 - y0) <= max_side
        hits += resolved and carrier_cover((x0, y0, x1, y1), carrier) >= min_cover
    return hits / len(boxes_by_id)


def random_box_hit_rate(box_sizes: Mapping[str, Sequence[float]],
                        truth: Mapping[str, CarrierTruth] | str | os.PathLike,
                        seed: int = 0, *, draws: int = 100, min_cover: float = 0.5,
                        max_side: float | None = None) -> float:
    """Hit rate of boxes of the given (width, height) per id placed uniformly at random.

    The chance baseline for ``hit_rate``: each size is rounded to whole pixels,
    clipped to the image and placed ``draws`` times at a uniform integer
    position inside the image; the hits are averaged over ids and draws.
    ``min_cover`` and ``max_side`` as in ``hit_rate``.
    """
    _check_min_cover(min_cover)
    if not box_sizes:
        raise SyntheticError("random_box_hit_rate needs at least one box size")
    if draws < 1:
        raise SyntheticError(f"draws must be >= 1, got {draws!r}")
    truth = _as_truth(truth)
    rng = np.random.default_rng(seed)
    rates = []
    for image_id, size in box_sizes.items():
        t = _truth_of(truth, image_id)
        w = int(min(max(round(float(size[0])), 1), t.width))
        h = int(min(max(round(float(size[1])), 1), t.height))
        if max_side is not None and max(w, h) > max_side:
            rates.append(0.0)
            continue
        x0 = rng.integers(0, t.width - w + 1, size=draws)
        y0 = rng.integers(0, t.height - h + 1, size=draws)
        cx0, cy0, cx1, cy1 = t.box
        ix = np.clip(np.minimum(x0 + w, cx1) - np.maximum(x0, cx0), 0, None)
        iy = np.clip(np.minimum(y0 + h, cy1) - np.maximum(y0, cy0), 0, None)
        rates.append(np.mean(ix * iy >= min_cover * (cx1 - cx0) * (cy1 - cy0)))
    return float(np.mean(rates))

"""Tiny AVA-format datasets written by tests (the real file formats, synthetic pixels)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = [(120, 90), (90, 120), (100, 100), (160, 60), (64, 96)]


def photo_like(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth gradients plus a bright blob and noise: something attention can latch onto."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xs / width, ys / height, 0.5 * np.ones_like(xs)], axis=-1) * 160
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    blob = np.exp(-(((ys - cy) / (0.1 * height)) ** 2 + ((xs - cx) / (0.1 * width)) ** 2))
    img = base + 90 * blob[..., None] + rng.normal(0, 8, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def ava_line(index: int, image_id: str, counts, tags=(0, 0), challenge: int = 1) -> str:
    return " ".join(str(v) for v in [index, image_id, *counts, *tags, challenge])


def make_ava(root: Path, n: int = 24, seed: int = 0, test_every: int = 4, start_id: int = 1000,
             categories: dict[str, list[str]] | None = None, sizes=SIZES) -> list[str]:
    """Write ``root/AVA.txt``, ``images/{id}.jpg`` and ``aesthetics_image_lists/generic_test.jpgl``
    (image ``i`` is ``sizes[i % len(sizes)]``, (width, height))."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "aesthetics_image_lists").mkdir(exist_ok=True)
    ids, lines = [], []
    for i in range(n):
        image_id = str(start_id + i)
        w, h = sizes[i % len(sizes)]
        Image.fromarray(photo_like(w, h, rng)).save(root / "images" / f"{image_id}.jpg", quality=90)
        counts = rng.integers(0, 25, 10)
        counts[rng.integers(0, 10)] += 5
        lines.append(ava_line(i + 1, image_id, counts, tags=(int(rng.integers(0, 3)), 0)))
        ids.append(image_id)
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    test_ids = ids[::test_every]
    (root / "aesthetics_image_lists" / "generic_test.jpgl").write_text("\n".join(test_ids) + "\n")
    for name, members in (categories or {}).items():
        (root / "aesthetics_image_lists" / f"{name}_test.jpgl").write_text("\n".join(members) + "\n")
    (root / "tags.txt").write_text("1 Abstract\n2 Animals\n")
    return ids


def jpeg_bytes(array: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", **save)
    return buf.getvalue()

"""Builders the shard tests share (no tests here)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def random_jpeg(rng: np.random.Generator, width: int, height: int, quality: int = 90, **save) -> bytes:
    """A JPEG of uniformly random pixels (``save``: extra PIL options, e.g. ``progressive=True``)."""
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=quality, **save)
    return out.getvalue()

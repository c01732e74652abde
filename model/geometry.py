"""View geometry shared by preprocessing, training and prediction.

The peripheral view keeps the photo's aspect ratio (paper, section IV-B: "the
longest dimension of the input image is kept to 224"). Its short side is rounded
to the backbone's stride so feature maps tile exactly, and clamped to the
backbone's minimum input so a 4000x50 panorama still runs.
"""
from __future__ import annotations

from ..errors import OptionError


def peripheral_size(width: int, height: int, view_size: int, stride: int = 1,
                    min_side: int = 1) -> tuple[int, int]:
    """(width, height) of the peripheral view of a ``width`` x ``height`` image.

    The longest side becomes ``view_size``; the other is ``view_size * short/long``
    rounded to the nearest multiple of ``stride`` and clamped to
    ``[max(min_side, stride), view_size]``.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if view_size <= 0:
        raise OptionError(f"view_size must be positive, got {view_size}", param="view_size")
    long_side, short_side = max(width, height), min(width, height)
    short = view_size * short_side / long_side
    stride = max(1, int(stride))
    short = int(round(short / stride)) * stride
    lower = min(view_size, max(int(min_side), stride))
    short = max(lower, min(view_size, short))
    return (view_size, short) if width >= height else (short, view_size)

"""View geometry shared by stage 1, preprocessing, stage 2, evaluation and prediction (docs/images.md).

Two steps, each defined once here:

1. **The stored peripheral view** is backbone-neutral (:class:`ViewGeometry`,
   :func:`peripheral_size`): it keeps the photo's aspect ratio (paper, section
   IV-B: "the longest dimension of the input image is kept to 224"), its short
   side rounded to a multiple of :data:`~gpf.vocabulary.VIEW_ROUND` (8) pixels.
   Shards of manifest format 1/2 rounded to the attention backbone's stride and
   clamped to its minimum input (:meth:`ViewGeometry.legacy`).
2. **Fitting a view to a network** (:func:`fit_views`, :func:`fit_to_backbone`):
   a network whose minimum input side exceeds a view's short side gets the view
   padded with the network's mean colour (``pad``, centred) or enlarged with the
   aspect kept (``enlarge``); views the network can take pass unchanged. The
   same function runs wherever a network meets a view: stage 1, the attention
   pass of ``gpf preprocess`` and ``gpf predict``, the stage-2 trainer,
   ``gpf evaluate`` and ``gpf predict``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import OptionError
from ..vocabulary import VIEW_FIT, VIEW_FITS, VIEW_ROUND


def peripheral_size(width: int, height: int, view_size: int, stride: int = 1,
                    min_side: int = 1) -> tuple[int, int]:
    """(width, height) of the peripheral view of a ``width`` x ``height`` image.

    The longest side becomes ``view_size``; the other is ``view_size * short/long``
    rounded to the nearest multiple of ``stride`` (the rounding unit) and clamped
    to ``[max(min_side, stride), view_size]``.
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


@dataclass(frozen=True)
class ViewGeometry:
    """How a photo becomes its stored peripheral view: longest side ``view_size``, short side rounded to a
    multiple of ``round_to`` and at least ``max(min_side, round_to)`` (never above ``view_size``)."""

    view_size: int
    round_to: int = VIEW_ROUND
    min_side: int = 1

    def __post_init__(self):
        for name in ("view_size", "round_to", "min_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"{name} must be a positive integer, got {value!r}", param=name)

    @classmethod
    def legacy(cls, view_size: int, stride: int, min_input: int) -> "ViewGeometry":
        """The rule of shards of manifest format 1/2: rounded to the attention backbone's ``stride`` and at
        least its ``min_input``."""
        return cls(int(view_size), int(stride), int(min_input))

    def size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the peripheral view of a ``width`` x ``height`` photo."""
        return peripheral_size(width, height, self.view_size, self.round_to, self.min_side)


# ----------------------------------------------------------------------------- fitting a view to a network

def check_fit_mode(mode: str) -> str:
    """``mode`` when it is one of :data:`~gpf.vocabulary.VIEW_FITS`, else an error listing them."""
    if mode not in VIEW_FITS:
        raise OptionError(f"view fit {mode!r} is not one of {', '.join(VIEW_FITS)}", param="view_fit")
    return mode


def fitted_size(width: int, height: int, min_side: int, mode: str = VIEW_FIT) -> tuple[int, int]:
    """(width, height) of a ``width`` x ``height`` view fitted to a network whose minimum input side is
    ``min_side``: unchanged when both sides reach it; ``pad``: each short side raised to ``min_side``;
    ``enlarge``: scaled so the short side is ``min_side``, the long side rounded to the nearest pixel."""
    check_fit_mode(mode)
    if min(width, height) >= min_side:
        return width, height
    if mode == "pad":
        return max(width, min_side), max(height, min_side)
    scale = min_side / min(width, height)
    if width <= height:
        return min_side, max(min_side, int(round(height * scale)))
    return max(min_side, int(round(width * scale))), min_side


def view_region(width: int, height: int, min_side: int, mode: str = VIEW_FIT) -> tuple[int, int, int, int]:
    """Where the view lies in its fitted image, ``(x0, y0, x1, y1)`` half-open: centred for ``pad``,
    the whole fitted image otherwise (an enlarged view is all view)."""
    fitted_w, fitted_h = fitted_size(width, height, min_side, mode)
    if mode != "pad":
        return 0, 0, fitted_w, fitted_h
    x0, y0 = (fitted_w - width) // 2, (fitted_h - height) // 2
    return x0, y0, x0 + width, y0 + height


def fill_colour(mean: Sequence[float]) -> tuple[int, int, int]:
    """The uint8 RGB colour that a network normalising with ``mean`` sees as (nearly) zero input."""
    return tuple(int(round(255 * float(m))) for m in mean)


def fit_views(images, min_side: int, mode: str = VIEW_FIT, fill: Sequence[int] = (0, 0, 0)):
    """uint8 views ``[B, 3, H, W]`` (or one ``[3, H, W]``) fitted to a network's minimum input side.

    Returns ``images`` itself when ``min(H, W) >= min_side``. ``pad``: a new
    tensor of :func:`fitted_size` filled with ``fill`` and the views pasted at
    :func:`view_region`; ``enlarge``: bicubic resampling to :func:`fitted_size`
    (computed in float32, rounded and clipped to uint8). Everything runs on the
    tensor's device in a fixed order, so the same views give the same bytes in
    every caller.
    """
    import torch
    import torch.nn.functional as F

    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() not in (3, 4):
        raise TypeError("fit_views takes uint8 views [B, 3, H, W] or [3, H, W], got "
                        + (f"{images.dtype} {list(images.shape)}" if isinstance(images, torch.Tensor)
                           else type(images).__name__))
    height, width = int(images.shape[-2]), int(images.shape[-1])
    if min(height, width) >= min_side:
        return images
    fitted_w, fitted_h = fitted_size(width, height, min_side, mode)
    batch = images if images.dim() == 4 else images.unsqueeze(0)
    if mode == "pad":
        x0, y0, x1, y1 = view_region(width, height, min_side, mode)
        out = torch.empty((batch.shape[0], 3, fitted_h, fitted_w), dtype=torch.uint8, device=batch.device)
        out[:] = torch.tensor(list(fill), dtype=torch.uint8, device=batch.device).view(1, 3, 1, 1)
        out[:, :, y0:y1, x0:x1] = batch
    else:
        resized = F.interpolate(batch.float(), size=(fitted_h, fitted_w), mode="bicubic", align_corners=False)
        out = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out if images.dim() == 4 else out[0]


def fit_to_backbone(images, spec, mode: str = VIEW_FIT):
    """:func:`fit_views` for the network described by ``spec`` (its ``min_input`` and normalisation ``mean``):
    the one function by which every network meets a view it may be too small for."""
    return fit_views(images, int(spec.min_input), mode, fill_colour(spec.mean))

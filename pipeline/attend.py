"""Attention crops: the stage-1 network, its EB maps and the optimal tau box of a view.

Shared by ``gpf preprocess`` (which stores the results in shards) and online
scoring (``gpf predict``, ``gpf attention``), so both compute a photo's box the
same way: the peripheral view fitted to the network (:func:`gpf.model.geometry.fit_to_backbone`;
unchanged unless its short side is below the network's minimum input) -> EB map
(paper Eq. 2-3) -> laid onto the pixels it covers (:func:`align_map`) and cut
back to the view -> ``best_box`` (Eq. 4) -> mapped to original pixels, rounding outward.

Alignment (docs/images.md): on a same-padded trunk (VGG, ResNet, the test
backbones) cell ``j`` of an EB layer of stride ``s`` covers pixels
``[j*s, (j+1)*s)``, so the map covers the view exactly when the view's sides are
multiples of ``s`` (views are rounded to 8, the stride of every built-in default
EB layer, or less) and otherwise the pixels it does cover (a deeper layer). A
valid-padded stem (AlexNet, Inception) has fewer cells than ``side / s``
(AlexNet: 27 cells of 8 px over 224 px, centred at ``8j + 7.5``): its map is
stretched over the whole view, which moves a cell centre by at most about half
a cell (4.4 px for AlexNet at 224), the rule shards have always used.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..errors import GPFError
from ..vocabulary import TAU, VIEW_FIT

if TYPE_CHECKING:
    from ..model.checkpoint import Checkpoint


class AttentionModelError(GPFError):
    """The attention model cannot be built or used as asked."""


class NetworkLost(Exception):
    """A network step could not run at all (the process or actor holding the network is gone; not the
    batch at fault): the unit of work is redone, never written with its images marked as failures."""


@dataclass
class AttentionModel:
    """A network in ``features`` + ``head`` form, ready for EB on one device."""

    model: Any
    eb_layer: str
    tau: float
    contrastive: bool
    digest: str
    stride: int
    min_side: int
    normalize: Callable              # uint8 [B,3,H,W] -> float input on the model's device
    device: Any
    split_spec: dict | None = None
    description: dict | None = None
    trained_scale: dict | None = None   # stage-1: the scores, threshold and score columns it learned high/low on
    spec: Any = None                    # the backbone's spec: minimum input and mean colour for fit_to_backbone
    fit: str = VIEW_FIT                 # how views below its minimum input are fitted (pad | enlarge)
    grid: "MapGrid | None" = None       # where the EB map's cells lie on the input (None: stretched over it)

    @classmethod
    def from_model(cls, model, *, device, tau: float = TAU, eb_layer: str | None = None,
                   contrastive: bool = False, digest: str | None = None,
                   split_spec: dict | None = None, description: dict | None = None,
                   trained_scale: dict | None = None, fit: str = VIEW_FIT) -> "AttentionModel":
        from ..model.attention import resolve_eb_layer
        from ..model.checkpoint import state_dict_digest
        from ..model.geometry import check_fit_mode

        spec = model.spec
        model = model.to(device).eval()
        layer = resolve_eb_layer(model, eb_layer)

        def normalize(x_uint8):
            return spec.normalize(x_uint8.to(device, non_blocking=True))

        return cls(model=model, eb_layer=layer, tau=float(tau), contrastive=bool(contrastive),
                   digest=digest or state_dict_digest(model.state_dict()), stride=spec.stride,
                   min_side=spec.min_input, normalize=normalize, device=device,
                   split_spec=split_spec, description=description, trained_scale=trained_scale,
                   spec=spec, fit=check_fit_mode(fit), grid=probe_map_grid(model, layer, spec.min_input, device))

    @classmethod
    def from_stage2_checkpoint(cls, ckpt: Checkpoint, device) -> "AttentionModel":
        """The attention model a stage-2 checkpoint embeds, with its tau, EB layer and contrast flag, fitting
        views as the shards it was trained on recorded (:func:`gpf.pipeline.compat.attention_fit`)."""
        from ..model.checkpoint import attention_model_from_checkpoint
        from .compat import attention_fit, trained_on

        block = ckpt.attention
        if block is None:
            raise AttentionModelError(
                "this checkpoint does not embed the attention model that made its crops, so its "
                "foveal crops cannot be reproduced; use a stage-2 checkpoint from `gpf train stage2`")
        model = attention_model_from_checkpoint(ckpt)
        return cls.from_model(model, device=device, tau=block.tau, eb_layer=block.eb_layer,
                              contrastive=block.contrastive, digest=block.stage1_digest,
                              description={"kind": "embedded", "digest": block.stage1_digest},
                              fit=attention_fit(trained_on(ckpt)))

    def fit_views(self, images):
        """uint8 views fitted to this network (:func:`gpf.model.geometry.fit_to_backbone`)."""
        from ..model.geometry import fit_to_backbone

        return fit_to_backbone(images, self.spec, self.fit)


@dataclass(frozen=True)
class MapGrid:
    """Where an EB layer's cells lie on a same-padded trunk: cell ``j`` covers pixels ``[j*stride, (j+1)*stride)``."""
    stride: int


def probe_map_grid(model, layer: str, min_side: int, device) -> MapGrid | None:
    """The grid of ``layer``'s cells, from its output heights for two input heights (a forward hook, no EB).

    Returns :class:`MapGrid` for a same-padded trunk (``cells * stride`` equals
    an input height that is a multiple of 256), None for a valid-padded stem, an
    irregular stride or a network that cannot run the probe: its map is
    stretched over the view (see the module doc).
    """
    import torch

    module = dict(model.named_modules())[layer]
    heights: list[int] = []
    handle = module.register_forward_hook(lambda _m, _i, out: heights.append(int(out.shape[-2])))
    side = 256 * -(-max(min_side, 1) // 256)
    width = 32 * -(-max(min_side, 32) // 32)
    try:
        with torch.no_grad():
            for height in (side, 2 * side):
                model(torch.zeros(1, 3, height, width, device=device))
    except (RuntimeError, ValueError):          # e.g. a head that takes one input size only
        return None
    finally:
        handle.remove()
    cells = heights[1] - heights[0]
    if len(heights) != 2 or cells <= 0 or side % cells:
        return None
    stride = side // cells
    return MapGrid(stride) if heights[0] * stride == side else None


def align_map(maps, size_hw: tuple[int, int], grid: MapGrid | None):
    """EB maps ``[B, h, w]`` laid onto the ``size_hw`` input they were computed on (float32, not clamped).

    With a :class:`MapGrid` the map is upsampled onto the ``h*s x w*s`` pixels
    its cells cover and placed at the top left (pixels past it get 0, a map
    larger than the input is cut); without one, and whenever the cells tile the
    input exactly, it is upsampled over the whole input (``upsample_map``).
    """
    import torch

    from ..model.attention import upsample_map

    height, width = size_hw
    if grid is None or (maps.shape[-2] * grid.stride, maps.shape[-1] * grid.stride) == (height, width):
        return upsample_map(maps, (height, width))
    span_h, span_w = maps.shape[-2] * grid.stride, maps.shape[-1] * grid.stride
    up = upsample_map(maps, (span_h, span_w))
    out = torch.zeros((*maps.shape[:-2], height, width), dtype=up.dtype, device=up.device)
    h, w = min(height, span_h), min(width, span_w)
    out[..., :h, :w] = up[..., :h, :w]
    return out


@dataclass
class Attended:
    """The attention result of one peripheral view."""

    attn: np.ndarray                 # float16 map at the EB layer's resolution
    box: tuple[int, int, int, int]   # x0, y0, x1, y1 in pixels of the upright original (half-open)
    view_box: tuple[int, int, int, int]  # y0, x0, y1, x1 on the peripheral view (best_box order)
    attn_fraction: float | None      # share of the (upsampled) attention inside the box; None if all zero
    zero: bool                       # the map was all zero: the box is the whole image


def attend_views(att: AttentionModel, views: Sequence, original_sizes: Sequence[tuple[int, int]]) -> list[Attended]:
    """EB maps and tau boxes of peripheral views (PIL images, un-encoded), grouped by shape (no padding).

    A view below the network's minimum input is fitted to it first
    (:meth:`AttentionModel.fit_views`); its map is cut back to the view, so the
    box always refers to the view (``attn`` keeps the cells that cover it).
    """
    import torch

    from ..model.attention import excitation_backprop
    from ..model.boxsearch import best_box, box_fraction, map_box_to_image
    from .images import to_uint8_tensor

    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, view in enumerate(views):
        groups[view.size].append(i)
    results: list[Attended | None] = [None] * len(views)
    for (pw, ph), members in sorted(groups.items()):
        fitted = att.fit_views(torch.stack([to_uint8_tensor(views[i]) for i in members]))
        maps = excitation_backprop(att.model, att.normalize(fitted), layer=att.eb_layer, contrastive=att.contrastive)
        maps = maps.detach().float()
        canvas = align_map(maps, tuple(fitted.shape[-2:]), att.grid).clamp_min(0)
        up = _cut_to_view(canvas, (pw, ph), att).cpu().numpy().astype(np.float32)
        # One map at a time (~0.2 ms for 224x224): numba's parallel batch version
        # starts an OpenMP pool that changes torch's thread count in this process.
        boxes = [best_box(m, att.tau) for m in up]
        small = _cells_of_view(maps, tuple(fitted.shape[-2:]), (pw, ph), att).cpu().numpy()
        for j, i in enumerate(members):
            view_box = tuple(int(v) for v in boxes[j])
            box = tuple(int(v) for v in map_box_to_image(view_box, (ph, pw), original_sizes[i]))
            zero = not bool(np.any(up[j] > 0))
            results[i] = Attended(attn=small[j].astype(np.float16), box=box, view_box=view_box,
                                  attn_fraction=None if zero else float(box_fraction(up[j], view_box)),
                                  zero=zero)
    return results  # type: ignore[return-value]


def _cut_to_view(canvas, view_wh: tuple[int, int], att: AttentionModel):
    """The part of a pixel-resolution map of the fitted input that shows the view, at the view's size."""
    import torch.nn.functional as F

    from ..model.geometry import view_region

    width, height = view_wh
    if tuple(canvas.shape[-2:]) == (height, width):
        return canvas
    if att.fit == "pad":
        x0, y0, x1, y1 = view_region(width, height, att.min_side, att.fit)
        return canvas[..., y0:y1, x0:x1]
    return F.interpolate(canvas.unsqueeze(1), size=(height, width), mode="area").squeeze(1)   # enlarged: shrink back


def _cells_of_view(maps, fitted_hw: tuple[int, int], view_wh: tuple[int, int], att: AttentionModel):
    """The EB-resolution map's cells that cover the view (all of them unless the view was padded)."""
    from ..model.geometry import view_region

    width, height = view_wh
    if fitted_hw == (height, width) or att.fit != "pad":
        return maps
    x0, y0, x1, y1 = view_region(width, height, att.min_side, att.fit)
    (fitted_h, fitted_w), (h, w) = fitted_hw, maps.shape[-2:]
    rows = slice(y0 * h // fitted_h, -(-y1 * h // fitted_h))
    cols = slice(x0 * w // fitted_w, -(-x1 * w // fitted_w))
    return maps[..., rows, cols]


def attend_and_describe(att: AttentionModel, views: Sequence, original_sizes: Sequence[tuple[int, int]],
                        feature_views: Sequence | None = None) -> tuple[list[Attended], list]:
    """The stage-1 network's whole step in ``gpf preprocess``: :func:`attend_views` of the un-encoded
    ``views`` and, when ``feature_views`` (the JPEG-decoded views) are given, their
    :func:`peripheral_features` (else a None per view). One call, so an engine that keeps the
    network elsewhere (a Ray actor) sends each batch once."""
    attended = attend_views(att, views, original_sizes)
    features = peripheral_features(att, feature_views) if feature_views is not None else [None] * len(attended)
    return attended, features


def peripheral_features(att: AttentionModel, views) -> list[np.ndarray]:
    """Pooled descriptors (float16 ``[C]``) of uint8 views ``[3, H, W]``, fitted to the network like every view
    it meets; ``gpf preprocess`` passes the JPEG-decoded peripheral views, what the trainer reads."""
    import torch

    from ..model.gpf import forward_bucketed

    if not views:
        return []

    def pooled(batch):
        return torch.from_numpy(pooled_features(att, att.normalize(att.fit_views(batch))))

    return list(forward_bucketed(pooled, list(views)).numpy())


def pooled_features(att: AttentionModel, x) -> np.ndarray:
    """The peripheral's globally average-pooled descriptor (what GIF consumes) of normalised input, float16."""
    import torch

    with torch.no_grad():
        feats = att.model.features(x).float().mean(dim=(2, 3))
    return feats.cpu().numpy().astype(np.float16)

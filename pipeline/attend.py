"""Attention crops: the stage-1 network, its EB maps and the optimal tau box of a view.

Shared by ``gpf preprocess`` (which stores the results in shards) and online
scoring (``gpf predict``, ``gpf attention``), so both compute a photo's box the
same way: EB map on the peripheral view (paper Eq. 2-3) -> upsampled to the
view -> ``best_box`` (Eq. 4) -> mapped to original pixels, rounding outward.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..errors import GPFError
from ..vocabulary import TAU

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

    @classmethod
    def from_model(cls, model, *, device, tau: float = TAU, eb_layer: str | None = None,
                   contrastive: bool = False, digest: str | None = None,
                   split_spec: dict | None = None, description: dict | None = None,
                   trained_scale: dict | None = None) -> "AttentionModel":
        from ..model.attention import resolve_eb_layer
        from ..model.checkpoint import state_dict_digest

        spec = model.spec
        model = model.to(device).eval()
        layer = resolve_eb_layer(model, eb_layer)

        def normalize(x_uint8):
            return spec.normalize(x_uint8.to(device, non_blocking=True))

        return cls(model=model, eb_layer=layer, tau=float(tau), contrastive=bool(contrastive),
                   digest=digest or state_dict_digest(model.state_dict()), stride=spec.stride,
                   min_side=spec.min_input, normalize=normalize, device=device,
                   split_spec=split_spec, description=description, trained_scale=trained_scale)

    @classmethod
    def from_stage2_checkpoint(cls, ckpt: Checkpoint, device) -> "AttentionModel":
        """The attention model a stage-2 checkpoint embeds, with its tau, EB layer and contrast flag."""
        from ..model.checkpoint import attention_model_from_checkpoint

        block = ckpt.attention
        if block is None:
            raise AttentionModelError(
                "this checkpoint does not embed the attention model that made its crops, so its "
                "foveal crops cannot be reproduced; use a stage-2 checkpoint from `gpf train stage2`")
        model = attention_model_from_checkpoint(ckpt)
        return cls.from_model(model, device=device, tau=block.tau, eb_layer=block.eb_layer,
                              contrastive=block.contrastive, digest=block.stage1_digest,
                              description={"kind": "embedded", "digest": block.stage1_digest})


@dataclass
class Attended:
    """The attention result of one peripheral view."""

    attn: np.ndarray                 # float16 map at the EB layer's resolution
    box: tuple[int, int, int, int]   # x0, y0, x1, y1 in pixels of the upright original (half-open)
    view_box: tuple[int, int, int, int]  # y0, x0, y1, x1 on the peripheral view (best_box order)
    attn_fraction: float | None      # share of the (upsampled) attention inside the box; None if all zero
    zero: bool                       # the map was all zero: the box is the whole image
    feature: np.ndarray | None = None  # pooled peripheral descriptor (float16), when asked


def attend_views(att: AttentionModel, views: Sequence, original_sizes: Sequence[tuple[int, int]],
                 *, with_features: bool = False) -> list[Attended]:
    """EB maps and tau boxes of peripheral views (PIL images), grouped by shape (no padding)."""
    import torch

    from ..model.attention import excitation_backprop, upsample_map
    from ..model.boxsearch import best_box, box_fraction, map_box_to_image
    from .images import to_uint8_tensor

    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, view in enumerate(views):
        groups[view.size].append(i)
    results: list[Attended | None] = [None] * len(views)
    for (pw, ph), members in sorted(groups.items()):
        x = att.normalize(torch.stack([to_uint8_tensor(views[i]) for i in members]))
        maps = excitation_backprop(att.model, x, layer=att.eb_layer, contrastive=att.contrastive)
        maps = maps.detach().float()
        up = upsample_map(maps, (ph, pw)).clamp_min(0).cpu().numpy().astype(np.float32)
        # One map at a time (~0.2 ms for 224x224): numba's parallel batch version
        # starts an OpenMP pool that changes torch's thread count in this process.
        boxes = [best_box(m, att.tau) for m in up]
        features = pooled_features(att, x) if with_features else None
        small = maps.cpu().numpy()
        for j, i in enumerate(members):
            view_box = tuple(int(v) for v in boxes[j])
            box = tuple(int(v) for v in map_box_to_image(view_box, (ph, pw), original_sizes[i]))
            zero = not bool(np.any(up[j] > 0))
            results[i] = Attended(attn=small[j].astype(np.float16), box=box, view_box=view_box,
                                  attn_fraction=None if zero else float(box_fraction(up[j], view_box)),
                                  zero=zero,
                                  feature=None if features is None else features[j])
    return results  # type: ignore[return-value]


def pooled_features(att: AttentionModel, x) -> np.ndarray:
    """The peripheral's globally average-pooled descriptor (what GIF consumes), float16."""
    import torch

    with torch.no_grad():
        feats = att.model.features(x).float().mean(dim=(2, 3))
    return feats.cpu().numpy().astype(np.float16)

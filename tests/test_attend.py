"""Attention crops of peripheral views (gpf.pipeline.attend) on the tiny backbone.

The references: each view attended alone (for batches of mixed shapes), the
pooled descriptor computed by hand from ``model.features`` (tests/helpers/training.py),
the box's share of the upsampled map recomputed with numpy, and the original
image's pixel bounds.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.ava import photo_like
from helpers.evaluation import make_stage2, save_stage1
from helpers.training import pooled_features as reference_features
from gpf.model.attention import EBLayerError, upsample_map
from gpf.model.gpf import PeripheralNet
from gpf.pipeline.attend import (AttentionModel, AttentionModelError, MapGrid, align_map, attend_views,
                                 peripheral_features, pooled_features, probe_map_grid)

torch.set_num_threads(1)
CPU = torch.device("cpu")
#: (view width, height) -> the original (width, height) it was resized from
VIEWS = [((40, 32), (400, 320)), ((32, 40), (64, 80)), ((40, 32), (101, 81)), ((24, 24), (24, 24)),
         ((32, 40), (333, 417))]


@pytest.fixture(scope="module")
def att():
    torch.manual_seed(0)
    return AttentionModel.from_model(PeripheralNet("tiny"), device=CPU, tau=0.7, eb_layer="pool2")


def views(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(photo_like(w, h, rng)) for (w, h), _ in VIEWS]


SIZES = [size for _, size in VIEWS]


# ----------------------------------------------------------------------------- the model

def test_short_eb_layer_name_resolves_under_features(att):
    assert att.eb_layer == "features.pool2"
    assert (att.tau, att.contrastive, att.stride, att.min_side) == (0.7, False, 8, 8)
    assert not att.model.training
    x = att.normalize(torch.full((1, 3, 8, 8), 255, dtype=torch.uint8))
    assert torch.allclose(x, att.model.normalize(torch.full((1, 3, 8, 8), 255, dtype=torch.uint8)))


def test_unknown_eb_layer_is_refused_listing_close_matches_and_every_layer():
    with pytest.raises(EBLayerError) as info:
        AttentionModel.from_model(PeripheralNet("tiny"), device=CPU, eb_layer="features.pool9")
    message = str(info.value)
    close = message.split("close matches: ", 1)[1].split(";", 1)[0].split(", ")
    assert {"features.pool1", "features.pool2", "features.pool3"} <= set(close)
    assert "valid layers: features.conv1" in message and "features.relu3" in message


def test_digest_is_that_of_the_weights_unless_given(att):
    from gpf.model.checkpoint import state_dict_digest

    assert att.digest == state_dict_digest(att.model.state_dict())
    other = AttentionModel.from_model(PeripheralNet("tiny"), device=CPU, digest="abc", split_spec={"seed": 1})
    assert other.digest == "abc" and other.split_spec == {"seed": 1}


def test_stage2_checkpoint_brings_its_embedded_model_and_settings(tmp_path):
    from gpf.model.checkpoint import load_checkpoint

    stage1 = save_stage1(tmp_path / "stage1.pt")
    path = make_stage2(tmp_path / "stage2.pt", stage1, eb_layer="features.pool3", tau=0.5)
    ckpt = load_checkpoint(path)
    att = AttentionModel.from_stage2_checkpoint(ckpt, CPU)
    assert (att.tau, att.eb_layer, att.contrastive) == (0.5, "features.pool3", False)
    assert att.digest == ckpt.attention.stage1_digest == load_checkpoint(stage1).digest
    assert att.description == {"kind": "embedded", "digest": att.digest}
    with pytest.raises(AttentionModelError, match="does not embed the attention model"):
        AttentionModel.from_stage2_checkpoint(load_checkpoint(stage1), CPU)


# ----------------------------------------------------------------------------- attend_views

def test_boxes_lie_inside_the_original_image_and_hold_tau_of_the_attention(att):
    results = attend_views(att, views(), SIZES)
    assert len(results) == len(VIEWS)
    for result, ((pw, ph), (width, height)) in zip(results, VIEWS):
        x0, y0, x1, y1 = result.box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (result.box, width, height)
        vy0, vx0, vy1, vx1 = result.view_box
        assert 0 <= vy0 < vy1 <= ph and 0 <= vx0 < vx1 <= pw
        assert result.attn.dtype == np.float16 and result.attn.shape == (ph // 4, pw // 4)   # after pool1, pool2
        assert not result.zero
        up = np.clip(upsample_map(result.attn.astype(np.float32), (ph, pw)), 0, None)
        share = up[vy0:vy1, vx0:vx1].sum() / up.sum()
        assert share >= 0.7 - 1e-3 and result.attn_fraction == pytest.approx(share, abs=1e-3)
        # the view box, scaled to the original, lies inside the pixel box (rounded outward)
        assert x0 <= vx0 * width / pw + 1e-9 and vx1 * width / pw <= x1 + 1e-9
        assert y0 <= vy0 * height / ph + 1e-9 and vy1 * height / ph <= y1 + 1e-9


def test_a_batch_of_mixed_shapes_equals_each_view_alone(att):
    from gpf.pipeline.images import to_uint8_tensor

    batch = attend_views(att, views(), SIZES)
    features = peripheral_features(att, [to_uint8_tensor(v) for v in views()])
    for view, size, together, feature in zip(views(), SIZES, batch, features):
        alone = attend_views(att, [view], [size])[0]
        assert together.box == alone.box and together.view_box == alone.view_box
        np.testing.assert_allclose(together.attn.astype(np.float32), alone.attn.astype(np.float32),
                                   rtol=1e-2, atol=1e-3)
        (single,) = peripheral_features(att, [to_uint8_tensor(view)])
        np.testing.assert_allclose(feature.astype(np.float32), single.astype(np.float32), rtol=1e-2, atol=1e-3)


def test_pooled_features_are_the_mean_of_the_feature_map(att):
    from gpf.pipeline.images import to_uint8_tensor

    features = peripheral_features(att, [to_uint8_tensor(v) for v in views(1)])
    for view, feature in zip(views(1), features):
        expected = reference_features(att.model, to_uint8_tensor(view)[None])[0]
        assert feature.dtype == np.float16 and feature.shape == (att.model.spec.channels,)
        np.testing.assert_allclose(feature.astype(np.float32), expected.astype(np.float32), rtol=1e-2, atol=1e-3)
    x = att.normalize(torch.stack([to_uint8_tensor(v) for v in views(1)[:1]]))
    direct = pooled_features(att, x)
    np.testing.assert_array_equal(direct[0], features[0])


def test_no_views_gives_no_results(att):
    assert attend_views(att, [], []) == []


# ----------------------------------------------------------------------------- the map on the view

@pytest.mark.parametrize("name, layer, stride", [
    ("tiny", "features.pool2", 4), ("tiny", "features.pool3", 8), ("small", "features.layer2", 8),
    ("vgg16", "features.pool3", 8), ("vgg16", "features.pool5", 32), ("resnet18", "features.layer2", 8),
    ("alexnet", "features.relu2", None), ("tiny_inception", "features.Mixed_5b", None),
])
def test_the_map_grid_is_the_layers_stride_on_same_padded_trunks_only(name, layer, stride):
    """Hand-counted strides of the layers (2x2 pools, stride-2 convs); valid-padded stems (AlexNet's
    11x11/4 conv, Inception's unpadded stem) have fewer cells than side / stride: no grid."""
    from gpf.model.backbones import create_backbone

    backbone = create_backbone(name).eval()
    grid = probe_map_grid(backbone, layer, backbone.min_input, CPU)
    assert grid == (MapGrid(stride) if stride else None)


def test_a_map_lies_on_the_pixels_its_cells_cover():
    """One hot cell (row 1, column 2) of a stride-8 grid peaks inside pixels [8, 16) x [16, 24), the cell's
    block by definition, on an input whose sides are not multiples of 8 (the uncovered rim gets 0)."""
    maps = torch.zeros(1, 4, 5)
    maps[0, 1, 2] = 1.0
    aligned = align_map(maps, (36, 44), MapGrid(8))
    assert tuple(aligned.shape) == (1, 36, 44)
    row, col = divmod(int(aligned[0].argmax()), 44)
    assert 8 <= row < 16 and 16 <= col < 24
    assert float(aligned[0, 32:].abs().max()) == 0.0 and float(aligned[0, :, 40:].abs().max()) == 0.0
    stretched = align_map(maps, (36, 44), None)             # no grid: stretched over the whole input
    row, col = divmod(int(stretched[0].argmax()), 44)
    assert 9 <= row < 18 and 17 <= col < 27
    exact = align_map(maps, (32, 40), MapGrid(8))           # cells tile the input: the plain upsampling
    assert torch.equal(exact, upsample_map(maps, (32, 40)))


@pytest.mark.parametrize("mode", ["pad", "enlarge"])
def test_a_view_below_the_networks_minimum_is_fitted_and_its_box_refers_to_the_view(mode):
    """tiny_inception takes 15 px at least: a 40x8 view is padded (or enlarged) for EB; the box is the
    one found on the padded canvas's map cut back to the view, computed here by hand."""
    from gpf.model.attention import excitation_backprop
    from gpf.model.boxsearch import best_box
    from gpf.pipeline.images import to_uint8_tensor

    torch.manual_seed(0)
    att = AttentionModel.from_model(PeripheralNet("tiny_inception"), device=CPU, tau=0.7, fit=mode)
    assert att.grid is None and att.min_side == 15
    rng = np.random.default_rng(3)
    view, size = Image.fromarray(photo_like(40, 8, rng)), (1000, 200)
    (result,) = attend_views(att, [view], [size])
    x0, y0, x1, y1 = result.box
    assert 0 <= x0 < x1 <= 1000 and 0 <= y0 < y1 <= 200
    vy0, vx0, vy1, vx1 = result.view_box
    assert 0 <= vy0 < vy1 <= 8 and 0 <= vx0 < vx1 <= 40
    assert result.zero or result.attn_fraction >= 0.7 - 1e-3
    if mode == "pad":
        canvas = torch.full((1, 3, 15, 40), 128, dtype=torch.uint8)    # Inception's mean colour, view centred
        canvas[0, :, 3:11] = to_uint8_tensor(view)
        maps = excitation_backprop(att.model, att.normalize(canvas), layer=att.eb_layer)
        up = upsample_map(maps.detach().float(), (15, 40)).clamp_min(0)[0, 3:11].numpy()
        assert tuple(int(v) for v in best_box(up, 0.7)) == result.view_box
        assert result.attn.shape[0] <= maps.shape[1] and result.attn.shape[1] == maps.shape[2]

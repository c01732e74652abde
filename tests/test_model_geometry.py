"""View geometry (gpf.model.geometry): the stored view's rounding rule and fitting a view to a network.

References: the nearest multiple of 8 found by scanning every multiple (brute
force), hand-computed sizes (the issue's 3:2 photo), the registered backbones'
real modules (a fitted view must give a non-empty feature map), and pixel
values that padding and enlarging must keep.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gpf.errors import OptionError
from gpf.model.backbones import create_backbone, get_spec, list_backbones
from gpf.model.geometry import (ViewGeometry, fill_colour, fit_to_backbone, fit_views, fitted_size, peripheral_size,
                                view_region)
from gpf.vocabulary import VIEW_FITS, VIEW_ROUND

#: Photos of every kind the issue names: 3:2, 5:1 panorama, 1:4 portrait, 10x10, a 4000x50 strip.
PHOTOS = [(3000, 2000), (1000, 200), (200, 800), (10, 10), (4000, 50), (1000, 300), (333, 1000), (640, 480)]


# ----------------------------------------------------------------------------- the stored view

def test_the_short_side_is_the_nearest_multiple_of_8_by_brute_force():
    view = 224
    worst = 0.0
    for long_side in (225, 300, 640, 1000):
        for short_side in range(1, long_side + 1):
            width, height = peripheral_size(long_side, short_side, view, VIEW_ROUND)
            exact = view * short_side / long_side
            candidates = [m for m in range(VIEW_ROUND, view + 1, VIEW_ROUND)]
            nearest = min(candidates, key=lambda m: (abs(m - exact), m))
            assert width == view and height % VIEW_ROUND == 0
            assert abs(height - exact) <= abs(nearest - exact) + 1e-9, (long_side, short_side, height, nearest)
            if exact >= VIEW_ROUND:                     # not clamped: within half a step of the exact side
                assert abs(height - exact) <= VIEW_ROUND / 2 + 1e-9
                worst = max(worst, abs(height - exact))
    assert worst == pytest.approx(VIEW_ROUND / 2, abs=0.01)


def test_a_3_to_2_photo_keeps_its_aspect_within_2_percent_where_stride_32_lost_6_6():
    width, height = ViewGeometry(224).size(3000, 2000)
    assert (width, height) == (224, 152)                  # 149.3 -> 152
    assert width / height / 1.5 - 1 == pytest.approx(-0.0175, abs=1e-3)
    assert peripheral_size(3000, 2000, 224, 32) == (224, 160)
    assert 224 / 160 / 1.5 - 1 == pytest.approx(-0.0667, abs=1e-3)     # the old rule, as the issue measured


def test_the_view_is_backbone_neutral_and_legacy_reproduces_the_old_rule():
    geometry = ViewGeometry(224)
    assert geometry.size(4000, 50) == (224, 8) and geometry.size(10, 10) == (224, 224)
    assert geometry.size(1000, 200) == (224, 48) and geometry.size(200, 800) == (56, 224)
    for name in list_backbones():
        spec = get_spec(name)
        legacy = ViewGeometry.legacy(224, spec.stride, spec.min_input)
        for width, height in PHOTOS:
            assert legacy.size(width, height) == peripheral_size(width, height, 224, spec.stride, spec.min_input)
    with pytest.raises(OptionError, match="round_to must be a positive integer"):
        ViewGeometry(224, 0)


# ----------------------------------------------------------------------------- fitting a view to a network

@pytest.mark.parametrize("mode", VIEW_FITS)
def test_every_registered_backbone_takes_every_fitted_view(mode):
    """The fitted size reaches the backbone's minimum input, keeps views it can already take, pads
    around the whole view or enlarges it with its aspect, and the real modules give a feature map."""
    geometry = ViewGeometry(64)
    for name in list_backbones():
        spec = get_spec(name)
        smallest = None
        for width, height in PHOTOS:
            view_w, view_h = geometry.size(width, height)
            fit_w, fit_h = fitted_size(view_w, view_h, spec.min_input, mode)
            assert min(fit_w, fit_h) >= spec.min_input, (name, mode, view_w, view_h)
            if min(view_w, view_h) >= spec.min_input:
                assert (fit_w, fit_h) == (view_w, view_h)
            elif mode == "pad":
                x0, y0, x1, y1 = view_region(view_w, view_h, spec.min_input, mode)
                assert (x1 - x0, y1 - y0) == (view_w, view_h) and 0 <= x0 and x1 <= fit_w and y1 <= fit_h
                assert abs((fit_w - view_w) - 2 * x0) <= 1 and abs((fit_h - view_h) - 2 * y0) <= 1   # centred
            else:
                assert min(fit_w, fit_h) == spec.min_input
                assert abs(fit_w / fit_h - view_w / view_h) <= (view_w / view_h) / spec.min_input + 1e-9
            if smallest is None or fit_w * fit_h < smallest[0] * smallest[1]:
                smallest = (fit_w, fit_h)
        with torch.device("meta"):                      # shapes only: no weights initialised, nothing computed
            out = create_backbone(name).eval()(torch.zeros(1, 3, smallest[1], smallest[0]))
        assert out.shape[-1] >= 1 and out.shape[-2] >= 1, name


def test_pad_keeps_the_view_and_fills_with_the_mean_colour():
    rng = np.random.default_rng(0)
    views = torch.from_numpy(rng.integers(0, 256, (2, 3, 8, 40), dtype=np.uint8))
    spec = get_spec("tiny_inception")                    # minimum input 15
    fill = fill_colour(spec.mean)
    assert fill == (128, 128, 128)                       # Inception normalises with mean 0.5
    out = fit_to_backbone(views, spec, "pad")
    assert out.dtype == torch.uint8 and tuple(out.shape) == (2, 3, 15, 40)
    x0, y0, x1, y1 = view_region(40, 8, 15, "pad")
    assert (x0, y0, x1, y1) == (0, 3, 40, 11)
    assert torch.equal(out[:, :, y0:y1, x0:x1], views)
    outside = torch.ones(15, dtype=torch.bool)
    outside[y0:y1] = False
    assert torch.equal(out[:, :, outside, :], torch.full((2, 3, 7, 40), 128, dtype=torch.uint8))
    normalised = spec.normalize(out[:, :, outside, :])
    assert normalised.abs().max() < 0.01                 # the padding is what the network sees as zero
    one = fit_to_backbone(views[0], spec, "pad")         # one view [3, H, W] is fitted alike
    assert torch.equal(one, out[0])


def test_enlarge_keeps_the_aspect_and_a_constant_view_constant():
    flat = torch.full((1, 3, 8, 40), 77, dtype=torch.uint8)
    out = fit_views(flat, 32, "enlarge")
    assert tuple(out.shape) == (1, 3, 32, 160) and torch.equal(out, torch.full_like(out, 77))
    ramp = torch.arange(40, dtype=torch.uint8).mul(6).view(1, 1, 1, 40).expand(1, 3, 8, 40).contiguous()
    grown = fit_views(ramp, 16, "enlarge")[0, 0, 8]
    assert tuple(grown.shape) == (80,) and bool((grown[1:].int() - grown[:-1].int() >= 0).all())   # still a ramp
    assert int(grown[0]) <= 2 and int(grown[-1]) >= 6 * 39 - 2


def test_views_a_network_can_take_pass_unchanged_and_bad_input_is_refused():
    views = torch.zeros(2, 3, 32, 48, dtype=torch.uint8)
    for mode in VIEW_FITS:
        assert fit_views(views, 32, mode) is views
    assert fitted_size(48, 32, 32) == (48, 32)
    with pytest.raises(OptionError, match="view fit 'stretch' is not one of pad, enlarge"):
        fitted_size(8, 8, 16, "stretch")
    with pytest.raises(TypeError, match="uint8 views"):
        fit_views(views.float(), 64)

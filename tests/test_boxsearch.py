"""Exact Eq. 4 crop search against a plain brute force and properties that must hold."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gpf.model.boxsearch import best_box, best_boxes, box_fraction, map_box_to_image

SLACK = 1e-9  # documented relative slack on tau * total


def brute_force(att, tau):
    """All optimal boxes (smallest area, then largest sum), sorted lexicographically.

    Enumerates every rectangle of the map with an independent summed-area
    table; a box qualifies when ``sum >= (tau - SLACK) * total`` of the
    negatives-clamped map. An all-zero map gives the whole map.
    """
    m = np.maximum(np.asarray(att, dtype=np.float64), 0.0)
    h, w = m.shape
    table = np.zeros((h + 1, w + 1))
    table[1:, 1:] = m.cumsum(axis=0).cumsum(axis=1)
    total = table[h, w]
    if total <= 0:
        return [(0, 0, h, w)]
    y0, y1 = (a[:, None] for a in np.triu_indices(h + 1, 1))
    x0, x1 = (a[None, :] for a in np.triu_indices(w + 1, 1))
    sums = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    areas = (y1 - y0) * (x1 - x0)
    ok = sums >= (tau - SLACK) * total
    best_area = areas[ok].min()
    ok &= areas == best_area
    ok &= sums == sums[ok].max()
    rows, cols = np.nonzero(ok)
    boxes = [(int(y0[r, 0]), int(x0[0, c]), int(y1[r, 0]), int(x1[0, c])) for r, c in zip(rows, cols)]
    return sorted(boxes)


def area(box):
    y0, x0, y1, x1 = box
    return (y1 - y0) * (x1 - x0)


def box_sum(att, box):
    y0, x0, y1, x1 = box
    return float(np.maximum(np.asarray(att, dtype=np.float64), 0)[y0:y1, x0:x1].sum())


def random_integer_map(rng, max_side=12):
    """Non-square, sparse to dense maps of small integers (exact sums, real ties)."""
    h, w = (int(v) for v in rng.integers(1, max_side + 1, size=2))
    density = rng.choice([0.05, 0.2, 0.5, 1.0])
    values = rng.integers(0, rng.choice([2, 4, 10, 1000]), size=(h, w))
    return (values * (rng.random((h, w)) < density)).astype(np.float64)


# ----------------------------------------------------------------- brute-force agreement

integer_maps = st.tuples(st.integers(1, 9), st.integers(1, 9)).flatmap(
    lambda hw: arrays(np.float64, hw, elements=st.integers(0, 6).map(float)))
taus = st.one_of(st.sampled_from([0.7, 1.0, 0.5, 0.3, 0.9, 0.01]),
                 st.integers(1, 1000).map(lambda k: k / 1000))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(att=integer_maps, tau=taus)
def test_matches_brute_force_hypothesis(att, tau):
    assert best_box(att, tau) == brute_force(att, tau)[0]


def test_matches_brute_force_on_thousands_of_random_maps():
    rng = np.random.default_rng(12345)
    for _ in range(3000):
        att = random_integer_map(rng)
        tau = float(rng.choice([0.7, 0.7, 0.5, 0.9, 1.0, 0.2]))
        expected = brute_force(att, tau)[0]
        got = best_box(att, tau)
        assert got == expected, (att.tolist(), tau, got, expected)


def test_matches_brute_force_on_real_valued_maps_in_area_and_sum():
    """Real values: area must match exactly; sum to rounding (the box may differ on near-ties)."""
    rng = np.random.default_rng(7)
    for _ in range(500):
        h, w = rng.integers(1, 11, size=2)
        att = (rng.random((h, w)) ** 3 - 0.1).astype(np.float32)  # some negatives, clamped to 0
        expected = brute_force(att, 0.7)[0]
        got = best_box(att, 0.7)
        assert area(got) == area(expected)
        assert box_sum(att, got) == pytest.approx(box_sum(att, expected), rel=1e-9)


# ----------------------------------------------------------------- properties


def test_tau_one_gives_bounding_box_of_support():
    rng = np.random.default_rng(1)
    for _ in range(300):
        att = random_integer_map(rng)
        if not att.any():
            att[rng.integers(att.shape[0]), rng.integers(att.shape[1])] = 1.0
        ys, xs = np.nonzero(att)
        assert best_box(att, 1.0) == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)


def test_tiny_tau_gives_first_argmax_cell():
    rng = np.random.default_rng(2)
    for _ in range(300):
        att = random_integer_map(rng)
        if not att.any():
            continue
        y, x = np.unravel_index(np.argmax(att), att.shape)  # first maximum in row-major order
        assert best_box(att, 1e-6) == (y, x, y + 1, x + 1)


def test_area_is_monotone_in_tau():
    rng = np.random.default_rng(3)
    tau_grid = np.linspace(0.05, 1.0, 20)
    for _ in range(100):
        att = rng.random(tuple(rng.integers(2, 15, size=2)))
        areas = [area(best_box(att, t)) for t in tau_grid]
        assert areas == sorted(areas)


def test_box_holds_tau_of_the_attention():
    rng = np.random.default_rng(4)
    for _ in range(200):
        att = rng.random(tuple(rng.integers(1, 30, size=2))) ** 4
        tau = float(rng.uniform(0.05, 1.0))
        assert box_fraction(att, best_box(att, tau)) >= tau - 1e-9


def test_transposing_the_map_transposes_the_box():
    rng = np.random.default_rng(5)
    for _ in range(1000):
        att = random_integer_map(rng)
        box = best_box(att, 0.7)
        t_box = best_box(att.T, 0.7)
        assert area(t_box) == area(box)
        assert box_sum(att.T, t_box) == box_sum(att, box)
        if len(brute_force(att, 0.7)) == 1:  # unique optimum: same rectangle
            assert t_box == (box[1], box[0], box[3], box[2])


def test_ties_resolve_to_the_lexicographically_smallest_box():
    att = np.zeros((5, 5))
    att[1, 3] = att[3, 1] = 1.0  # two single cells, same sum
    assert best_box(att, 0.5) == (1, 3, 2, 4)
    assert best_box(att.T, 0.5) == (1, 3, 2, 4)
    tall = np.zeros((7, 3))  # rows > columns: searched transposed internally
    tall[5, 0] = tall[2, 2] = 1.0
    assert best_box(tall, 0.5) == (2, 2, 3, 3)


def test_box_holding_exactly_tau_qualifies_despite_rounding():
    # 0.55 * 100 is 55.00000000000001 in binary floating point
    assert 0.55 * 100 > 55
    assert best_box(np.array([[55.0, 0.0, 45.0]]), 0.55) == (0, 0, 1, 1)
    # ...but the slack is relative 1e-9, not a licence to keep less
    assert best_box(np.array([[5499.0, 1.0, 4500.0]]), 0.55) == (0, 0, 1, 2)


def test_finds_box_around_a_planted_hot_spot():
    rng = np.random.default_rng(6)
    for _ in range(20):
        h, w = rng.integers(20, 60, size=2)
        cy, cx = rng.uniform(5, h - 5), rng.uniform(5, w - 5)
        sigma = rng.uniform(1.0, 3.0)
        yy, xx = np.mgrid[0:h, 0:w]
        att = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
        att = (att + 1e-4 * rng.random((h, w))).astype(np.float32)
        y0, x0, y1, x1 = best_box(att, 0.7)
        assert y0 <= cy < y1 and x0 <= cx < x1
        # 70 % of an isotropic Gaussian lies within ~1.55 sigma of its centre
        assert y1 - y0 <= 2 * 1.6 * sigma + 2 and x1 - x0 <= 2 * 1.6 * sigma + 2


def test_negative_values_count_as_zero():
    rng = np.random.default_rng(8)
    for _ in range(200):
        att = rng.normal(size=tuple(rng.integers(1, 10, size=2)))
        assert best_box(att, 0.7) == best_box(np.maximum(att, 0), 0.7)


@pytest.mark.parametrize("att", [np.zeros((4, 6)), -np.ones((3, 2)), np.zeros((1, 1))])
def test_map_without_positive_attention_returns_whole_map(att):
    assert best_box(att, 0.7) == (0, 0, *att.shape)


def test_accepts_float16_int_bool_and_views():
    rng = np.random.default_rng(9)
    att = rng.integers(0, 5, size=(6, 9))
    expected = best_box(att.astype(np.float64), 0.7)
    for variant in (att, att.astype(np.float32), att.astype(np.float16), att.astype(np.uint8)):
        assert best_box(variant, 0.7) == expected
    big = np.zeros((12, 18))
    big[::2, ::2] = att
    assert best_box(big[::2, ::2], 0.7) == expected  # strided view
    assert best_box(att > 2, 1.0) == brute_force((att > 2).astype(float), 1.0)[0]


def test_single_row_and_column_maps():
    assert best_box(np.array([[0.0, 3, 0, 4, 0]]), 0.7) == (0, 1, 1, 4)
    assert best_box(np.array([[0.0], [3], [0], [4], [0]]), 0.7) == (1, 0, 4, 1)
    assert best_box(np.array([[5.0]]), 0.7) == (0, 0, 1, 1)


# ----------------------------------------------------------------- batch


def test_batch_equals_single():
    rng = np.random.default_rng(10)
    maps = rng.random((17, 9, 13)) ** 3
    maps[3] = 0.0
    maps[5, 2, 2] = 50.0
    out = best_boxes(maps, 0.6)
    assert out.dtype == np.int64 and out.shape == (17, 4)
    assert [tuple(row) for row in out] == [best_box(m, 0.6) for m in maps]
    tall = rng.random((4, 11, 5)).astype(np.float32)
    assert [tuple(r) for r in best_boxes(tall)] == [best_box(m) for m in tall]
    assert best_boxes(np.zeros((0, 5, 5))).shape == (0, 4)


def test_batch_error_names_the_map():
    maps = np.ones((3, 4, 4))
    maps[2, 1, 3] = np.nan
    with pytest.raises(ValueError, match=r"map 2 of 3.*\(2, 1, 3\)"):
        best_boxes(maps)


# ----------------------------------------------------------------- validation


@pytest.mark.parametrize("att, match", [
    (np.ones(5), "2-D"),
    (np.ones((2, 3, 4)), "2-D"),
    (np.ones((0, 4)), "empty"),
    (np.ones((3, 3), dtype=complex), "real numbers"),
])
def test_rejects_bad_maps(att, match):
    with pytest.raises(ValueError, match=match):
        best_box(att)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rejects_non_finite_values_naming_the_index(bad):
    att = np.ones((4, 5), dtype=np.float32)
    att[3, 1] = bad
    with pytest.raises(ValueError, match=r"non-finite.*\(3, 1\)"):
        best_box(att)


@pytest.mark.parametrize("tau", [0, -0.1, 1.0001, float("nan"), True, "0.7", None])
def test_rejects_bad_tau(tau):
    with pytest.raises(ValueError, match=r"tau must be a number in \(0, 1\]"):
        best_box(np.ones((3, 3)), tau)


def test_import_does_not_compile():
    code = ("import gpf.model.boxsearch as c; "
            "print(sum(len(f.signatures) for f in (c._box_kernel, c._boxes_kernel, c._search, "
            "c._summed_area)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


# ----------------------------------------------------------------- box_fraction / map_box_to_image


def test_box_fraction_matches_direct_sums():
    rng = np.random.default_rng(11)
    att = rng.normal(size=(7, 9))
    box = (1, 2, 5, 8)
    clamped = np.maximum(att, 0)
    assert box_fraction(att, box) == pytest.approx(clamped[1:5, 2:8].sum() / clamped.sum(), rel=1e-12)
    assert box_fraction(att, (0, 0, 7, 9)) == pytest.approx(1.0)
    assert np.isnan(box_fraction(np.zeros((3, 3)), (0, 0, 1, 1)))


@pytest.mark.parametrize("box", [(0, 0, 0, 1), (2, 0, 1, 1), (0, 0, 4, 1), (-1, 0, 1, 1), (0, 0, 1)])
def test_box_fraction_rejects_bad_boxes(box):
    with pytest.raises(ValueError, match="box"):
        box_fraction(np.ones((3, 3)), box)


def test_map_box_to_image_hand_computed():
    # 14x14 map on a 640 (wide) x 480 (high) image: cells are 45.7 x 34.3 pixels
    assert map_box_to_image((2, 3, 9, 10), (14, 14), (640, 480)) == (137, 68, 458, 309)
    assert map_box_to_image((0, 0, 14, 14), (14, 14), (640, 480)) == (0, 0, 640, 480)
    assert map_box_to_image((1, 2, 3, 4), (5, 5), (5, 5)) == (2, 1, 4, 3)  # same size: identity
    assert map_box_to_image((0, 0, 1, 1), (3, 3), (2, 2)) == (0, 0, 1, 1)  # map finer than image


def area_upsample(att, height, width):
    """Exact area-weighted resampling: pixel value = attention mass over its footprint."""
    h, w = att.shape

    def overlap(n_map, n_img):
        edges_map = np.arange(n_map + 1) / n_map
        edges_img = np.arange(n_img + 1) / n_img
        lo = np.maximum(edges_img[:-1, None], edges_map[None, :-1])
        hi = np.minimum(edges_img[1:, None], edges_map[None, 1:])
        return np.clip(hi - lo, 0, None) * n_map  # share of each map cell in each pixel

    return overlap(h, height) @ att @ overlap(w, width).T


def test_mapped_box_keeps_tau_after_upsampling():
    rng = np.random.default_rng(12)
    for _ in range(200):
        h, w = rng.integers(1, 16, size=2)
        width, height = rng.integers(1, 120, size=2)
        att = rng.random((h, w)) ** 4
        tau = float(rng.uniform(0.1, 1.0))
        box = best_box(att, tau)
        x0, y0, x1, y1 = map_box_to_image(box, (h, w), (width, height))
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        image_att = area_upsample(att, height, width)
        kept = image_att[y0:y1, x0:x1].sum() / image_att.sum()
        assert kept >= tau - 1e-9


def test_mapped_box_covers_nearest_upsampled_cells():
    rng = np.random.default_rng(13)
    for _ in range(200):
        h, w = rng.integers(1, 16, size=2)
        width, height = rng.integers(1, 120, size=2)
        y0, y1 = sorted(rng.choice(h + 1, size=2, replace=False))
        x0, x1 = sorted(rng.choice(w + 1, size=2, replace=False))
        px0, py0, px1, py1 = map_box_to_image((y0, x0, y1, x1), (h, w), (width, height))
        for sampling in (0.0, 0.5):  # torch 'nearest' and 'nearest-exact' conventions
            cell_x = np.floor((np.arange(width) + sampling) * w / width).astype(int)
            cell_y = np.floor((np.arange(height) + sampling) * h / height).astype(int)
            inside_x = np.flatnonzero((cell_x >= x0) & (cell_x < x1))
            inside_y = np.flatnonzero((cell_y >= y0) & (cell_y < y1))
            if inside_x.size:
                assert px0 <= inside_x.min() and inside_x.max() < px1
            if inside_y.size:
                assert py0 <= inside_y.min() and inside_y.max() < py1


@pytest.mark.parametrize("args", [
    ((0, 0, 1, 1), (0, 5), (10, 10)),
    ((0, 0, 1, 1), (5, 5), (10, -1)),
    ((0, 0, 1, 1), (5, 5.5), (10, 10)),
    ((0, 0, 6, 1), (5, 5), (10, 10)),
])
def test_map_box_to_image_rejects_bad_input(args):
    with pytest.raises(ValueError):
        map_box_to_image(*args)

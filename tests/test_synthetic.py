"""The synthetic fine-detail dataset: scale argument, AVA format, determinism, scores."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gpf.model.geometry import peripheral_size
from gpf.workflows.synthetic import (
    DETAIL_AMPLITUDE, FIRST_ID, MAX_AREA_FRACTION, CarrierTruth, DatasetExistsError,
    SyntheticError, carrier_cover, detail_geometry, draw_scene, encode_scene, hit_rate,
    make_ava_dataset, plaid, random_box_hit_rate, read_truth, render_scene,
    vote_probabilities)

# (width, height, view size): production and the two demo sizes.
VIEW_CONFIGS = [(640, 480, 224), (448, 336, 96), (448, 336, 128)]
SMALL = dict(width=160, height=120, view_size=64)   # fast datasets for format tests


# ------------------------------------------------------------------ helpers

def _decoded(scene, detail: bool) -> np.ndarray:
    """The scene as written to disk (JPEG q90) and read back, with or without the plaid."""
    data = encode_scene(replace(scene, detail=detail), jpeg_quality=90)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float64)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def _peripheral(rgb: np.ndarray, view_size: int, stride: int = 1) -> np.ndarray:
    """As preprocess does: PIL LANCZOS to longest side = view size, aspect kept."""
    h, w = rgb.shape[:2]
    img = Image.fromarray(rgb.astype(np.uint8))
    size = peripheral_size(w, h, view_size, stride)
    return np.asarray(img.resize(size, Image.LANCZOS)).astype(float)


def _inner_region(scene, scale_x: float, scale_y: float) -> tuple[slice, slice]:
    """The carrier's plaid area (inside the frame, off the rounded corners) in scaled pixels."""
    x0, y0, x1, y1 = scene.carrier
    inset = scene.frame + 0.15 * min(x1 - x0, y1 - y0)
    return (slice(math.ceil((y0 + inset) * scale_y), math.floor((y1 - inset) * scale_y)),
            slice(math.ceil((x0 + inset) * scale_x), math.floor((x1 - inset) * scale_x)))


def _detail_scenes(geometry, n=3):
    return [draw_scene(i, seed=11, geometry=geometry) for i in range(n)]


def _fine_energy(luma: np.ndarray) -> float:
    """RMS of neighbour differences: the high-frequency energy of a patch."""
    return float(np.sqrt((np.diff(luma, axis=0) ** 2).mean() + (np.diff(luma, axis=1) ** 2).mean()))


def _read_ava(root: Path) -> list[list[int]]:
    rows = []
    for line in (root / "AVA.txt").read_text().splitlines():
        parts = line.split(" ")
        assert len(parts) == 15, line
        rows.append([int(p) for p in parts])
    return rows


def _mean_scores(rows) -> dict[str, float]:
    return {str(r[1]): float(np.dot(r[2:12], np.arange(1, 11)) / sum(r[2:12])) for r in rows}


# ---------------------------------------------------------------- geometry

@pytest.mark.parametrize("width,height,view", VIEW_CONFIGS + [(640, 480, 96), (480, 640, 128)])
def test_geometry_satisfies_the_scale_argument(width, height, view):
    g = detail_geometry(width, height, view)
    s = view / max(width, height)
    assert g.period >= 2
    assert g.period * s <= 0.9 < (g.period + 1) * s          # the largest period that vanishes
    assert g.period * g.fovea_size / g.box_max >= 4.0 - 1e-9  # >= 4 foveal pixels per period
    assert g.box_max ** 2 <= MAX_AREA_FRACTION * width * height
    assert g.box_min * s >= 8                                 # visible in the periphery


def test_geometry_fovea_size_changes_the_carrier_not_the_period():
    small, large = detail_geometry(640, 480, 128, 96), detail_geometry(640, 480, 128, 128)
    assert small.period == large.period == 4
    assert small.box_max == 96 and large.box_max == 128


@pytest.mark.parametrize("args,needle", [
    ((640, 480, 400), "view_size <= 288"),
    ((640, 480, 224, 32), "fovea_size"),
    ((640, 0, 224), "height"),
])
def test_geometry_refuses_impossible_settings(args, needle):
    with pytest.raises(SyntheticError, match=needle):
        detail_geometry(*args)


# ----------------------------------------------------- the two key properties

@pytest.mark.parametrize("width,height,view", VIEW_CONFIGS)
@pytest.mark.parametrize("stride", [1, 32])   # short side rounded to a backbone stride
def test_detail_is_invisible_in_the_peripheral_view(width, height, view, stride):
    g = detail_geometry(width, height, view)
    for scene in _detail_scenes(g):
        with_detail = _peripheral(_decoded(scene, True), view, stride)
        without = _peripheral(_decoded(scene, False), view, stride)
        other_grain = _peripheral(_decoded(replace(scene, grain_seed=scene.grain_seed + 1), False),
                                  view, stride)
        ph, pw = with_detail.shape[:2]
        region = _inner_region(scene, pw / width, ph / height)
        detail_diff = np.abs(with_detail[region] - without[region]).mean()
        grain_diff = np.abs(other_grain[region] - without[region]).mean()
        assert detail_diff < 1.0, (scene.image_id, detail_diff)
        assert detail_diff < grain_diff, (scene.image_id, detail_diff, grain_diff)
        # Nor fine texture: the plaid's residue (JPEG noise included) is weaker than
        # the change a new grain draw makes.
        detail_energy = _fine_energy(_luma(with_detail[region] - without[region]))
        grain_energy = _fine_energy(_luma(other_grain[region] - without[region]))
        assert detail_energy < 0.8 * grain_energy, (scene.image_id, detail_energy, grain_energy)
        # Before JPEG the plaid itself averages to (almost) exactly nothing.
        raw = [_peripheral(render_scene(scene, detail=d), view, stride) for d in (True, False)]
        assert np.abs(raw[0][region] - raw[1][region]).mean() < 0.15


@pytest.mark.parametrize("width,height,view", VIEW_CONFIGS)
def test_detail_is_invisible_through_the_project_image_loader(tmp_path, width, height, view):
    """Same claim via gpf.pipeline.images: JPEG draft decoding and reducing_gap included."""
    images = pytest.importorskip("gpf.pipeline.images")
    g = detail_geometry(width, height, view)
    scene = _detail_scenes(g, 1)[0]
    views = []
    for name, variant in (("on", replace(scene, detail=True)), ("off", replace(scene, detail=False)),
                          ("grain", replace(scene, detail=False, grain_seed=scene.grain_seed + 1))):
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(encode_scene(variant))
        img = images.load_image(path, reduce_to=view)
        views.append(np.asarray(images.peripheral_view(img, view), float))
    on, off, grain = views
    region = _inner_region(scene, on.shape[1] / width, on.shape[0] / height)
    detail_diff = np.abs(on[region] - off[region]).mean()
    assert detail_diff < 1.0 and detail_diff < np.abs(grain[region] - off[region]).mean()


@pytest.mark.parametrize("width,height,view", VIEW_CONFIGS[1:])
def test_peripheral_check_detects_a_coarse_period(width, height, view):
    """The measure above is not blind: a plaid 4 peripheral pixels wide shows clearly."""
    g = detail_geometry(width, height, view)
    scene = replace(_detail_scenes(g, 1)[0], period=int(round(4 / g.peripheral_scale)))
    with_detail = _peripheral(_decoded(scene, True), view)
    without = _peripheral(_decoded(scene, False), view)
    region = _inner_region(scene, with_detail.shape[1] / width, with_detail.shape[0] / height)
    assert np.abs(with_detail[region] - without[region]).mean() > 5.0


@pytest.mark.parametrize("width,height,view", VIEW_CONFIGS)
@pytest.mark.parametrize("margin", [1.0, 1.25])
def test_detail_is_visible_in_a_carrier_sized_foveal_crop(width, height, view, margin):
    g = detail_geometry(width, height, view)
    for scene in _detail_scenes(g):
        x0, y0, x1, y1 = scene.carrier
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, margin * (x1 - x0) / 2, margin * (y1 - y0) / 2
        box = tuple(int(round(v)) for v in (max(0, cx - hw), max(0, cy - hh),
                                            min(width, cx + hw), min(height, cy + hh)))
        crops = []
        for detail in (True, False):
            img = Image.fromarray(_decoded(scene, detail).astype(np.uint8)).crop(box)
            crops.append(np.asarray(img.resize((g.fovea_size, g.fovea_size), Image.LANCZOS),
                                    dtype=float))
        sx, sy = g.fovea_size / (box[2] - box[0]), g.fovea_size / (box[3] - box[1])
        shifted = replace(scene, carrier=(x0 - box[0], y0 - box[1], x1 - box[0], y1 - box[1]))
        region = _inner_region(shifted, sx, sy)
        energy_on, energy_off = (_fine_energy(_luma(c[region])) for c in crops)
        assert energy_on > 4 * energy_off, (scene.image_id, energy_on, energy_off)
        assert np.abs(crops[0][region] - crops[1][region]).mean() > 0.25 * DETAIL_AMPLITUDE


@pytest.mark.parametrize("width,height,view", VIEW_CONFIGS)
def test_fovea_resolves_the_detail_up_to_the_nyquist_crop_side(width, height, view):
    """Crops up to max_resolved_side (p * z = 2) keep the plaid; 4/3 of it loses it."""
    g = detail_geometry(width, height, view)
    scene = _detail_scenes(g, 1)[0]
    images = [Image.fromarray(_decoded(scene, d).astype(np.uint8)) for d in (True, False)]
    x0, y0, x1, y1 = scene.carrier
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    ratios = []
    for side in (g.max_resolved_side, 4 / 3 * g.max_resolved_side):
        half = int(side) // 2
        box = (cx - half, cy - half, cx + half, cy + half)   # may extend past the image: fine
        zoom = view / (2 * half)
        views = [np.asarray(im.crop(box).resize((view, view), Image.LANCZOS), float)
                 for im in images]
        inner = 0.3 * (min(x1 - x0, y1 - y0) - 2 * scene.frame) * zoom
        region = (slice(int(view / 2 - inner), int(view / 2 + inner)),) * 2
        on, off = (_fine_energy(_luma(v[region])) for v in views)
        ratios.append(on / off)
    assert ratios[0] > 3 and ratios[1] < 1.3, ratios


def test_plaid_is_zero_mean_over_whole_periods():
    for p in (2, 3, 4, 6):
        pattern = plaid(5 * p, 3 * p, p)
        assert abs(pattern.mean()) < 1e-6
        assert np.allclose(pattern, np.roll(pattern, p, axis=1), atol=1e-5)
    assert np.array_equal(plaid(4, 2, 2), np.array([[1, -1, 1, -1], [-1, 1, -1, 1]], np.float32))


def test_render_changes_only_the_carrier_interior():
    g = detail_geometry(448, 336, 96)
    scene = _detail_scenes(g, 1)[0]
    diff = np.any(render_scene(scene, detail=True) != render_scene(scene, detail=False), axis=2)
    x0, y0, x1, y1 = scene.carrier
    inside = np.zeros_like(diff)
    inside[y0 + scene.frame - 1:y1 - scene.frame + 1, x0 + scene.frame - 1:x1 - scene.frame + 1] = True
    assert diff.any() and not (diff & ~inside).any()


# --------------------------------------------------------------- the scenes

def test_carrier_is_inside_the_image_and_at_most_a_tenth_of_it():
    for width, height, view in VIEW_CONFIGS:
        g = detail_geometry(width, height, view)
        for i in range(300):
            s = draw_scene(i, seed=5, geometry=g)
            x0, y0, x1, y1 = s.carrier
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            assert (x1 - x0) * (y1 - y0) <= MAX_AREA_FRACTION * width * height
            assert g.box_min <= x1 - x0 <= g.box_max and g.box_min <= y1 - y0 <= g.box_max
            assert 2 <= len(s.distractors) <= 5


def test_unknown_task_lists_the_allowed_ones():
    with pytest.raises(SyntheticError, match="detail, control"):
        draw_scene(0, seed=0, geometry=detail_geometry(), task="fine")


@pytest.mark.parametrize("mean", [1.5, 3.0, 4.2, 5.0, 6.66, 8.0, 9.4])
def test_vote_probabilities_have_the_requested_mean(mean):
    p = vote_probabilities(mean, spread=1.5)
    assert p.shape == (10,) and abs(p.sum() - 1) < 1e-12 and (p > 0).all()
    assert abs(float(p @ np.arange(1, 11)) - mean) < 1e-3
    assert int(np.argmax(p)) + 1 in (math.floor(mean), math.ceil(mean))


def test_vote_probabilities_refuse_unreachable_means():
    with pytest.raises(SyntheticError, match="1..10"):
        vote_probabilities(10.0)


# --------------------------------------------------------------- the files

def test_ava_format_round_trip(tmp_path):
    n = 40
    info = make_ava_dataset(tmp_path, n, seed=3, test_fraction=0.25, **SMALL)
    rows = _read_ava(tmp_path)
    assert [r[0] for r in rows] == list(range(1, n + 1))
    ids = [str(r[1]) for r in rows]
    assert ids == list(info.ids) and ids[0] == str(FIRST_ID) and len(set(ids)) == n
    tags = dict(line.split(" ", 1) for line in (tmp_path / "tags.txt").read_text().splitlines())
    challenges = {line.split(" ", 1)[0] for line in
                  (tmp_path / "challenges.txt").read_text().splitlines()}
    truth = read_truth(tmp_path)
    for r in rows:
        votes = r[2:12]
        assert min(votes) >= 0 and 100 <= sum(votes) <= 250
        assert all(t == 0 or str(t) in tags for t in r[12:14]) and r[12] != 0
        assert str(r[14]) in challenges
    lists = tmp_path / "aesthetics_image_lists"
    test_ids = (lists / "generic_test.jpgl").read_text().split()
    assert len(test_ids) == 10 and set(test_ids) <= set(ids) and set(test_ids) == set(info.test_ids)
    train_ids = (lists / "generic_ls_train.jpgl").read_text().split()
    assert set(train_ids) == set(ids) - set(test_ids)
    for category in ("landscape", "cityscape", "floral"):
        listed = (lists / f"{category}_test.jpgl").read_text().split()
        assert set(listed) <= set(test_ids)
        assert set(listed) == {i for i in test_ids if truth[i].category == category}
    for image_id in ids:
        with Image.open(tmp_path / "images" / f"{image_id}.jpg") as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (160, 120)
    assert set(truth) == set(ids)
    for t in truth.values():
        x0, y0, x1, y1 = t.box
        assert (t.width, t.height) == (160, 120) and 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 120
        assert (x1 - x0) * (y1 - y0) <= MAX_AREA_FRACTION * 160 * 120
    assert info.geometry.period == truth[ids[0]].period


def test_the_project_reader_parses_it(tmp_path):
    sources = pytest.importorskip("gpf.pipeline.sources")
    info = make_ava_dataset(tmp_path, 30, seed=4, **SMALL)
    dataset = sources.load_ava(tmp_path, check_images=True)
    assert not dataset.problems
    assert {r.image_id for r in dataset.records} == set(info.ids)
    assert {r.image_id for r in dataset.split("test")} == set(info.test_ids)
    truth = read_truth(tmp_path)
    for record in dataset.records:
        assert sum(record.votes) >= 100 and record.path.is_file()
        if record.category is not None:
            assert record.category == truth[record.image_id].category


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path):
    a = _all_bytes_of(tmp_path / "a", seed=7, workers=1)
    b = _all_bytes_of(tmp_path / "b", seed=7, workers=2)
    c = _all_bytes_of(tmp_path / "c", seed=8, workers=1)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert len(a) == 70 + 3 + 2 + 6 + 2     # images, labels, generic lists, category lists, truth+info
    assert a["AVA.txt"] != c["AVA.txt"] and a["images/100001.jpg"] != c["images/100001.jpg"]


def _all_bytes_of(root: Path, seed: int, workers: int) -> dict[str, bytes]:
    make_ava_dataset(root, 70, seed=seed, workers=workers, **SMALL)
    return _all_bytes(root)


def test_existing_folder_is_refused_then_replaced_on_request(tmp_path):
    make_ava_dataset(tmp_path, 12, seed=1, **SMALL)
    with pytest.raises(DatasetExistsError, match="overwrite=True"):
        make_ava_dataset(tmp_path, 12, seed=1, **SMALL)
    make_ava_dataset(tmp_path, 5, seed=2, overwrite=True, **SMALL)
    assert len(list((tmp_path / "images").iterdir())) == 5
    assert len(_read_ava(tmp_path)) == 5


def test_an_interrupted_run_can_be_replaced(tmp_path):
    make_ava_dataset(tmp_path, 6, seed=1, **SMALL)
    (tmp_path / "AVA.txt").unlink()              # as if killed before the labels
    (tmp_path / "synthetic_truth.csv").unlink()
    with pytest.raises(DatasetExistsError, match="images/"):
        make_ava_dataset(tmp_path, 4, seed=1, **SMALL)
    make_ava_dataset(tmp_path, 4, seed=1, overwrite=True, **SMALL)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        f"{FIRST_ID + i}.jpg" for i in range(4)]


def test_a_foreign_dataset_is_never_overwritten(tmp_path):
    (tmp_path / "AVA.txt").write_text("1 42 0 0 0 0 1 0 0 0 0 0 0 0 1\n")
    with pytest.raises(DatasetExistsError, match="not a synthetic dataset"):
        make_ava_dataset(tmp_path, 5, seed=0, overwrite=True, **SMALL)
    assert (tmp_path / "AVA.txt").read_text().startswith("1 42 ")


@pytest.mark.parametrize("kwargs,needle", [
    (dict(task="fine"), "detail, control"),
    (dict(test_fraction=1.0), "test_fraction"),
    (dict(jpeg_quality=0), "jpeg_quality"),
    (dict(workers=0), "workers"),
    (dict(seed=-1), "seed"),
])
def test_bad_arguments_are_named(tmp_path, kwargs, needle):
    args = dict(seed=0, **SMALL) | kwargs
    with pytest.raises(SyntheticError, match=needle):
        make_ava_dataset(tmp_path, 10, **args)
    assert not (tmp_path / "AVA.txt").exists()


# ------------------------------------------------------------------ scores

def _scores_and_truth(root: Path, task: str):
    make_ava_dataset(root, 400, seed=21, task=task, **SMALL)
    means = _mean_scores(_read_ava(root))
    truth = read_truth(root)
    ids = sorted(means)
    return (np.array([means[i] for i in ids]),
            {k: np.array([getattr(truth[i], k) for i in ids], float)
             for k in ("detail", "coarse", "layout", "score_bit")})


def test_scores_follow_the_detail_in_the_detail_task(tmp_path):
    means, truth = _scores_and_truth(tmp_path, "detail")
    assert np.corrcoef(truth["detail"], means)[0, 1] > 0.75
    assert 0.1 < np.corrcoef(truth["coarse"], means)[0, 1] < 0.5
    assert 0.1 < np.corrcoef(truth["layout"], means)[0, 1] < 0.5
    assert 0.4 < (means > 5).mean() < 0.65
    lo, hi = np.percentile(means, [5, 95])
    assert 3.0 < lo < 4.2 and 6.5 < hi < 8.0
    assert 0.4 < truth["detail"].mean() < 0.6


def test_detail_carries_no_score_in_the_control_task(tmp_path):
    means, truth = _scores_and_truth(tmp_path / "control", "control")
    assert abs(np.corrcoef(truth["detail"], means)[0, 1]) < 0.15
    assert np.corrcoef(truth["score_bit"], means)[0, 1] > 0.75   # the hidden, undrawn bit
    assert 0.1 < np.corrcoef(truth["coarse"], means)[0, 1] < 0.5
    # Same seed, other task: identical images, only the votes differ.
    make_ava_dataset(tmp_path / "detail", 400, seed=21, task="detail", **SMALL)
    for image_id in ("100001", "100200", "100400"):
        assert ((tmp_path / "control" / "images" / f"{image_id}.jpg").read_bytes()
                == (tmp_path / "detail" / "images" / f"{image_id}.jpg").read_bytes())


# ---------------------------------------------------------------- hit rates

def _truth(box=(10, 10, 30, 30), width=40, height=30, image_id="1") -> dict[str, CarrierTruth]:
    return {image_id: CarrierTruth(image_id, width, height, box, True, 0.5, 0.5, 1, 0.0, 0.0,
                                   5.0, "landscape", 2)}


def test_hit_rate_counts_boxes_covering_half_the_carrier():
    truth = {**_truth(image_id="a"), **_truth(image_id="b"), **_truth(image_id="c")}
    boxes = {"a": (0, 0, 40, 30),        # covers all
             "b": (20, 10, 35, 30),      # covers exactly half
             "c": (22, 0, 40, 30)}       # covers 40 %
    assert carrier_cover(boxes["c"], truth["c"].box) == pytest.approx(0.4)
    assert hit_rate(boxes, truth) == pytest.approx(2 / 3)
    assert hit_rate(boxes, truth, min_cover=1.0) == pytest.approx(1 / 3)
    assert hit_rate(boxes, truth, min_cover=0.3) == 1.0


def test_hit_rate_max_side_counts_unresolving_boxes_as_misses():
    truth = {**_truth(image_id="a"), **_truth(image_id="b")}
    boxes = {"a": (5, 5, 35, 30), "b": (0, 0, 40, 30)}   # longer sides 30 and 40
    assert hit_rate(boxes, truth) == 1.0
    assert hit_rate(boxes, truth, max_side=30) == 0.5
    sizes = {"a": (30, 25), "b": (40, 30)}
    assert random_box_hit_rate(sizes, truth, max_side=30, draws=500) == pytest.approx(
        0.5 * random_box_hit_rate({"a": (30, 25)}, truth, draws=500), abs=0.05)


def test_hit_rate_names_bad_input():
    with pytest.raises(KeyError, match="'zz'"):
        hit_rate({"zz": (0, 0, 1, 1)}, _truth())
    with pytest.raises(SyntheticError, match="empty"):
        hit_rate({"1": (5, 5, 5, 9)}, _truth())
    with pytest.raises(SyntheticError, match="min_cover"):
        hit_rate({"1": (0, 0, 9, 9)}, _truth(), min_cover=0)


def _exact_random_hit_rate(w, h, t: CarrierTruth, min_cover=0.5) -> float:
    """Brute force over every integer position of a w x h box inside the image."""
    hits = total = 0
    for x0 in range(t.width - w + 1):
        for y0 in range(t.height - h + 1):
            total += 1
            hits += carrier_cover((x0, y0, x0 + w, y0 + h), t.box) >= min_cover
    return hits / total


@pytest.mark.parametrize("size", [(12, 12), (8, 20), (30, 5)])
def test_random_box_hit_rate_matches_brute_force(size):
    truth = _truth(box=(10, 5, 20, 15))
    exact = _exact_random_hit_rate(*size, truth["1"])
    estimate = random_box_hit_rate({"1": size}, truth, seed=3, draws=20000)
    assert estimate == pytest.approx(exact, abs=0.015)


def test_random_box_hit_rate_of_a_whole_image_box_is_one(tmp_path):
    make_ava_dataset(tmp_path, 6, seed=0, **SMALL)
    truth = read_truth(tmp_path / "synthetic_truth.csv")
    assert random_box_hit_rate({i: (500, 500) for i in truth}, tmp_path, seed=1) == 1.0
    assert hit_rate({i: t.box for i, t in truth.items()}, tmp_path) == 1.0


def test_damaged_truth_file_names_the_line(tmp_path):
    make_ava_dataset(tmp_path, 4, seed=0, **SMALL)
    path = tmp_path / "synthetic_truth.csv"
    rows = list(csv.reader(path.open()))
    rows[3][3] = "left"
    with path.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    with pytest.raises(SyntheticError, match=r"line 4 .*regenerate"):
        read_truth(path)

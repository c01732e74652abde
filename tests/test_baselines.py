"""The Table I baselines as the paper ran them (section IV-C): ``single`` fine-tuned on the warped photo,
``random`` with a fresh original-resolution patch per epoch, fixed test patches equal in evaluate and predict,
old shards refused naming the preprocess option, and the frozen-column variants kept under their own names.

Shards are made by ``run_preprocess`` on a tiny AVA folder (tiny backbone, 32-px views).
"""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from gpf.model.checkpoint import load_checkpoint
from gpf.pipeline.compat import FitError
from gpf.shards.layout import ORIG, WARP
from gpf.shards.reader import ShardReadError, make_loader
from gpf.train.stage2 import train_stage2

from helpers.training import VIEW, stage1_checkpoint, stage2_config, write_ava
from helpers.evaluation import TEST_IDS, build_eval_data

N_IMAGES = 24


def _preprocess(root, out, stage1, **kw):
    from gpf.pipeline.preprocess import PreprocessConfig, run_preprocess

    run_preprocess(PreprocessConfig(dataset="ava", root=str(root), out=str(out), stage1=str(stage1),
                                    view_size=VIEW, samples_per_shard=4, workers=1, batch_size=8,
                                    progress=False, dataset_options={"val_size": 6}, **kw))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("baselines")
    # photos from 48 to 80 px: every one holds several distinct 32-px patches
    write_ava(base / "ava", n=N_IMAGES, n_test=4, sizes=((64, 48), (48, 64), (80, 40)))
    stage1 = stage1_checkpoint(base / "stage1.pt")
    shards = _preprocess(base / "ava", base / "shards", stage1, store_warped=True, store_original=True)
    plain = _preprocess(base / "ava", base / "plain", stage1, random_crops=2)
    return {"base": base, "ava": base / "ava", "stage1": stage1, "shards": shards, "plain": plain}


def _members(shard_dir, split="train") -> dict:
    """key -> {member: bytes} of every sample of ``split``, read with tarfile (an independent reader)."""
    out: dict = {}
    for path in sorted(shard_dir.glob(f"{split}-*.tar")):
        with tarfile.open(path) as tar:
            for info in tar.getmembers():
                key, _, member = info.name.partition(".")
                out.setdefault(key, {})[member] = tar.extractfile(info).read()
    return out


def _pixels(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


# ----------------------------------------------------------------------------- the shards

def test_preprocess_stores_the_warped_and_the_original_photo(data):
    from gpf.shards.manifest import read_manifest
    from gpf.shards.verify import verify_shards

    run = read_manifest(data["shards"]).run
    assert (run.warped, run.original) == (True, True)
    assert (read_manifest(data["plain"]).run.warped, read_manifest(data["plain"]).run.original) == (False, False)
    members = _members(data["shards"])
    assert len(members) == N_IMAGES - 4 - 6
    for key, sample in members.items():
        assert Image.open(io.BytesIO(sample["warp.jpg"])).size == (VIEW, VIEW)
        original = Image.open(data["ava"] / "images" / f"{key}.jpg").size
        assert Image.open(io.BytesIO(sample["orig.jpg"])).size == original      # original resolution
    assert verify_shards(data["shards"]).ok


def test_verify_reports_a_sample_without_the_member_its_manifest_promises(data, tmp_path):
    import shutil

    from gpf.shards.verify import verify_shards

    folder = tmp_path / "shards"
    shutil.copytree(data["shards"], folder)
    tar = sorted(folder.glob("train-*.tar"))[0]
    with tarfile.open(tar) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    first = members[0][0].name.partition(".")[0]
    with tarfile.open(tar, "w") as archive:        # the same tar less one sample's warp.jpg
        for info, payload in members:
            if info.name != f"{first}.{WARP}":
                archive.addfile(info, io.BytesIO(payload))
    lines = verify_shards(folder).lines()
    assert any("missing member(s) warp.jpg" in line and first in line for line in lines), lines


# ----------------------------------------------------------------------------- random: fresh patches

def test_random_draws_a_fresh_original_resolution_patch_each_epoch(data):
    originals = {key: _pixels(s[ORIG]) for key, s in _members(data["shards"]).items()}
    boxes: dict = {}

    def epoch_boxes(epoch: int) -> dict:
        loader = make_loader(data["shards"], "train", 2, shuffle=True, seed=3, epoch=epoch, num_workers=0,
                             members=("warp",), patches=1)
        seen = {}
        for batch in loader:
            assert batch["warp"].shape[1:] == (3, VIEW, VIEW) and batch["patch"].shape[1:] == (1, 3, VIEW, VIEW)
            for key, patch, box in zip(batch["key"], batch["patch"], batch["patch_box"]):
                x0, y0, x1, y1 = box[0].tolist()
                assert (x1 - x0, y1 - y0) == (VIEW, VIEW)
                # the patch is the stored photo's pixels at the recorded box: original resolution, no resampling
                np.testing.assert_array_equal(patch[0].permute(1, 2, 0).numpy(), originals[key][y0:y1, x0:x1])
                seen[key] = (x0, y0)
        return seen

    for epoch in (0, 1, 2):
        boxes[epoch] = epoch_boxes(epoch)
    shared = set(boxes[0]) & set(boxes[1]) & set(boxes[2])
    assert len(shared) >= 5
    moved = [k for k in shared if len({boxes[e][k] for e in (0, 1, 2)}) > 1]
    assert len(moved) >= 0.8 * len(shared)                        # a new patch per epoch for (nearly) all
    assert epoch_boxes(1) == boxes[1]                             # seeded: a rerun draws the same


def test_evaluation_patches_are_fixed_and_independent_of_the_epoch(data):
    def boxes(epoch: int) -> dict:
        loader = make_loader(data["shards"], "test", 3, shuffle=False, seed=0, epoch=epoch, num_workers=0,
                             members=("warp",), patches=4)
        return {k: b.tolist() for batch in loader for k, b in zip(batch["key"], batch["patch_box"])}

    first = boxes(0)
    assert first == boxes(5) and len(first) == 4
    assert all(len({tuple(b) for b in per_photo}) > 1 for per_photo in first.values())   # 4 places, not one


def test_shards_without_the_members_are_refused_naming_the_option(data, tmp_path):
    with pytest.raises(ShardReadError, match="--store-original"):
        make_loader(data["plain"], "train", 2, num_workers=0, members=("periph",), patches=1)
    with pytest.raises(ShardReadError, match="--store-warped"):
        make_loader(data["plain"], "train", 2, num_workers=0, members=("warp",))
    for variant, option in (("single", "--store-warped"), ("random", "--store-warped and --store-original")):
        with pytest.raises(FitError, match=option) as info:
            train_stage2(stage2_config(data, tmp_path / variant, shards=str(data["plain"]), variant=variant))
        assert f"{variant}-frozen" in str(info.value)                  # the variant these shards suit
        assert not (tmp_path / variant).exists()                       # refused before the run folder


def test_unknown_variant_lists_every_name():
    from gpf.errors import OptionError
    from gpf.vocabulary import get_variant

    with pytest.raises(OptionError, match="single-frozen.*random.*random-frozen.*gpf") as info:
        get_variant("singel")
    assert "did you mean 'single'" in str(info.value)


# ----------------------------------------------------------------------------- training

def _state(path) -> dict:
    return load_checkpoint(path).state_dict


def test_single_fine_tunes_the_backbone_on_the_warped_photo(data, tmp_path):
    result = train_stage2(stage2_config(data, tmp_path / "run", variant="single", epochs=2, lr=0.1))
    ckpt = load_checkpoint(result.last_checkpoint, expect="stage2")
    assert ckpt.model_config["variant"] == "single" and ckpt.model_config["first_view"] == "warp"
    assert ckpt.model_config["peripheral_frozen"] is False and ckpt.shards["features_used"] is False
    # the column started from --weights (here none: seeded random), not from the stage-1 model, and trained
    from gpf.model.gpf import GPFNet
    from gpf.train.state import seed_init

    seed_init(0)                                   # the run's initial weights (seed 0, --weights none)
    start = GPFNet("tiny", "single", 10, branch_width=16, fusion_width=16, dropout=0.0).state_dict()
    stage1, after = _state(data["stage1"]), ckpt.state_dict
    convs = [k for k in after if k.startswith("peripheral.") and k.endswith("weight")]
    assert convs and all(not torch.equal(after[k], start[k]) for k in convs)
    assert all(not torch.equal(after[k], stage1["features." + k[len("peripheral."):]]) for k in convs)


def test_single_frozen_keeps_the_stage1_column_bit_identical(data, tmp_path):
    result = train_stage2(stage2_config(data, tmp_path / "run", variant="single-frozen", epochs=1,
                                        use_features="no"))
    after, stage1 = _state(result.last_checkpoint), _state(data["stage1"])
    for key, value in stage1.items():
        if key.startswith("features."):
            assert torch.equal(after["peripheral." + key[len("features."):]], value), key


def test_random_and_random_frozen_train(data, tmp_path):
    result = train_stage2(stage2_config(data, tmp_path / "random", variant="random", epochs=2))
    after = _state(result.last_checkpoint)
    assert any(k.startswith("foveal.") for k in after)
    frozen = train_stage2(stage2_config(data, tmp_path / "frozen", shards=str(data["plain"]),
                                        variant="random-frozen", epochs=1))
    assert load_checkpoint(frozen.last_checkpoint).model_config["variant"] == "random-frozen"


def test_a_checkpoint_without_first_view_is_read_as_the_frozen_variant():
    from gpf.model.gpf import GPFNet, build_model

    config = GPFNet("tiny", "random-frozen", 10, branch_width=16, fusion_width=16).config()
    old = {k: v for k, v in config.items() if k != "first_view"} | {"variant": "random"}   # gpf <= 0.2
    assert build_model(old).variant == "random-frozen"
    assert build_model(dict(old, variant="single")).variant == "single-frozen"
    assert build_model(dict(config, variant="random")).variant == "random"


# ----------------------------------------------------------------------------- evaluate == predict

@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    return build_eval_data(tmp_path_factory)


@pytest.mark.parametrize("key", ["single-paper", "random-paper"])
def test_predict_equals_evaluate_per_photo(eval_data, key):
    from gpf.pipeline.evaluation import evaluate_checkpoint
    from gpf.pipeline.scoring import Scorer

    evaluation = evaluate_checkpoint(eval_data[key], eval_data["shards"], batch_size=4, workers=0, device="cpu")
    from_shards = dict(zip(evaluation.ids, evaluation.pred_dist))
    assert sorted(from_shards) == sorted(TEST_IDS)
    scorer = Scorer.from_checkpoint(eval_data[key], device="cpu", workers=1)
    paths = [eval_data["ava"] / "images" / f"{i}.jpg" for i in TEST_IDS]
    results = {r.id: r for r in scorer.score_many(paths, batch_size=5)}
    for image_id in TEST_IDS:
        assert results[image_id].ok
        np.testing.assert_allclose(results[image_id].distribution, from_shards[image_id], atol=1e-4)
    assert np.ptp(evaluation.pred_mean) > 0.05          # the model depends on its input


def test_test_patches_are_the_stored_photo_at_fixed_seeded_boxes(eval_data):
    from gpf.pipeline.baselines import test_patches
    from gpf.pipeline.images import load_image
    from gpf.shards.layout import safe_key
    from gpf.shards.patches import test_patch_boxes

    stored = _members(eval_data["shards"], "test")
    image_id = TEST_IDS[0]
    photo = load_image(eval_data["ava"] / "images" / f"{image_id}.jpg")
    patches, boxes = test_patches(photo, 64, 95, 0, image_id, 3)
    original = _pixels(stored[safe_key(image_id)]["orig.jpg"])
    assert boxes == test_patch_boxes((original.shape[1], original.shape[0]), 64, 0, safe_key(image_id), 3)
    for patch, (x0, y0, x1, y1) in zip(patches, boxes):
        np.testing.assert_array_equal(patch.permute(1, 2, 0).numpy(), original[y0:y1, x0:x1])

"""`gpf predict` gives a photo the score `gpf evaluate` gives it from the shards, to float precision.

A tiny run made by the real commands' library calls: an AVA folder with a 5:1
panorama, a 1:4 portrait and a 10x10 image among ordinary photos; a stage-1
model on ``tiny_inception`` (minimum input 15, so the panorama's 32x8 view is
fitted for EB, for the stored features and for stage 2); `run_preprocess` with
stored features, random crops and the baselines' warp.jpg/orig.jpg; stage 2 trained for one step. The reference
for each photo is what `evaluate_checkpoint` computes from the stored JPEG views;
the boxes are the ones the shards' Parquet rows record.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.ava import make_ava
from helpers.evaluation import predict_results_of

SIZES = [(250, 50), (40, 160), (10, 10), (120, 90), (90, 120)]   # 5:1, 1:4, 10x10, 4:3, 3:4
VIEW = 32
TOLERANCE = 1e-5

pytestmark = pytest.mark.slow


def _tiny_run(base, fit: str) -> dict:
    from gpf.model.checkpoint import save_checkpoint, stage1_checkpoint
    from gpf.model.gpf import PeripheralNet
    from gpf.pipeline.preprocess import PreprocessConfig, run_preprocess

    ava = base / "ava"
    make_ava(ava, n=16, seed=1, test_every=2, sizes=SIZES)
    torch.manual_seed(0)
    stage1 = save_checkpoint(base / "stage1.pt", stage1_checkpoint(
        PeripheralNet("tiny_inception"), view_size=VIEW, threshold=5.0, scores=[float(s) for s in range(1, 11)],
        extra_config={"view_round": 8, "view_min_side": 1, "view_fit": fit}))
    run_preprocess(PreprocessConfig(dataset="ava", root=str(ava), out=str(base / "shards"), stage1=str(stage1),
                                    samples_per_shard=2, random_crops=2, store_features=True, store_warped=True,
                                    store_original=True, workers=1,
                                    batch_size=4, progress=False, dataset_options={"val_size": 2}))
    return {"ava": ava, "shards": base / "shards", "base": base}


def _stage2(run: dict, variant: str, fit: str):
    from gpf.train.config import Stage2Config
    from gpf.train.stage2 import train_stage2

    out = run["base"] / variant
    train_stage2(Stage2Config(out=str(out), shards=str(run["shards"]), backbone="tiny_inception", weights="none",
                              variant=variant, epochs=1, batch_size=2, workers=0, progress=False, tensorboard=False,
                              branch_width=16, fusion_width=16, dropout=0.0, view_fit=fit, limit_train_batches=1,
                              device="cpu"))
    return out / "last.pt"


def _assert_predict_equals_evaluate(run: dict, checkpoint, splits=("test", "train", "val"), crops=None) -> int:
    from gpf.pipeline.evaluation import evaluate_checkpoint
    from gpf.pipeline.scoring import Scorer

    scorer = Scorer.from_checkpoint(checkpoint, device="cpu", workers=1, random_crops=crops)
    rows = pd.read_parquet(run["shards"] / "meta").set_index("id")
    seen = 0
    for split in splits:
        evaluation = evaluate_checkpoint(checkpoint, run["shards"], split=split, workers=0, device="cpu")
        results = predict_results_of(scorer, evaluation, run["ava"] / "images", TOLERANCE, batch_size=3)
        for image_id, result in results.items():
            if result.box is not None:
                row = rows.loc[image_id]
                assert result.box == (row.x0, row.y0, row.x1, row.y1), (split, image_id)
        seen += len(results)
    return seen


def test_predict_equals_evaluate_for_every_variant_with_padded_views(tmp_path):
    run = _tiny_run(tmp_path, "pad")
    sizes = set(zip(pd.read_parquet(run["shards"] / "meta")["width"], pd.read_parquet(run["shards"] / "meta")["height"]))
    assert {(250, 50), (40, 160), (10, 10)} <= sizes
    for variant in ("gpf", "random", "random-frozen", "single", "single-frozen"):
        crops = 2 if variant == "random-frozen" else None      # its K stored crops; `random`: the default test patches
        assert _assert_predict_equals_evaluate(run, _stage2(run, variant, "pad"), crops=crops) == 16, variant


def test_predict_equals_evaluate_with_enlarged_views(tmp_path):
    run = _tiny_run(tmp_path, "enlarge")
    from gpf.shards.manifest import read_manifest

    assert read_manifest(run["shards"]).run.view_fit == "enlarge"
    assert _assert_predict_equals_evaluate(run, _stage2(run, "gpf", "enlarge"), splits=("test",)) == 8


def test_random_on_a_folder_dataset_seeds_predicts_patches_by_the_csv_id_as_evaluate_does(tmp_path):
    """A folder dataset's ids are its CSV's paths (``photos/p03.jpg``), not file stems: `gpf predict ROOT`
    reports them as ids, and the ``random`` variant's fixed test patches must be seeded by them."""
    from PIL import Image

    from gpf.model.checkpoint import save_checkpoint, stage1_checkpoint
    from gpf.model.gpf import PeripheralNet
    from gpf.pipeline.evaluation import evaluate_checkpoint
    from gpf.pipeline.preprocess import PreprocessConfig, run_preprocess
    from gpf.pipeline.scoring import Scorer, named_image_files
    from helpers.ava import photo_like

    root = tmp_path / "own"
    (root / "photos").mkdir(parents=True)
    rng = np.random.default_rng(5)
    lines = ["path,c1,c2,c3,c4,c5,split"]
    for i in range(12):
        w, h = SIZES[i % len(SIZES)]
        Image.fromarray(photo_like(w, h, rng)).save(root / "photos" / f"p{i:02d}.jpg", quality=90)
        split = "test" if i % 2 else ("val" if i < 4 else "train")
        lines.append(",".join([f"photos/p{i:02d}.jpg", *map(str, rng.integers(1, 9, 5)), split]))
    (root / "votes.csv").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    stage1 = save_checkpoint(tmp_path / "stage1.pt", stage1_checkpoint(
        PeripheralNet("tiny"), view_size=VIEW, threshold=3.0, scores=[1.0, 2.0, 3.0, 4.0, 5.0],
        extra_config={"view_round": 8, "view_min_side": 1, "view_fit": "pad"}))
    run = {"shards": tmp_path / "shards", "base": tmp_path}
    run_preprocess(PreprocessConfig(dataset="folder", root=str(root / "votes.csv"), out=str(run["shards"]),
                                    stage1=str(stage1), samples_per_shard=4, store_warped=True, store_original=True,
                                    workers=1, batch_size=4, progress=False))
    from gpf.train.config import Stage2Config
    from gpf.train.stage2 import train_stage2

    out = tmp_path / "random"
    train_stage2(Stage2Config(out=str(out), shards=str(run["shards"]), backbone="tiny", weights="none",
                              variant="random", epochs=1, batch_size=2, workers=0, progress=False, tensorboard=False,
                              branch_width=8, fusion_width=8, dropout=0.0, limit_train_batches=1, device="cpu"))
    evaluation = evaluate_checkpoint(out / "last.pt", run["shards"], split="test", workers=0, device="cpu")
    assert sorted(evaluation.ids) == [f"photos/p{i:02d}.jpg" for i in range(1, 12, 2)]
    scorer = Scorer.from_checkpoint(out / "last.pt", device="cpu", workers=1)
    wanted = set(evaluation.ids)
    results = {r.id: r for r in scorer.score_many([n for n in named_image_files([root]) if n.id in wanted])}
    for k, image_id in enumerate(evaluation.ids):
        assert results[image_id].ok, results[image_id].error
        assert abs(results[image_id].mean - evaluation.pred_mean[k]) <= TOLERANCE, image_id

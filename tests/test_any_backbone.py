"""One set of shards, any backbone (issue: reuse shards for other backbones).

One preprocess run, made with a small stage-1 model (``tiny``, 32 px views) on
photos that include a 5:1 panorama, a 1:4 portrait and a 10x10 image, serves
stage 2 with each of the paper's four backbones and six timm families as the
foveal subnet (random weights; the frozen stage-1 network stays the peripheral
one and its stored ``pfeat.npy`` is used). Every view below a network's minimum
input is fitted to it at load, identically in training, evaluation and
prediction. The reference for each photo's score is ``gpf evaluate``'s (from the
stored JPEG views); ``gpf predict`` on the raw photo must give it within 1e-4.
"""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from helpers.ava import make_ava
from helpers.evaluation import predict_results_of

pytestmark = pytest.mark.slow

SIZES = [(250, 50), (40, 160), (10, 10), (120, 90), (90, 120), (200, 100)]   # 5:1, 1:4, 10x10, 4:3, 3:4, 2:1
VIEW = 32
TOLERANCE = 1e-4
BACKBONES = (
    "vgg16", "alexnet", "resnet18", "inception_v3",
    "timm:resnet50", "timm:convnext_atto", "timm:efficientnet_b0", "timm:regnetx_002",
    "timm:mobilenetv3_small_050", "timm:deit_tiny_patch16_224",
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from gpf.model.checkpoint import save_checkpoint, stage1_checkpoint
    from gpf.model.gpf import PeripheralNet
    from gpf.pipeline.preprocess import PreprocessConfig, run_preprocess

    base = tmp_path_factory.mktemp("any_backbone")
    ava = base / "ava"
    make_ava(ava, n=12, seed=3, test_every=2, sizes=SIZES)
    torch.manual_seed(0)
    stage1 = save_checkpoint(base / "stage1.pt", stage1_checkpoint(
        PeripheralNet("tiny"), view_size=VIEW, threshold=5.0, scores=[float(s) for s in range(1, 11)],
        extra_config={"view_round": 8, "view_min_side": 1, "view_fit": "pad"}))
    run_preprocess(PreprocessConfig(dataset="ava", root=str(ava), out=str(base / "shards"), stage1=str(stage1),
                                    samples_per_shard=4, store_features=True, workers=1, batch_size=4,
                                    progress=False, dataset_options={"val_size": 2}))
    meta = pd.read_parquet(base / "shards" / "meta")
    assert set(meta["status"]) == {"ok"}
    assert {(250, 50), (40, 160), (10, 10)} <= set(zip(meta["width"], meta["height"]))
    return {"ava": ava, "shards": base / "shards", "base": base}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_trains_on_the_same_shards_and_predict_equals_evaluate(shards, backbone):
    from gpf.model.backbones import get_spec
    from gpf.pipeline.evaluation import evaluate_checkpoint
    from gpf.pipeline.scoring import Scorer
    from gpf.shards.layout import jpeg_size
    from gpf.shards.reader import iter_shard, list_shards
    from gpf.train.config import Stage2Config
    from gpf.train.stage2 import train_stage2

    spec = get_spec(backbone)
    smallest = min(min(jpeg_size(s["periph.jpg"])) for sh in list_shards(shards["shards"], "test")
                   for s in iter_shard(sh, lambda _k, m: m == "periph.jpg"))
    assert smallest < spec.min_input            # the panorama's 32x8 view is fitted for every one of them

    out = shards["base"] / backbone.replace(":", "_")
    torch.manual_seed(0)
    train_stage2(Stage2Config(out=str(out), shards=str(shards["shards"]), backbone=backbone, weights="none",
                              variant="gpf", epochs=1, batch_size=4, workers=0, progress=False, tensorboard=False,
                              branch_width=8, fusion_width=8, dropout=0.0, limit_train_batches=3, device="cpu"))
    checkpoint = out / "last.pt"
    evaluation = evaluate_checkpoint(checkpoint, shards["shards"], split="test", workers=0, device="cpu")
    assert len(evaluation.ids) == 6
    scorer = Scorer.from_checkpoint(checkpoint, device="cpu", workers=1)
    assert scorer.describe()["backbone"] == backbone and scorer.describe()["peripheral_backbone"] == "tiny"
    predict_results_of(scorer, evaluation, shards["ava"] / "images", TOLERANCE)

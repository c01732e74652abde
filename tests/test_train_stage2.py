"""Stage 2 end to end on CPU: shards written by the test, tiny backbones, small heads."""
from __future__ import annotations

import math
import shutil

import pytest
import torch
import yaml

from gpf.pipeline.compat import FitError
from gpf.model.checkpoint import load_checkpoint, state_dict_digest
from gpf.train.config import ConfigError
from gpf.train.loop import NonFiniteLossError, TrainHooks
from gpf.train.stage2 import Stage2Error, train_stage2

from helpers.training import VIEW, stage1_checkpoint, stage2_config, state_of, write_shards


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage2")
    ckpt = stage1_checkpoint(root / "stage1.pt")
    write_shards(root / "shards", ckpt, random_crops=2, features=True)
    write_shards(root / "plain", ckpt, random_crops=0, features=False)
    return {"root": root, "stage1": ckpt, "shards": root / "shards", "plain": root / "plain"}


def test_gpf_trains_loss_goes_down_and_checkpoint_embeds_attention(data, tmp_path):
    result = train_stage2(stage2_config(data, tmp_path / "run", epochs=6, lr=0.3))
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert min(losses[-2:]) < 0.7 * losses[0]

    ckpt = load_checkpoint(tmp_path / "run" / "best.pt", expect="stage2")   # weights_only=True inside
    stage1 = load_checkpoint(data["stage1"], expect="stage1")
    block = ckpt.attention
    assert block.stage1_digest == state_dict_digest(stage1.state_dict)
    assert all(torch.equal(block.stage1_state_dict[k], v) for k, v in stage1.state_dict.items())
    assert (block.tau, block.eb_layer, block.contrastive, block.view_size) == (0.7, "features.pool2", False, VIEW)
    assert (ckpt.num_classes, ckpt.threshold, ckpt.view_size) == (10, 5.0, VIEW)
    assert ckpt.scores == tuple(float(s) for s in range(1, 11))
    assert ckpt.config["lr"] == 0.3 and ckpt.train["epoch"] == result.best_epoch
    assert ckpt.shards["features_used"] is True     # matching pfeat.npy were used
    assert ckpt.view_fit == "pad" == ckpt.model_config["view_fit"]    # evaluate and predict fit views alike

    header, *rows = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    assert header.split(",")[:12] == ["epoch", "train_loss", "val_loss", "accuracy", "srcc", "lcc", "mae",
                                      "rmse", "emd", "lr", "samples_per_s", "data_wait"]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["config"]["batch_size"] == 4 and saved["stage"] == "stage2"


def test_frozen_peripheral_weights_and_bn_buffers_are_bit_identical(data, tmp_path):
    # use_features='no': the peripheral really runs forward (train mode elsewhere) in every step
    train_stage2(stage2_config(data, tmp_path / "run", use_features="no", epochs=2))
    stage1 = state_of(data["stage1"])
    after = state_of(tmp_path / "run" / "last.pt")
    peripheral = {k[len("peripheral."):]: v for k, v in after.items() if k.startswith("peripheral.")}
    features = {k[len("features."):]: v for k, v in stage1.items() if k.startswith("features.")}
    assert peripheral.keys() == features.keys()
    assert any("running_mean" in k for k in peripheral)
    for key, value in features.items():
        assert torch.equal(peripheral[key], value), key
    # ... while the foveal subnet did train
    foveal = [k for k in after if k.startswith("foveal.") and k.endswith("weight")]
    assert any(not torch.equal(after[k], stage1["features." + k[len("foveal."):]]) for k in foveal)


def test_two_backbones_train_from_the_same_shards(data, tmp_path):
    digests = []
    for backbone in ("tiny", "small"):
        result = train_stage2(stage2_config(data, tmp_path / backbone, backbone=backbone, peripheral_weights="none",
                                     epochs=1))
        ckpt = load_checkpoint(result.last_checkpoint, expect="stage2")
        assert ckpt.model_config["backbone"] == backbone
        assert ckpt.shards["features_used"] is False      # another peripheral than the one in pfeat
        digests.append(ckpt.attention.stage1_digest)
    assert digests[0] == digests[1]


def test_random_frozen_variant_needs_stored_random_crops(data, tmp_path):
    with pytest.raises(FitError, match=r"--random-crops K"):
        train_stage2(stage2_config(data, tmp_path / "a", shards=str(data["plain"]), variant="random-frozen"))
    assert not (tmp_path / "a").exists()
    result = train_stage2(stage2_config(data, tmp_path / "b", variant="random-frozen", epochs=1))
    assert result.epochs_completed == 1


def test_use_features_yes_refused_when_shards_have_none(data, tmp_path):
    with pytest.raises(Stage2Error, match="no peripheral features"):
        train_stage2(stage2_config(data, tmp_path / "a", shards=str(data["plain"]), use_features="yes"))


def test_features_from_pixels_or_another_fit_are_not_used(data, tmp_path):
    """pfeat.npy of shards made before format 3 came from the views before their JPEG encode: not what
    evaluate sees, so stage 2 decodes the views instead (and refuses --use-features yes, saying why)."""
    import json

    old = tmp_path / "old"
    shutil.copytree(data["shards"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest.update(format=2, features_from=None)
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Stage2Error, match=r"before their JPEG encode \(manifest format 2\)"):
        train_stage2(stage2_config(data, tmp_path / "a", shards=str(old), use_features="yes"))
    result = train_stage2(stage2_config(data, tmp_path / "b", shards=str(old), epochs=1))
    assert load_checkpoint(result.last_checkpoint).shards["features_used"] is False
    with pytest.raises(Stage2Error, match="fitted by 'pad', this run fits by 'enlarge'"):
        train_stage2(stage2_config(data, tmp_path / "c", use_features="yes", view_fit="enlarge"))


def test_stage1_checkpoint_that_did_not_make_the_shards_is_refused(data, tmp_path):
    other = stage1_checkpoint(tmp_path / "other.pt", seed=1)
    with pytest.raises(Stage2Error, match="is not the stage-1 model that made the shards"):
        train_stage2(stage2_config(data, tmp_path / "run", stage1=str(other)))


class _Kill(Exception):
    pass


def _kill_at(epoch: int, step: int):
    def hook(info):
        if (info.epoch, info.step) == (epoch, step):
            raise _Kill
    return TrainHooks(after_step=hook)


@pytest.mark.slow
def test_resume_after_a_kill_mid_epoch_gives_the_uninterrupted_weights(data, tmp_path):
    cfg = dict(epochs=3, variant="gpf", workers=1, use_features="no")
    train_stage2(stage2_config(data, tmp_path / "straight", **cfg))
    with pytest.raises(_Kill):
        train_stage2(stage2_config(data, tmp_path / "killed", **cfg), hooks=_kill_at(epoch=2, step=3))
    assert load_checkpoint(tmp_path / "killed" / "last.pt").train["epoch"] == 1
    result = train_stage2(stage2_config(data, None, resume=str(tmp_path / "killed"), **cfg))
    assert result.epochs_completed == 3
    straight, resumed = state_of(tmp_path / "straight" / "last.pt"), state_of(tmp_path / "killed" / "last.pt")
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-6, atol=1e-7, msg=key)
    rows = (tmp_path / "killed" / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]


def test_resume_with_a_different_config_is_refused_naming_the_key(data, tmp_path):
    train_stage2(stage2_config(data, tmp_path / "run", epochs=1))
    with pytest.raises(ConfigError, match=r"lr: 0\.05 -> 0\.2"):
        train_stage2(stage2_config(data, None, resume=str(tmp_path / "run"), epochs=2, lr=0.2))
    with pytest.raises(ConfigError, match="already holds a run"):
        train_stage2(stage2_config(data, tmp_path / "run", epochs=1))


def test_resume_on_rewritten_shards_is_refused(data, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(data["shards"], shards)
    train_stage2(stage2_config(data, tmp_path / "run", shards=str(shards), epochs=1))
    write_shards(shards, data["stage1"], random_crops=2, features=True, seed=5)   # same names, new bytes
    with pytest.raises(Stage2Error, match=r"shard\(s\) added, removed or rewritten"):
        train_stage2(stage2_config(data, None, shards=str(shards), resume=str(tmp_path / "run"), epochs=2))


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(data, tmp_path):
    def poison(info):
        if (info.epoch, info.step) == (2, 2):
            with torch.no_grad():
                info.model.classifier.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 3 of the epoch"):
        train_stage2(stage2_config(data, tmp_path / "run", epochs=3), hooks=TrainHooks(after_step=poison))
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last.train["epoch"] == 1
    assert all(bool(torch.isfinite(v).all()) for v in last.state_dict.values() if v.is_floating_point())
    assert len((tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()) == 2


# ----------------------------------------------------------------------------- a timm foveal subnet

@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """`gpf preprocess` on photos (tests/helpers/evaluation.py) with a validation split and stored features."""
    from helpers.evaluation import VIEW as PHOTO_VIEW
    from helpers.evaluation import save_stage1, write_ava
    from gpf.pipeline.preprocess import PreprocessConfig, run_preprocess

    root = tmp_path_factory.mktemp("timm_stage2")
    write_ava(root / "ava")
    stage1 = save_stage1(root / "stage1.pt")
    run_preprocess(PreprocessConfig(dataset="ava", root=str(root / "ava"), out=str(root / "shards"),
                                    stage1=str(stage1), view_size=PHOTO_VIEW, samples_per_shard=2, workers=2,
                                    batch_size=8, store_features=True, progress=False,
                                    dataset_options={"val_size": 2}))
    return {"root": root, "ava": root / "ava", "stage1": stage1, "shards": root / "shards"}


#: A timm foveal subnet that normalises otherwise (mean = std = 0.5) than the stage-1 peripheral (ImageNet's).
FOVEAL = "timm:vit_tiny_patch16_224"


def test_a_timm_foveal_subnet_trains_beside_the_stage1_peripheral_and_predict_matches_evaluate(photos, tmp_path):
    from helpers.evaluation import TEST_IDS
    from gpf.model.checkpoint import save_checkpoint
    from gpf.pipeline.evaluation import evaluate_checkpoint
    from gpf.pipeline.scoring import Scorer

    cfg = stage2_config({"shards": photos["shards"]}, tmp_path / "run", backbone=FOVEAL, epochs=1,
                        batch_size=2, lr=1e-4, gif_width=[8, 24])
    result = train_stage2(cfg)
    ckpt = load_checkpoint(result.last_checkpoint, expect="stage2")
    config = ckpt.model_config
    assert (config["backbone"], config["peripheral_backbone"], config["gif_hidden"]) == (FOVEAL, "tiny", [8, 24])
    assert config["subnets"]["foveal"]["channels"] == 192 and config["subnets"]["foveal"]["mean"] == [0.5] * 3
    assert ckpt.shards["features_used"] is True           # the peripheral is the stage-1 network that made pfeat
    stage1 = load_checkpoint(photos["stage1"]).state_dict
    assert all(torch.equal(v, stage1["features." + k[len("peripheral."):]])
               for k, v in ckpt.state_dict.items() if k.startswith("peripheral."))
    # a peaked head, so that the scores differ from photo to photo
    ckpt.state_dict["classifier.weight"] = ckpt.state_dict["classifier.weight"] * 30
    save_checkpoint(tmp_path / "sharp.pt", ckpt)

    evaluation = evaluate_checkpoint(tmp_path / "sharp.pt", photos["shards"], workers=0, device="cpu")
    from_shards = dict(zip(evaluation.ids, evaluation.pred_mean))
    scorer = Scorer.from_checkpoint(tmp_path / "sharp.pt", device="cpu", workers=1)
    assert scorer.describe()["backbone"] == FOVEAL and scorer.describe()["peripheral_backbone"] == "tiny"
    predicted = {r.id: r.mean for r in scorer.score_many([photos["ava"] / "images" / f"{i}.jpg" for i in TEST_IDS])}
    assert set(predicted) == set(from_shards)
    differences = [abs(mean - from_shards[image_id]) for image_id, mean in predicted.items()]
    # the views differ by the shards' JPEG round trip, as for the registered backbones (tests/test_scoring.py) ...
    assert max(differences) < 0.05
    # ... far less than the scores of different photos differ
    assert max(differences) < (max(from_shards.values()) - min(from_shards.values())) / 4


def test_another_peripheral_backbone_is_started_from_the_given_weights_and_skips_stored_features(data, tmp_path):
    result = train_stage2(stage2_config(data, tmp_path / "run", backbone="tiny", peripheral_backbone="small",
                                        epochs=1))
    ckpt = load_checkpoint(result.last_checkpoint, expect="stage2")
    assert (ckpt.model_config["peripheral_backbone"], ckpt.model_config["backbone"]) == ("small", "tiny")
    assert ckpt.shards["features_used"] is False
    with pytest.raises(Stage2Error, match="'single-frozen' variant has one column"):
        train_stage2(stage2_config(data, tmp_path / "single", variant="single-frozen", peripheral_backbone="small"))

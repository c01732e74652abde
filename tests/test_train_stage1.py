"""Stage 1 end to end on CPU: a tiny AVA folder of real JPEGs written by the test."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from gpf.model.checkpoint import load_checkpoint, model_from_checkpoint
from gpf.pipeline.sources import open_dataset
from gpf.train.config import Stage1Config
from gpf.train.loop import TrainHooks
from gpf.train.stage1 import (ImageItem, bucket_batches, rankdata, stage1_metrics, train_epoch_batches,
                              train_stage1, val_batches_for_rank)

from helpers.training import write_ava


@pytest.fixture(scope="module")
def ava(tmp_path_factory):
    root = tmp_path_factory.mktemp("ava")
    votes = write_ava(root, n=28, n_test=4)
    return root, votes


def config(root, out, **kw) -> Stage1Config:
    values = dict(out=None if out is None else str(out), dataset="ava", root=str(root), backbone="tiny",
                  weights="none", view_size=32, epochs=3, batch_size=4, lr=0.05, workers=0,
                  dataset_options={"val_size": 6}, progress=False, tensorboard=False)
    values.update(kw)
    return Stage1Config(**values)


def test_stage1_trains_and_writes_the_checkpoint_preprocess_takes(ava, tmp_path):
    root, votes = ava
    result = train_stage1(config(root, tmp_path / "run", epochs=6, lr=0.05))
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 6 and min(losses[-2:]) < 0.7 * losses[0]
    assert result.history[-1]["accuracy"] >= 0.8         # colour separates high from low

    ckpt = load_checkpoint(tmp_path / "run" / "best.pt", expect="stage1")   # weights_only=True
    dataset = open_dataset("ava", root, val_size=6)
    assert ckpt.format == "gpf-stage1" and ckpt.kind == "stage1" and ckpt.attention is None
    assert ckpt.split_spec == dataset.split_spec and ckpt.dataset["split_spec"] == dataset.split_spec
    config_of = ckpt.model_config
    assert (config_of["view_size"], config_of["threshold"], config_of["num_classes"]) == (32, 5.0, 2)
    assert (ckpt.view_size, ckpt.threshold, ckpt.num_classes) == (32, 5.0, 2)
    assert config_of["scores"] == [float(s) for s in range(1, 11)]
    assert ckpt.view_geometry == {"view_size": 32, "view_round": 8, "view_min_side": 1, "view_fit": "pad"}
    assert ckpt.train["epoch"] == result.best_epoch
    model = model_from_checkpoint(ckpt)                 # what preprocess rebuilds
    assert type(model).__name__ == "PeripheralNet"
    assert (tmp_path / "run" / "last.pt").exists() and (tmp_path / "run" / "config.yaml").exists()


def test_a_backbone_eb_cannot_walk_is_refused_before_the_run_folder(ava, tmp_path, monkeypatch):
    """Stage 1 trains the network preprocessing reads EB attention from: a GELU trunk stops here,
    with the module and the reason, not when preprocessing meets it."""
    from collections import OrderedDict

    from torch import nn

    from gpf.model import backbones
    from gpf.train.stage1 import Stage1Error

    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))
    backbones.register_backbone(
        "gelu_net", lambda: nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), act=nn.GELU(),
                                                      pool=nn.MaxPool2d(2))),
        channels=4, stride=2, min_input=2, default_eb_layer="features.pool", gif_hidden=2)
    with pytest.raises(Stage1Error, match=r"--backbone gelu_net cannot be a stage-1 network.*'features.act' "
                                          r"\(torch.nn.modules.activation.GELU\): a signed activation") as err:
        train_stage1(config(ava[0], tmp_path / "run", backbone="gelu_net"))
    assert "Backbones Excitation Backprop walks: vgg16, alexnet, resnet18" in str(err.value)
    assert "gelu_net," not in str(err.value) and not (tmp_path / "run").exists()


def test_missing_and_corrupt_images_are_skipped_and_listed(tmp_path):
    root = tmp_path / "ava"
    write_ava(root, n=20, n_test=2)
    ids = sorted(p.stem for p in (root / "images").glob("*.jpg"))
    (root / "images" / f"{ids[0]}.jpg").unlink()                                  # missing
    (root / "images" / f"{ids[1]}.jpg").write_bytes(b"this is not a jpeg")       # not an image
    data = (root / "images" / f"{ids[2]}.jpg").read_bytes()
    (root / "images" / f"{ids[2]}.jpg").write_bytes(data[: len(data) // 2])      # truncated: header is fine
    result = train_stage1(config(root, tmp_path / "run", epochs=2, dataset_options={"val_size": 4}))
    assert result.epochs_completed == 2
    with open(tmp_path / "run" / "skipped_images.csv") as f:
        rows = {row["id"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(ids[:3])
    assert rows[ids[0]]["status"] == "missing"
    assert rows[ids[1]]["status"] == "not_an_image"
    assert rows[ids[2]]["status"] == "truncated"
    assert all(row["error"] for row in rows.values())


def _items(shapes):
    return [ImageItem(str(i), "", 0, 5.0, shape) for i, shape in enumerate(shapes)]


def test_batches_hold_one_shape_and_train_order_depends_on_seed_and_epoch_only():
    shapes = [(32, 24)] * 7 + [(24, 32)] * 5 + [(32, 16)] * 2
    items = _items(shapes)
    val = bucket_batches(items, 3, None)
    assert sorted(i for b in val for i in b) == list(range(len(items)))     # every item exactly once
    assert all(len({items[i].shape for i in b}) == 1 for b in val)
    # shapes in sorted order (24, 32) x5, (32, 16) x2, (32, 24) x7; each shape's remainder kept
    assert [len(b) for b in val] == [3, 2, 2, 3, 3, 1]

    epoch0 = train_epoch_batches(items, 3, seed=0, epoch=0, rank=0, world_size=1)
    assert epoch0 == train_epoch_batches(items, 3, seed=0, epoch=0, rank=0, world_size=1)
    assert epoch0 != train_epoch_batches(items, 3, seed=0, epoch=1, rank=0, world_size=1)
    assert all(len({items[i].shape for i in b}) == 1 for b in epoch0)
    assert sorted(i for b in epoch0 for i in b) == list(range(len(items)))

    # two ranks: same number of steps, disjoint halves of each global batch
    ranks = [train_epoch_batches(items, 4, seed=3, epoch=2, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    seen = [set(i for b in r for i in b) for r in ranks]
    assert not seen[0] & seen[1]
    # validation: dealt round-robin, every item once over the ranks
    dealt = [val_batches_for_rank(items, 3, r, 2) for r in range(2)]
    assert sorted(i for r in dealt for b in r for i in b) == list(range(len(items)))


def test_stage1_metrics_by_hand():
    logits = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    targets = torch.tensor([[1, 7.0], [0, 3.0], [0, 4.5], [0, 2.0]])
    metrics = stage1_metrics(logits, targets)
    assert metrics["accuracy"] == pytest.approx(0.75)           # third is predicted high, is low
    expected_loss = float(np.mean([math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1)),
                                   math.log(1 + math.exp(1)), math.log(1 + math.exp(-3))]))
    assert metrics["val_loss"] == pytest.approx(expected_loss, rel=1e-5)
    # P(high) ranks: 4, 2, 3, 1; mean-score ranks: 4, 2, 3, 1
    assert metrics["srcc"] == pytest.approx(1.0)
    assert metrics["mae"] is None and metrics["emd"] is None
    assert rankdata(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


@pytest.mark.slow
def test_stage1_resume_after_kill_matches_uninterrupted(ava, tmp_path):
    root, _ = ava
    train_stage1(config(root, tmp_path / "straight", epochs=3))

    class Kill(Exception):
        pass

    def hook(info):
        if (info.epoch, info.step) == (3, 2):
            raise Kill

    with pytest.raises(Kill):
        train_stage1(config(root, tmp_path / "killed", epochs=3), hooks=TrainHooks(after_step=hook))
    train_stage1(config(root, None, epochs=3, resume=str(tmp_path / "killed")))
    a = load_checkpoint(tmp_path / "straight" / "last.pt").state_dict
    b = load_checkpoint(tmp_path / "killed" / "last.pt").state_dict
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7, msg=key)


def test_header_probe_matches_the_decoded_view_for_rotated_and_large_jpegs(tmp_path):
    from PIL import Image

    from gpf.model.geometry import peripheral_size
    from gpf.train.stage1 import PeripheralViews, upright_size

    rng = np.random.default_rng(0)
    rotated = tmp_path / "rotated.jpg"                  # stored 120x60, EXIF 6: upright 60x120
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 255, (60, 120, 3), dtype=np.uint8)).save(rotated, exif=exif.tobytes())
    large = tmp_path / "large.jpg"                      # decoded reduced (JPEG draft) for a 32 px view
    Image.fromarray(rng.integers(0, 255, (900, 1600, 3), dtype=np.uint8)).save(large, quality=80)

    assert upright_size(str(rotated), None) == (60, 120)
    assert upright_size(str(large), None) == (1600, 900)
    items = []
    for path, (width, height) in ((rotated, (60, 120)), (large, (1600, 900))):
        view_w, view_h = peripheral_size(width, height, 32, 8, 8)
        items.append(ImageItem(path.stem, str(path), 0, 3.0, (view_h, view_w)))
    views = PeripheralViews(items, view_size=32, stride=8, min_side=8, max_pixels=None)
    for index, item in enumerate(items):
        _, tensor, error = views[index]
        assert error is None
        assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (3, *item.shape)
    assert items[0].shape == (32, 16) and items[1].shape == (16, 32)


@pytest.mark.parametrize("mode, shape", [("pad", (15, 32)), ("enlarge", (15, 60))])
def test_a_panorama_view_is_fitted_to_the_backbones_minimum_input(tmp_path, mode, shape):
    """A 5:1 photo's 32x8 view (short side rounded to 8) is below tiny_inception's minimum input 15: the probe
    and the decoded view both have the fitted shape (pad: 32x15; enlarge: 60x15, aspect kept)."""
    from gpf.model.backbones import get_spec
    from gpf.train.distributed import DistContext
    from gpf.train.stage1 import PeripheralViews, probe_images

    write_ava(tmp_path, n=8, n_test=2, sizes=((250, 50),))
    dataset = open_dataset("ava", tmp_path, val_size=2)
    spec = get_spec("tiny_inception")
    items, skipped = probe_images(dataset.split("train"), dataset, 32, 8, 1, None, DistContext(), threads=1,
                                  fit_spec=spec, fit=mode)
    assert not skipped and len(items) == 4 and {item.shape for item in items} == {shape}
    _, tensor, error = PeripheralViews(items, 32, 8, 1, None, fit_spec=spec, fit=mode)[0]
    assert error is None and tuple(tensor.shape) == (3, *shape)


def test_a_run_resumes_with_the_view_rule_it_started_with(tmp_path):
    """A stage-1 checkpoint written before gpf recorded the rule (tests/data/format1) resumes on views rounded to
    its backbone's stride and at least its minimum input; a recorded rule is kept; a new run takes today's."""
    from pathlib import Path

    from gpf.model.backbones import get_spec
    from gpf.model.geometry import ViewGeometry
    from gpf.train.stage1 import stage1_geometry

    old = load_checkpoint(Path(__file__).parent / "data" / "format1" / "stage1.pt")
    vgg = get_spec("vgg16")
    assert "view_round" not in old.model_config
    assert stage1_geometry(config(tmp_path, None, view_size=224), vgg, old) == ViewGeometry(224, 32, 32)
    old.model_config.update(view_round=8, view_min_side=1)
    assert stage1_geometry(config(tmp_path, None, view_size=224), vgg, old) == ViewGeometry(224, 8, 1)
    assert stage1_geometry(config(tmp_path, None, view_size=224), vgg, None) == ViewGeometry(224, 8, 1)

"""Checkpoint files: atomic writes, weights-only reads, payload checks, model rebuilding."""
from __future__ import annotations

import datetime
import hashlib
import os
from collections import OrderedDict

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from gpf.model import checkpoint as ckpt_module
from gpf.model.backbones import create_backbone
from gpf.model.checkpoint import (FORMAT_VERSION, AttentionBlock, Checkpoint, CheckpointError, attention_block,
                                  attention_model_from_checkpoint, load_checkpoint, model_from_checkpoint,
                                  save_checkpoint, stage1_checkpoint, stage2_checkpoint, state_dict_digest)
from gpf.model.gpf import GPFNet, PeripheralNet, imagenet_classifier

torch.set_num_threads(1)


def stage1_model(name="tiny"):
    return PeripheralNet(create_backbone(name), num_classes=2, hidden=4)


def stage2_model(name="small", variant="gpf"):
    return GPFNet(create_backbone(name), variant, 10, branch_width=6, fusion_width=5, gif_hidden=3)


def images(batch, height, width, seed=0):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_stage1_round_trip_gives_identical_outputs(tmp_path):
    model = stage1_model().eval()
    path = save_checkpoint(tmp_path / "run" / "stage1.pt",
                           stage1_checkpoint(model, view_size=64, threshold=5.0, scores=range(1, 11)))
    payload = load_checkpoint(path, expect="stage1")
    assert isinstance(payload, Checkpoint)
    assert payload.format == "gpf-stage1" and payload.format_version == FORMAT_VERSION and payload.kind == "stage1"
    config = payload.model_config
    assert config["backbone"] == "tiny" and config["hidden"] == 4 and config["view_size"] == 64
    assert config["threshold"] == 5.0 and config["scores"] == list(range(1, 11))
    assert payload.view_size == 64 and payload.threshold == 5.0 and payload.num_classes == 2
    assert payload.meta["gpf_version"] and payload.meta["created"]
    assert payload.attention is None and payload.digest == state_dict_digest(model.state_dict())
    rebuilt = model_from_checkpoint(path)
    assert type(rebuilt) is PeripheralNet and not rebuilt.training
    x = images(2, 16, 24)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_stage2_round_trip_with_embedded_attention_model(tmp_path):
    stage1 = stage1_model("small").eval()
    model = stage2_model().freeze_peripheral().eval()
    attention = attention_block(stage1, tau=0.7, eb_layer="features.layer1", contrastive=True, view_size=64)
    save_checkpoint(tmp_path / "stage2.pt", stage2_checkpoint(model, attention, view_size=64, threshold=5.0,
                                                          scores=list(range(1, 11))))
    payload = load_checkpoint(tmp_path / "stage2.pt", expect="stage2")
    assert payload.kind == "stage2" and payload.num_classes == 10
    assert payload.scores == tuple(float(s) for s in range(1, 11)) and payload.view_size == 64
    block = payload.attention
    assert isinstance(block, AttentionBlock)
    assert block.tau == 0.7 and block.eb_layer == "features.layer1" and block.contrastive is True
    assert block.view_size == 64 and block.stage1_digest == state_dict_digest(stage1.state_dict())
    rebuilt = model_from_checkpoint(payload)
    assert type(rebuilt) is GPFNet and rebuilt.variant == "gpf" and rebuilt.peripheral_frozen
    assert not any(p.requires_grad for p in rebuilt.peripheral.parameters())
    periph, fovea = images(2, 16, 24), images(2, 16, 16, seed=1)
    with torch.no_grad():
        assert torch.equal(rebuilt(periph, fovea), model(periph, fovea))
        attention_model = attention_model_from_checkpoint(payload)
        assert torch.equal(attention_model(periph), stage1(periph))
    # a stage-1 checkpoint is its own attention model
    save_checkpoint(tmp_path / "stage1.pt", stage1_checkpoint(stage1))
    with torch.no_grad():
        assert torch.equal(attention_model_from_checkpoint(tmp_path / "stage1.pt")(periph), stage1(periph))


def test_imagenet_classifier_as_the_attention_model(tmp_path):
    classifier = imagenet_classifier("tiny", weights="none").eval()
    save_checkpoint(tmp_path / "s2.pt", stage2_checkpoint(stage2_model("tiny"), attention_block(
        classifier, tau=0.7, eb_layer="features.pool2", contrastive=False, view_size=32)))
    rebuilt = attention_model_from_checkpoint(tmp_path / "s2.pt")
    x = images(1, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), classifier(x)) and rebuilt(x).shape == (1, 1000)


def test_tampered_embedded_stage1_weights_are_detected(tmp_path):
    attention = attention_block(stage1_model(), tau=0.7, eb_layer="features.pool2", contrastive=False,
                                view_size=32)
    attention.stage1_state_dict["features.conv1.weight"][0, 0, 0, 0] += 1.0
    payload = stage2_checkpoint(stage2_model("tiny"), attention)
    with pytest.raises(CheckpointError, match="digest"):
        attention_model_from_checkpoint(payload)


def test_wrong_kind_says_which_command_makes_which(tmp_path):
    save_checkpoint(tmp_path / "s2.pt", stage2_checkpoint(stage2_model("tiny"), attention_block(
        stage1_model(), tau=0.7, eb_layer="features.pool2", contrastive=False, view_size=32)))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "s2.pt", expect="stage1")
    message = str(err.value)
    assert "stage-2 checkpoint" in message and "`gpf train stage2`" in message
    assert "stage-1 checkpoint" in message and "`gpf train stage1`" in message
    with pytest.raises(ValueError, match="stage1, stage2"):
        load_checkpoint(tmp_path / "s2.pt", expect="stage3")


def test_pickled_object_is_refused_not_executed(tmp_path):
    payload = stage1_checkpoint(stage1_model())
    payload.meta["created"] = datetime.datetime(2024, 1, 1)
    torch.save(payload.to_dict(), tmp_path / "pickled.pt")  # bypassing save_checkpoint's check
    with pytest.raises(CheckpointError, match=r"holds pickled Python objects \(datetime.datetime\); gpf only "
                                              r"loads tensors and plain types"):
        load_checkpoint(tmp_path / "pickled.pt")


def test_save_refuses_non_plain_values_and_writes_nothing(tmp_path):
    payload = stage1_checkpoint(stage1_model())
    for bad, where in ((datetime.date(2024, 1, 1), "payload['meta']['created']"),
                       (np.float64(0.5), "payload['meta']['created']"),
                       (torch.__version__, "payload['meta']['created']")):  # a str subclass
        payload.meta["created"] = bad
        with pytest.raises(CheckpointError) as err:
            save_checkpoint(tmp_path / "x.pt", payload)
        assert where in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_plain_containers_survive_a_round_trip(tmp_path):
    payload = stage1_checkpoint(stage1_model())
    payload.extra["train_state"] = {"optimizer": {"state": {0: {"momentum_buffer": torch.ones(2)}},
                                            "param_groups": [{"lr": 0.01, "params": [0]}]},
                              "history": OrderedDict(epoch=(1, 2)), "size": torch.Size([3, 4]), "raw": b"\x00"}
    save_checkpoint(tmp_path / "c.pt", payload)
    loaded = load_checkpoint(tmp_path / "c.pt").extra["train_state"]
    assert loaded["optimizer"]["param_groups"][0]["lr"] == 0.01
    assert torch.equal(loaded["optimizer"]["state"][0]["momentum_buffer"], torch.ones(2))
    assert loaded["history"]["epoch"] == (1, 2) and loaded["size"] == (3, 4) and loaded["raw"] == b"\x00"


def test_atomic_save_keeps_the_old_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(path, stage1_checkpoint(stage1_model()))
    before = path.read_bytes()

    def failing_save(obj, handle, *args, **kwargs):
        handle.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, stage1_checkpoint(stage1_model()))
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "new.pt", stage1_checkpoint(stage1_model()))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_saved_file_respects_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = save_checkpoint(tmp_path / "m.pt", stage1_checkpoint(stage1_model()))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


def test_unreadable_and_foreign_files(tmp_path):
    save_checkpoint(tmp_path / "good.pt", stage1_checkpoint(stage1_model()))
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt is not a readable torch file"):
        load_checkpoint(tmp_path / "truncated.pt")
    torch.save(create_backbone("tiny").state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a gpf checkpoint.*weights=PATH"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    payload = torch.load(tmp_path / "good.pt", weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=rf"future.pt has format_version {FORMAT_VERSION + 1} .*reads "
                                              rf"format_version 1, 2, 3: upgrade gpf"):
        load_checkpoint(tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="takes a Checkpoint, got dict"):
        save_checkpoint(tmp_path / "dict.pt", payload)
    assert not (tmp_path / "dict.pt").exists()


def test_state_dict_that_does_not_fit_its_config_is_refused():
    payload = stage1_checkpoint(stage1_model())
    payload.model_config["hidden"] = 5
    with pytest.raises(CheckpointError, match="does not fit the model of its config"):
        model_from_checkpoint(payload)


def test_digest_reference_and_properties():
    tensor = torch.tensor([1.0, 2.0])
    # independent reference: the documented byte layout built by hand with hashlib
    expected = hashlib.sha256(b"w\0" + b"torch.float32(2,)\0" + np.array([1.0, 2.0], "<f4").tobytes()
                              + b"\0").hexdigest()
    assert state_dict_digest({"w": tensor}) == expected
    a = OrderedDict([("x", torch.arange(6).view(2, 3)), ("y", torch.ones(3))])
    b = OrderedDict([("y", torch.ones(3)), ("x", torch.arange(6).view(2, 3).clone())])
    assert state_dict_digest(a) == state_dict_digest(b)  # order of insertion does not matter
    assert state_dict_digest(a) != state_dict_digest({**a, "y": torch.tensor([1.0, 1.0, 1.0 + 1e-7])})
    assert state_dict_digest(a) != state_dict_digest({**a, "x": a["x"].view(3, 2)})     # shape counts
    assert state_dict_digest(a) != state_dict_digest({**a, "y": a["y"].double()})       # dtype counts
    assert state_dict_digest(a) != state_dict_digest({"z": a["x"], "y": a["y"]})        # names count
    assert state_dict_digest({"x": a["x"].t()}) == state_dict_digest({"x": a["x"].t().contiguous()})


# ----------------------------------------------------------------------------- format 3: two subnets

def _two_subnet_checkpoint(variant="gpf"):
    torch.manual_seed(0)
    stage1 = stage1_model("tiny").eval()
    model = GPFNet("timm:resnet10t", variant, 10, peripheral_backbone="tiny", branch_width=6, fusion_width=5)
    model.load_peripheral_from_stage1(stage1.state_dict())
    model.freeze_peripheral().eval()
    attention = attention_block(stage1, tau=0.7, eb_layer="features.pool2", contrastive=False, view_size=32)
    return model, stage2_checkpoint(model, attention, view_size=32, threshold=5.0, scores=list(range(1, 11)))


def test_format3_round_trip_rebuilds_both_subnets(tmp_path):
    model, checkpoint = _two_subnet_checkpoint()
    save_checkpoint(tmp_path / "two.pt", checkpoint)
    payload = load_checkpoint(tmp_path / "two.pt", expect="stage2")
    assert payload.format_version == FORMAT_VERSION == 3
    config = payload.model_config
    assert (config["backbone"], config["peripheral_backbone"]) == ("timm:resnet10t", "tiny")
    assert config["gif_hidden"] == [16, 128]                        # tiny's W1; C/4 of resnet10t's 512
    foveal = config["subnets"]["foveal"]
    assert foveal["provider"] == "timm" and foveal["channels"] == 512 and foveal["timm_version"] == timm.__version__
    rebuilt = model_from_checkpoint(payload)
    assert rebuilt.peripheral_spec.name == "tiny" and rebuilt.foveal_spec.name == "timm:resnet10t"
    periph, fovea = images(2, 32, 40), images(2, 32, 32, seed=1)
    with torch.no_grad():
        assert torch.equal(rebuilt(periph, fovea), model(periph, fovea))


def _as_format2(payload: dict) -> dict:
    """What gpf 0.2.0 wrote for a one-backbone model: no peripheral_backbone or subnets, one W1."""
    config = {k: v for k, v in payload["model_config"].items() if k not in ("peripheral_backbone", "subnets")}
    if config.get("gif_hidden") is not None:
        config["gif_hidden"] = config["gif_hidden"][0]
    return {**payload, "format_version": 2, "model_config": config}


@pytest.mark.parametrize("variant", ["gpf", "single"])
def test_format2_stage2_files_are_read_as_one_backbone_for_both_subnets(tmp_path, variant):
    model = stage2_model("small", variant).eval()
    attention = attention_block(stage1_model("small"), tau=0.7, eb_layer="features.layer1", contrastive=False,
                                view_size=64)
    payload = stage2_checkpoint(model, attention, view_size=64, threshold=5.0, scores=list(range(1, 11))).to_dict()
    torch.save(_as_format2(payload), tmp_path / "v2.pt")
    read = load_checkpoint(tmp_path / "v2.pt", expect="stage2")
    assert read.format_version == 2 and read.model_config["peripheral_backbone"] == "small"
    assert read.model_config["gif_hidden"] == ([3, 3] if variant == "gpf" else None)
    rebuilt = model_from_checkpoint(read)
    periph, fovea = images(2, 16, 24), images(2, 16, 16, seed=1)
    second = None if variant == "single" else fovea
    with torch.no_grad():
        assert torch.equal(rebuilt(periph, second), model(periph, second))
    save_checkpoint(tmp_path / "v3.pt", read)                       # rewritten: format 3, same model
    assert torch.load(tmp_path / "v3.pt", weights_only=True)["format_version"] == 3


def test_format1_fixture_is_read_with_one_backbone_for_both_subnets():
    read = load_checkpoint(Path(__file__).parent / "data" / "format1" / "stage2.pt", expect="stage2")
    assert read.format_version == 1
    assert read.model_config["peripheral_backbone"] == read.model_config["backbone"] == "tiny"
    rebuilt = model_from_checkpoint(read)
    assert rebuilt.peripheral_spec.name == rebuilt.foveal_spec.name == "tiny"
    assert rebuilt.gif_hidden == tuple(read.model_config["gif_hidden"])


def test_a_subnet_that_this_installation_builds_otherwise_is_refused(tmp_path):
    from gpf.model.gpf import ModelError

    _, checkpoint = _two_subnet_checkpoint("pf")
    checkpoint.model_config["subnets"]["foveal"].update(channels=640, timm_version="0.0.1")
    save_checkpoint(tmp_path / "other.pt", checkpoint)
    with pytest.raises(ModelError, match=r"foveal subnet timm:resnet10t was saved as C = 640 \(here 512\).*"
                                         r"install timm==0.0.1"):
        model_from_checkpoint(tmp_path / "other.pt")

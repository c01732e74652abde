"""Weights for backbones and classifiers (gpf.model.weights): a state dict from a PATH, torchvision
key maps, and ``weights='imagenet'`` from the torch hub cache.

Weights files are written by the tests themselves (torchvision models with random
init, compared numerically with torchvision's own forward), never downloaded:
the network is replaced by a stub that fails loudly.
"""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from gpf.model import backbones as bb
from gpf.model.backbones import IMAGENET_MEAN, IMAGENET_STD, create_backbone, normalize_images
from gpf.model.gpf import PeripheralNet, imagenet_classifier
from gpf.model.weights import WeightsError, fit_state_dict, imagenet_cache_path, rename_by_prefix

torch.set_num_threads(1)
#: The package's parent folder, for the fresh interpreters some tests start.
PYTHONPATH = os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])


# ----------------------------------------------------------------------------- weights from a PATH

def test_state_dict_saved_and_loaded_back_gives_identical_outputs(tmp_path):
    source = create_backbone("small").eval()
    x = torch.randn(2, 3, 24, 16)
    expected = source(x)
    variants = {
        "gpf.pt": source.state_dict(),                                      # features.* keys
        "bare.pt": source.features.state_dict(),                            # no prefix
        "ddp.pt": {f"module.{k}": v for k, v in source.state_dict().items()},  # DataParallel
        "wrapped.pt": {"state_dict": source.state_dict(), "epoch": 3},
    }
    for filename, state in variants.items():
        torch.save(state, tmp_path / filename)
        loaded = create_backbone("small", tmp_path / filename).eval()
        assert torch.equal(loaded(x), expected), filename
    assert not torch.equal(create_backbone("small").eval()(x), expected)  # random init differs


def test_torchvision_resnet18_state_dict_maps_to_our_layers(tmp_path):
    reference = torchvision.models.resnet18(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    classifier = imagenet_classifier("resnet18", tmp_path / "resnet18.pth").eval()
    backbone = create_backbone("resnet18", tmp_path / "resnet18.pth").eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        assert torch.allclose(classifier(x), reference(x), atol=1e-5)
        trunk = reference.layer4(reference.layer3(reference.layer2(reference.layer1(
            reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))
        assert torch.allclose(backbone(x), trunk, atol=1e-6)


def test_torchvision_vgg16_features_match_numerically(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    reference = make_layers(cfgs["D"]).eval()  # torchvision's vgg16().features
    torch.save({f"features.{k}": v for k, v in reference.state_dict().items()}, tmp_path / "vgg.pth")
    backbone = create_backbone("vgg16", tmp_path / "vgg.pth").eval()
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        assert torch.equal(backbone(x), reference(x))


@pytest.mark.parametrize("name, builder", [
    ("vgg16", torchvision.models.vgg16), ("alexnet", torchvision.models.alexnet),
    ("resnet18", torchvision.models.resnet18),
    ("resnet50", torchvision.models.resnet50),
    ("inception_v3", lambda: torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)),
])
def test_torchvision_key_maps_cover_every_key_with_right_shapes(name, builder):
    """Every torchvision key lands on one of ours with the same shape (on meta: no weights)."""
    with torch.device("meta"):
        state = builder().state_dict()
        classifier = imagenet_classifier(name, weights="none")
    fitted = fit_state_dict(classifier, state, keymap=bb.torchvision_keys(name))
    assert fitted.keys() == classifier.state_dict().keys()


@pytest.mark.slow
def test_inception_normalisation_reproduces_torchvision_transform_input(tmp_path):
    reference = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True,
                                                transform_input=True).eval()
    torch.save(reference.state_dict(), tmp_path / "inception.pth")
    ours = imagenet_classifier("inception_v3", tmp_path / "inception.pth").eval()
    pixels = torch.rand(1, 3, 80, 90)
    with torch.no_grad():
        expected = reference(normalize_images(pixels, IMAGENET_MEAN, IMAGENET_STD))
        got = ours(ours.normalize(pixels))
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_stage1_and_stage2_checkpoints_as_weights(tmp_path):
    from gpf.model.checkpoint import save_checkpoint, stage1_checkpoint, stage2_checkpoint, attention_block
    from gpf.model.gpf import GPFNet

    stage1 = PeripheralNet("tiny").eval()
    save_checkpoint(tmp_path / "s1.pt", stage1_checkpoint(stage1))
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(create_backbone("tiny", tmp_path / "s1.pt").eval()(x), stage1.features(x))
    stage2 = GPFNet("tiny", "gpf", 3, branch_width=4, fusion_width=4)
    save_checkpoint(tmp_path / "s2.pt", stage2_checkpoint(stage2, attention_block(
        stage1, tau=0.7, eb_layer="features.pool2", contrastive=False, view_size=32)))
    loaded = create_backbone("tiny", tmp_path / "s2.pt").eval()
    assert torch.equal(loaded(x), stage2.peripheral.eval()(x))


def test_state_dict_of_another_backbone_lists_missing_and_unexpected(tmp_path):
    torch.save(create_backbone("tiny").state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(WeightsError) as err:
        create_backbone("small", tmp_path / "tiny.pt")
    message = str(err.value)
    assert "missing keys" in message and "features.layer1.0.conv1.weight" in message
    assert "unexpected keys (12)" in message and "features.conv2.weight" in message
    assert str(tmp_path / "tiny.pt") in message


def test_state_dict_with_wrong_shapes_is_refused(tmp_path):
    state = create_backbone("tiny").state_dict()
    state["features.conv1.weight"] = torch.zeros(8, 3, 5, 5)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match=r"shape mismatches .*features.conv1.weight \[8, 3, 5, 5\]"):
        create_backbone("tiny", tmp_path / "bad.pt")


def test_pickled_objects_and_missing_files_are_refused(tmp_path):
    torch.save({"features.conv1.weight": torch.zeros(1), "when": datetime.datetime(2020, 1, 1)}, tmp_path / "p.pt")
    with pytest.raises(WeightsError, match="pickled Python objects"):
        create_backbone("tiny", tmp_path / "p.pt")
    with pytest.raises(WeightsError, match="neither 'none', 'imagenet' nor an existing file"):
        create_backbone("tiny", tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="not a readable torch file"):
        create_backbone("tiny", tmp_path / "junk.pt")


def test_rename_by_prefix_longest_match_and_drop():
    renamed = rename_by_prefix({"a.1.w": 1, "a.10.w": 2, "aux.w": 3, "other": 4},
                               {"a.1.": "x.", "a.10.": "y.", "aux.": None})
    assert renamed == {"x.w": 1, "y.w": 2, "other": 4}


# ----------------------------------------------------------------------------- weights='imagenet'

@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub cache and no network: any download attempt fails loudly."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    attempts = []

    def no_network(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return tmp_path / "hub", attempts


def test_imagenet_weights_found_in_hub_cache_without_network(hub_dir):
    hub, attempts = hub_dir
    reference = torchvision.models.resnet18(weights=None).eval()
    cached = hub / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_cache_path("ResNet18_Weights.IMAGENET1K_V1") == cached
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    classifier = imagenet_classifier("resnet18", "imagenet").eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.allclose(classifier(x), reference(x), atol=1e-5)
    assert attempts == []


def test_imagenet_weights_missing_offline_says_which_file_goes_where(hub_dir):
    hub, attempts = hub_dir
    with pytest.raises(WeightsError) as err:
        create_backbone("alexnet", "imagenet")
    message = str(err.value)
    assert str(hub / "checkpoints" / "alexnet-owt-7be5be79.pth") in message
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message
    assert attempts == ["https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"]
    assert not list((hub / "checkpoints").glob("*"))  # no partial download left behind
    with pytest.raises(WeightsError, match="not in the torch hub cache"):
        create_backbone("alexnet", "imagenet", download=False)
    assert len(attempts) == 1


def test_imagenet_weights_for_a_backbone_without_any(hub_dir):
    with pytest.raises(WeightsError, match="no ImageNet weights.*vgg16, alexnet, resnet18, inception_v3"):
        create_backbone("tiny", "imagenet")


# ----------------------------------------------------------------------------- timm backbones and safetensors

def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_timm_weights_files_pt_and_safetensors_load_bit_exactly(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    source = create_backbone("timm:resnet10t")
    state = source.features.state_dict()                                # timm's own key names
    torch.save(state, tmp_path / "resnet10t.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "resnet10t.safetensors"))
    with_classifier = timm.create_model("resnet10t", num_classes=1000)  # a full ImageNet-style file
    with_classifier.load_state_dict(state, strict=False)
    torch.save(with_classifier.state_dict(), tmp_path / "full.pt")
    for filename in ("resnet10t.pth", "resnet10t.safetensors", "full.pt"):
        loaded = create_backbone("timm:resnet10t", tmp_path / filename)
        assert _same_state(loaded.features.state_dict(), state), filename
    assert not _same_state(create_backbone("timm:resnet10t").features.state_dict(), state)   # random init differs


def test_timm_weights_of_another_model_are_refused_naming_the_keys(tmp_path):
    torch.save(timm.create_model("regnetx_002", num_classes=0).state_dict(), tmp_path / "regnet.pt")
    with pytest.raises(WeightsError, match=r"(?s)does not fit backbone 'timm:resnet10t'.*missing keys"):
        create_backbone("timm:resnet10t", tmp_path / "regnet.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="broken.safetensors is not a readable .safetensors file"):
        create_backbone("timm:resnet10t", tmp_path / "broken.safetensors")


def test_safetensors_weights_load_into_registered_backbones(tmp_path):
    from safetensors.torch import save_file

    source = create_backbone("small").eval()
    save_file(source.state_dict(), str(tmp_path / "small.safetensors"))
    loaded = create_backbone("small", tmp_path / "small.safetensors")
    assert _same_state(loaded.state_dict(), source.state_dict())


def test_timm_imagenet_weights_offline_with_an_empty_cache_name_the_repo_file_and_weights_path(tmp_path):
    """A fresh interpreter (huggingface_hub reads HF_HUB_OFFLINE when imported) with an empty hub cache."""
    code = ("from gpf.model.backbones import create_backbone\n"
            "from gpf.vocabulary import cli_text\n"
            "for download in (True, False):\n"
            "    try:\n"
            "        create_backbone('timm:resnet10t', 'imagenet', download=download)\n"
            "    except Exception as exc:\n"
            "        print(type(exc).__name__, '|', exc, '|', cli_text(str(exc), getattr(exc, 'param', None)))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": PYTHONPATH}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 2, run.stdout
    for line in lines:
        kind, message, cli_message = line.split(" | ")
        assert kind == "WeightsError"
        assert "timm/resnet10t.c3_in1k" in message and "model.safetensors" in message
        assert "weights=PATH" in message and "--weights PATH" in cli_message
        assert str(tmp_path / "hf") in message                      # where the hub cache is
    assert "HF_HUB_OFFLINE is set" in lines[0] and "downloads are off" in lines[1]
    assert not list((tmp_path / "hf").rglob("*.safetensors"))

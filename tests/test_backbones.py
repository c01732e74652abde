"""Backbone registry, shapes and normalisation (gpf.model.backbones).

Big networks are checked on the ``meta`` device (shapes only, no weights
allocated) except where numbers must be compared. Loading weights into them
(gpf.model.weights): tests/test_weights.py.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torchvision.models.inception import (BasicConv2d, InceptionA, InceptionB, InceptionC, InceptionD,
                                          InceptionE)
from torchvision.models.resnet import BasicBlock, Bottleneck

from gpf.model import backbones as bb
from gpf.model.backbones import (IMAGENET_MEAN, IMAGENET_STD, create_backbone, get_spec, list_backbones,
                                 normalize_images, register_backbone)
from gpf.model.geometry import peripheral_size
from gpf.model.gpf import PeripheralNet

torch.set_num_threads(1)

PAPER = ("vgg16", "alexnet", "resnet18", "inception_v3")
SMALL = ("tiny", "small", "tiny_inception")
EXTRA = ("resnet50",)                 # registered, not in the paper
EB_LEAF_TYPES = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Dropout)
EB_BLOCK_TYPES = (BasicBlock, Bottleneck, BasicConv2d, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE)


def meta_backbone(name):
    with torch.device("meta"):
        return create_backbone(name)


def meta_out(module, height, width):
    return module.eval()(torch.empty(1, 3, height, width, device="meta"))


def runs(module, height, width) -> bool:
    try:
        out = meta_out(module, height, width)
    except RuntimeError:
        return False
    return out.shape[-1] > 0 and out.shape[-2] > 0


# ----------------------------------------------------------------------------- registry

def test_registry_has_paper_and_small_backbones():
    assert set(PAPER + EXTRA + SMALL) <= set(list_backbones())


@pytest.mark.parametrize("typo, expected", [("vgg61", "vgg16"), ("resnet", "resnet18"),
                                            ("inception", "inception_v3"), ("tinny", "tiny")])
def test_unknown_backbone_names_close_matches_and_all_names(typo, expected):
    with pytest.raises(ValueError) as err:
        create_backbone(typo)
    message = str(err.value)
    suggestions = message.split("Did you mean: ", 1)[1].split("?", 1)[0].split(", ")
    assert expected in suggestions
    for name in list_backbones():
        assert name in message


def test_unknown_backbone_without_close_match_still_lists_all():
    with pytest.raises(ValueError, match="Registered backbones: vgg16") as err:
        get_spec("zzzzzz")
    assert "Did you mean" not in str(err.value)


def test_paper_backbone_layer_names():
    vgg = [name for name, _ in meta_backbone("vgg16").features.named_children()]
    assert vgg[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert vgg[-3:] == ["conv5_3", "relu5_3", "pool5"] and len(vgg) == 13 * 2 + 5
    resnet = [name for name, _ in meta_backbone("resnet18").features.named_children()]
    assert resnet == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    inception = [name for name, _ in meta_backbone("inception_v3").features.named_children()]
    assert inception[0] == "Conv2d_1a_3x3" and inception[-1] == "Mixed_7c" and "AuxLogits" not in inception
    alexnet = [name for name, _ in meta_backbone("alexnet").features.named_children()]
    assert alexnet == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3",
                       "conv4", "relu4", "conv5", "relu5", "pool5"]


def _leaves_outside_blocks(module):
    for child in module.children():
        if isinstance(child, EB_BLOCK_TYPES):
            yield child
        elif isinstance(child, nn.Sequential):
            yield from _leaves_outside_blocks(child)
        else:
            yield child


@pytest.mark.parametrize("name", PAPER + EXTRA + SMALL)
def test_features_follow_the_attention_contract(name):
    backbone = meta_backbone(name)
    assert isinstance(backbone.features, nn.Sequential)
    assert all(not child_name.isdigit() for child_name, _ in backbone.features.named_children())
    for module in _leaves_outside_blocks(backbone.features):
        assert isinstance(module, EB_LEAF_TYPES + EB_BLOCK_TYPES), type(module)
    assert all(not m.inplace for m in backbone.modules() if isinstance(m, nn.ReLU))
    assert backbone.default_eb_layer in dict(PeripheralNet(meta_backbone(name)).named_modules())


@pytest.mark.parametrize("name", PAPER + EXTRA + SMALL)
def test_spec_channels_stride_and_min_input_match_the_network(name):
    spec = get_spec(name)
    features = meta_backbone(name).features
    out = meta_out(features, 224, 160)
    assert out.shape[1] == spec.channels
    # nominal stride: exact for padded nets, within 3 cells for valid-padded (Inception, AlexNet)
    for side in (8 * spec.stride, 11 * spec.stride):
        cells = meta_out(features, side, side).shape[-1]
        assert side // spec.stride - 3 <= cells <= side // spec.stride
    # min_input: the smallest side that runs, but never below the stride
    assert runs(features, spec.min_input, spec.min_input)
    if spec.min_input > spec.stride:
        assert not runs(features, spec.min_input - 1, spec.min_input - 1)
    assert runs(features, spec.min_input, 500) and runs(features, 500, spec.min_input)


@pytest.mark.parametrize("name", PAPER + EXTRA + SMALL)
def test_extreme_panorama_view_runs(name):
    """A 4000x50 photo: its peripheral view must still produce a feature map."""
    spec = get_spec(name)
    width, height = peripheral_size(4000, 50, 224, spec.stride, spec.min_input)
    assert width == 224 and height >= spec.min_input
    assert runs(meta_backbone(name).features, height, width)


def test_extreme_panorama_real_forward_vgg16_and_inception():
    """Same as above with real numbers on the two deepest paper backbones."""
    for name in ("vgg16", "inception_v3"):
        backbone = create_backbone(name).eval()
        width, height = peripheral_size(4000, 50, 224, backbone.stride, backbone.min_input)
        with torch.no_grad():
            out = backbone(torch.randn(1, 3, height, width))
        assert out.shape[1] == backbone.channels and out.shape[-1] >= 1 and torch.isfinite(out).all()


def test_small_backbones_use_resnet_and_inception_blocks():
    kinds = {name: {type(m) for m in create_backbone(name).modules()} for name in SMALL}
    assert {BasicBlock, Bottleneck} <= kinds["small"]
    assert {BasicConv2d, InceptionA} <= kinds["tiny_inception"]


def test_gif_hidden_of_paper_backbones_is_table_ii():
    assert {n: (get_spec(n).gif_hidden, get_spec(n).channels) for n in PAPER} == {
        "alexnet": (128, 256), "vgg16": (256, 512), "inception_v3": (512, 2048), "resnet18": (64, 512)}
    # ResNet-50 is not in Table II: W1 = 512 for C = 2048, as for InceptionNet
    assert (get_spec("resnet50").gif_hidden, get_spec("resnet50").channels) == (512, 2048)


def test_resnet50_is_torchvision_resnet50_under_its_names():
    import torchvision

    resnet = [name for name, _ in meta_backbone("resnet50").features.named_children()]
    assert resnet == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    assert {type(block) for block in meta_backbone("resnet50").features.layer3} == {Bottleneck}
    assert get_spec("resnet50").default_eb_layer == "features.layer2" and get_spec("resnet50").stride == 32
    with torch.device("meta"):
        reference = torchvision.models.resnet50(weights=None)
    assert sum(p.numel() for p in meta_backbone("resnet50").parameters()) == \
        sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))


# ----------------------------------------------------------------------------- normalisation

def test_normalize_uint8_by_hand():
    image = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    image[0, :, 0, 0] = torch.tensor([255, 0, 51])
    out = create_backbone("tiny").normalize(image)
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225]
    assert out.dtype == torch.float32 and out.shape == (1, 3, 2, 2)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expected), atol=1e-6)
    float_out = normalize_images(image.float() / 255, IMAGENET_MEAN, IMAGENET_STD)
    assert torch.allclose(out, float_out, atol=1e-6)


def test_normalize_inception_maps_to_minus_one_one():
    image = torch.tensor([0, 255, 128], dtype=torch.uint8).view(3, 1, 1)
    out = get_spec("inception_v3").normalize(image)
    assert torch.allclose(out.flatten(), torch.tensor([-1.0, 1.0, 128 / 255 * 2 - 1]), atol=1e-6)


def test_normalize_list_and_bad_input():
    images = [torch.zeros(3, 4, 5, dtype=torch.uint8), torch.zeros(3, 6, 2, dtype=torch.uint8)]
    out = normalize_images(images, IMAGENET_MEAN, IMAGENET_STD)
    assert [tuple(t.shape) for t in out] == [(3, 4, 5), (3, 6, 2)]
    with pytest.raises(ValueError, match="RGB"):
        normalize_images(torch.zeros(1, 4, 5, 5), IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(TypeError, match="int32"):
        normalize_images(torch.zeros(3, 5, 5, dtype=torch.int32), IMAGENET_MEAN, IMAGENET_STD)


# ----------------------------------------------------------------------------- register_backbone

@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(bb, "_REGISTRY", copy.copy(bb._REGISTRY))


def _two_convs():
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU(), pool=nn.MaxPool2d(2)))


def test_register_custom_backbone(scratch_registry):
    spec = register_backbone("mine", _two_convs, channels=4, stride=2, min_input=2,
                             default_eb_layer="features.relu", gif_hidden=2)
    assert "mine" in list_backbones() and spec.channels == 4
    assert create_backbone("mine")(torch.zeros(1, 3, 6, 6)).shape == (1, 4, 3, 3)
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("mine", _two_convs, channels=4, stride=2, min_input=2,
                          default_eb_layer="features.relu", gif_hidden=2)


def test_register_rejects_bad_specs(scratch_registry):
    good = dict(channels=4, stride=2, min_input=2, default_eb_layer="features.relu", gif_hidden=2)
    with pytest.raises(ValueError, match="lower-case"):
        register_backbone("My-Net", _two_convs, **good)
    with pytest.raises(ValueError, match="min_input"):
        register_backbone("mine", _two_convs, **{**good, "min_input": 1})
    register_backbone("mine", _two_convs, **{**good, "default_eb_layer": "features.nope"})
    with pytest.raises(ValueError, match="features.relu"):
        create_backbone("mine")


# ----------------------------------------------------------------------------- gpf models

def test_models_command_lists_backbones_and_parameter_counts():
    from gpf.cli.models import models

    result = CliRunner().invoke(models, ["--backbone", "tiny", "--backbone", "small"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["backbone", "C", "stride"]
    assert lines[1].split()[:6] == ["tiny", "32", "8", "8", "features.pool2", "[16,32]"]
    bad = CliRunner().invoke(models, ["--backbone", "vgg61"])
    assert bad.exit_code != 0 and "vgg16" in bad.output

"""GPF-CNN, its GIF module and the Table I baselines.

The paper-size networks run with narrow FC layers (the widths are constructor
options) and inputs at their minimum size; Table II sizes are checked on the
``meta`` device without allocating weights.
"""
from __future__ import annotations

import copy
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpf.errors import OptionError
from gpf.model.backbones import IMAGENET_MEAN, IMAGENET_STD, create_backbone, get_spec, list_backbones
from gpf.model.checkpoint import stage1_checkpoint
from gpf.model.gpf import (VARIANTS, GatedInformationFusion, GPFNet, ModelError, PeripheralNet, build_model,
                           forward_bucketed, global_average_pool, imagenet_classifier)
from gpf.model.weights import WeightsError

torch.set_num_threads(1)

PAPER = ("vgg16", "alexnet", "resnet18", "inception_v3")
TABLE_II = {"alexnet": (128, 256), "vgg16": (256, 512), "inception_v3": (512, 2048), "resnet18": (64, 512)}
HEAD_TYPES = (nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout)


@lru_cache(maxsize=None)
def _cached_backbone(name):
    return create_backbone(name)


def fresh_backbone(name):
    """A private copy of a once-built backbone (big ones take a while to initialise)."""
    return copy.deepcopy(_cached_backbone(name))


def small_gpf(name="tiny", variant="gpf", num_classes=5, **kwargs):
    options = dict(branch_width=8, fusion_width=12, dropout=0.0)
    options.update(kwargs)
    return GPFNet(fresh_backbone(name), variant, num_classes, **options)


def images(batch, height, width, seed=0):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- every backbone x variant

def _backbone_variant_cases():
    """Every backbone x network: one variant per architecture (single-periph and single-frozen build
    single's network, random-frozen random's: they differ in data and training only); the
    paper-size nets' random/pf cases (the same network as each other) are marked slow."""
    for name in list_backbones():
        for variant in ("single", "random", "pf", "gpf"):
            slow = name in PAPER + ("resnet50",) and variant in ("random", "pf")
            yield pytest.param(name, variant, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("name, variant", list(_backbone_variant_cases()))
def test_forward_backward_every_backbone_and_variant(name, variant):
    spec = get_spec(name)
    model = small_gpf(name, variant, num_classes=3).train()
    side = spec.min_input
    periph = images(2, side, side + spec.stride)  # non-square peripheral view
    fovea = None if variant == "single" else images(2, side, side, seed=1)
    logits = model(periph, fovea)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    # the last layer always sees a non-zero gradient; the fovea column exists iff the variant needs it
    assert model.classifier.weight.grad.abs().sum() > 0
    assert (model.foveal is None) == (variant == "single")
    assert (model.gif is None) == (variant != "gpf")


# ----------------------------------------------------------------------------- Table II

@pytest.mark.parametrize("name", PAPER)
def test_gif_and_head_sizes_are_table_ii(name):
    w1, channels = TABLE_II[name]
    with torch.device("meta"):
        model = GPFNet(name, "gpf", num_classes=10)
    for bottleneck in (model.gif.excite_peripheral, model.gif.excite_foveal):  # F^1_ex, F^2_ex
        assert (bottleneck.reduce.in_features, bottleneck.reduce.out_features) == (2 * channels, w1)
        assert (bottleneck.expand.in_features, bottleneck.expand.out_features) == (w1, channels)
    for branch in (model.peripheral_fc, model.foveal_fc):  # F^1_c, F^2_c
        assert (branch.fc.in_features, branch.fc.out_features) == (channels, 2048)
    assert (model.fusion.fc.in_features, model.fusion.fc.out_features) == (4096, 4096)  # FC
    assert (model.classifier.in_features, model.classifier.out_features) == (4096, 10)


def test_same_head_widths_for_all_variants():
    with torch.device("meta"):
        models = {v: GPFNet("vgg16", v, num_classes=7) for v in VARIANTS}
    assert models["single"].fusion.fc.in_features == 2048
    for variant in ("random", "random-frozen", "pf", "gpf"):
        assert models[variant].fusion.fc.in_features == 4096
    assert {m.classifier.out_features for m in models.values()} == {7}
    assert models["random-frozen"].fovea_source == "random" and models["pf"].fovea_source == "attention"
    assert models["random"].fovea_source == "patch" and models["single"].first_view == "warp"


# ----------------------------------------------------------------------------- GIF equations

def test_gif_gates_follow_equations_5_to_7_by_hand():
    torch.manual_seed(0)
    gif = GatedInformationFusion(channels=4, hidden=3)
    p, f = torch.randn(2, 4), torch.randn(2, 4)
    z = torch.cat([p, f], dim=1)                                                  # Eq. 5 (pooled)

    def excite(block):                                                             # Eq. 6
        hidden = torch.clamp(z @ block.reduce.weight.T + block.reduce.bias, min=0)
        return hidden @ block.expand.weight.T + block.expand.bias

    o1 = 1 / (1 + torch.exp(-excite(gif.excite_peripheral)))                      # Eq. 7
    o2 = 1 / (1 + torch.exp(-excite(gif.excite_foveal)))
    gated_p, gated_f = gif(p, f)
    assert torch.allclose(gated_p, p * o1, atol=1e-6) and torch.allclose(gated_f, f * o2, atol=1e-6)
    assert (o1 > 0).all() and (o1 < 1).all()


def test_gating_then_pooling_equals_pooling_then_gating():
    """Why GIF can work on pooled descriptors: channel-wise gates commute with average pooling."""
    feature_map = torch.randn(3, 5, 4, 6)
    gates = torch.rand(3, 5)
    pooled_after = global_average_pool(feature_map * gates[:, :, None, None])
    assert torch.allclose(pooled_after, global_average_pool(feature_map) * gates, atol=1e-6)
    assert torch.allclose(global_average_pool(feature_map), feature_map.mean(dim=(2, 3)))


def test_gpf_logits_equal_a_hand_composition():
    model = small_gpf("tiny", "gpf").eval()
    periph, fovea = images(3, 16, 24), images(3, 16, 16, seed=1)
    with torch.no_grad():
        p = model.peripheral(periph).mean(dim=(2, 3))
        f = model.foveal(fovea).mean(dim=(2, 3))
        z = torch.cat([p, f], 1)
        g = model.gif
        o1 = torch.sigmoid(F.linear(F.relu(F.linear(z, g.excite_peripheral.reduce.weight,
                                                    g.excite_peripheral.reduce.bias)),
                                    g.excite_peripheral.expand.weight, g.excite_peripheral.expand.bias))
        o2 = torch.sigmoid(F.linear(F.relu(F.linear(z, g.excite_foveal.reduce.weight, g.excite_foveal.reduce.bias)),
                                    g.excite_foveal.expand.weight, g.excite_foveal.expand.bias))
        h1 = F.relu(F.linear(p * o1, model.peripheral_fc.fc.weight, model.peripheral_fc.fc.bias))  # Eq. 8
        h2 = F.relu(F.linear(f * o2, model.foveal_fc.fc.weight, model.foveal_fc.fc.bias))
        h = F.relu(F.linear(torch.cat([h1, h2], 1), model.fusion.fc.weight, model.fusion.fc.bias))
        expected = F.linear(h, model.classifier.weight, model.classifier.bias)
        got = model(periph, fovea)
        assert torch.allclose(got, expected, atol=1e-5)
        distribution = model.predict_distribution(periph, fovea)
    assert torch.allclose(distribution, torch.softmax(expected, 1), atol=1e-6)
    assert torch.allclose(distribution.sum(1), torch.ones(3))


def test_pf_is_gpf_without_gates():
    gpf = small_gpf("tiny", "gpf").eval()
    pf = small_gpf("tiny", "pf").eval()
    pf.load_state_dict({k: v for k, v in gpf.state_dict().items() if not k.startswith("gif.")})
    nn.init.zeros_(gpf.gif.excite_peripheral.expand.weight)
    nn.init.zeros_(gpf.gif.excite_foveal.expand.weight)
    big = 30.0  # sigmoid(30) == 1 in float32: gates fully open
    nn.init.constant_(gpf.gif.excite_peripheral.expand.bias, big)
    nn.init.constant_(gpf.gif.excite_foveal.expand.bias, big)
    periph, fovea = images(2, 16, 16), images(2, 16, 16, seed=3)
    with torch.no_grad():
        assert torch.allclose(gpf(periph, fovea), pf(periph, fovea), atol=1e-6)


# ----------------------------------------------------------------------------- frozen peripheral

def test_frozen_peripheral_gets_no_grad_and_keeps_bn_statistics():
    model = small_gpf("small", "gpf").freeze_peripheral()
    model.train()
    assert not model.peripheral.training and model.foveal.training
    periph_buffers = {k: v.clone() for k, v in model.peripheral.state_dict().items()}
    foveal_buffers = {k: v.clone() for k, v in model.foveal.state_dict().items() if "running_mean" in k}
    logits = model(images(4, 16, 24), images(4, 16, 16, seed=1))
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is None for p in model.peripheral.parameters())
    for module in (model.foveal, model.gif, model.peripheral_fc, model.foveal_fc, model.fusion):
        assert all(p.grad is not None for p in module.parameters())
    assert all(torch.equal(v, periph_buffers[k]) for k, v in model.peripheral.state_dict().items())
    assert any(not torch.equal(model.foveal.state_dict()[k], v) for k, v in foveal_buffers.items())
    assert model.config()["peripheral_frozen"] is True
    model.unfreeze_peripheral()
    assert model.peripheral.training and all(p.requires_grad for p in model.peripheral.parameters())


# ----------------------------------------------------------------------------- bucketing

@pytest.mark.parametrize("name", ["tiny", "small", "tiny_inception"])
def test_mixed_shape_list_equals_per_image_forwards(name):
    spec = get_spec(name)
    model = small_gpf(name, "gpf").eval()
    s = spec.min_input
    shapes = [(s, s + 8), (s + 8, s), (s, s + 8), (s, s), (s + 8, s)]
    periph = [images(1, h, w, seed=i)[0] for i, (h, w) in enumerate(shapes)]
    fovea = images(len(shapes), s, s, seed=9)
    with torch.no_grad():
        batched = model(periph, fovea)
        single = torch.cat([model(p[None], fovea[i:i + 1]) for i, p in enumerate(periph)])
        descriptors = model.peripheral_descriptor(periph)
        assert torch.allclose(batched, single, atol=1e-5)
        assert torch.allclose(model(None, fovea, periph_feat=descriptors), batched, atol=1e-6)
        for i, p in enumerate(periph):
            assert torch.allclose(descriptors[i], model.peripheral_descriptor(p[None])[0], atol=1e-5)


def test_forward_bucketed_keeps_input_order_and_gradients():
    items = [torch.full((3, 1 + i % 2, 2), float(i), requires_grad=True) for i in range(5)]
    out = forward_bucketed(lambda batch: batch.flatten(1).sum(1, keepdim=True), items)
    expected = torch.tensor([[float(i) * 3 * (1 + i % 2) * 2] for i in range(5)])
    assert torch.equal(out, expected)
    out.sum().backward()
    assert all(torch.equal(t.grad, torch.ones_like(t)) for t in items)


# ----------------------------------------------------------------------------- bad input

def test_unknown_variant_lists_allowed_values():
    with pytest.raises(ValueError, match="unknown variant .*one of: single, single-periph, single-frozen, random, random-frozen, pf, gpf"):
        GPFNet(fresh_backbone("tiny"), "gated")
    with pytest.raises(ValueError, match="only when the backbone is given by name"):
        GPFNet(fresh_backbone("tiny"), "gpf", weights="imagenet")


def test_wrong_inputs_have_clear_errors():
    single, gpf = small_gpf("tiny", "single"), small_gpf("tiny", "gpf")
    periph = images(2, 16, 16)
    with pytest.raises(ValueError, match="takes no foveal view"):
        single(periph, periph)
    with pytest.raises(ValueError, match="needs the foveal view"):
        gpf(periph)
    with pytest.raises(TypeError, match="normalize"):
        gpf((periph * 50).clamp(0, 255).to(torch.uint8), periph)
    with pytest.raises(ValueError, match="minimum input side 8"):
        gpf(images(2, 4, 16), periph)
    with pytest.raises(ValueError, match=r"periph_feat must be \[B, 32\]"):
        gpf(None, periph, periph_feat=torch.zeros(2, 31))
    with pytest.raises(ValueError, match="batch sizes differ"):
        gpf(periph, images(3, 16, 16))


# ----------------------------------------------------------------------------- stage 1 models

def test_peripheral_net_has_the_attention_shape():
    model = PeripheralNet(fresh_backbone("tiny")).eval()
    assert all(isinstance(m, HEAD_TYPES) for m in model.head.children())
    assert model.spec.default_eb_layer in dict(model.named_modules())
    x = images(2, 16, 24)
    with torch.no_grad():
        assert torch.equal(model(x), model.head(model.features(x)))
        assert model(x).shape == (2, 2)
    hidden = PeripheralNet(fresh_backbone("tiny"), num_classes=3, hidden=6)
    assert [type(m) for m in hidden.head.children()] == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear,
                                                         nn.ReLU, nn.Dropout, nn.Linear]
    assert hidden.config() == {"model": "peripheral", "backbone": "tiny", "num_classes": 3,
                               "hidden": 6, "dropout": 0.5}


@pytest.mark.parametrize("name, head", [
    ("vgg16", ["pool", "flatten", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]),
    ("alexnet", ["pool", "flatten", "drop6", "fc6", "relu6", "drop7", "fc7", "relu7", "fc8"]),
    ("resnet18", ["pool", "flatten", "fc"]), ("inception_v3", ["pool", "flatten", "dropout", "fc"]),
])
def test_imagenet_classifier_heads(name, head):
    with torch.device("meta"):
        model = imagenet_classifier(name, weights="none")
        logits = model.eval()(torch.empty(1, 3, 224, 224))
    assert [n for n, _ in model.head.named_children()] == head
    assert all(isinstance(m, HEAD_TYPES) for m in model.head.children())
    assert logits.shape == (1, 1000) and model.num_classes == 1000


def test_imagenet_classifier_of_a_small_backbone():
    assert imagenet_classifier("tiny", weights="none")(images(1, 16, 16)).shape == (1, 1000)
    with pytest.raises(WeightsError, match="no ImageNet weights"):
        imagenet_classifier("tiny", weights="imagenet")


def test_load_peripheral_from_stage1():
    stage1 = PeripheralNet(create_backbone("small"))  # weights differ from the cached copy's
    model = small_gpf("small", "gpf")
    model.load_peripheral_from_stage1(stage1_checkpoint(stage1, view_size=64))
    assert all(torch.equal(a, b) for a, b in zip(model.peripheral.state_dict().values(),
                                                 stage1.features.state_dict().values()))
    other = small_gpf("small", "gpf")
    other.load_peripheral_from_stage1(stage1.state_dict())
    assert torch.equal(other.peripheral.conv1.weight, stage1.features.conv1.weight)
    assert not torch.equal(other.foveal.conv1.weight, stage1.features.conv1.weight)
    with pytest.raises(ValueError, match="uses backbone 'tiny'"):
        model.load_peripheral_from_stage1(stage1_checkpoint(PeripheralNet(fresh_backbone("tiny"))))


# ----------------------------------------------------------------------------- two different subnets

def test_gif_with_two_widths_sizes_each_bottleneck_from_its_own_branch():
    with torch.device("meta"):
        model = GPFNet("inception_v3", "gpf", 10, peripheral_backbone="vgg16")     # C_f 2048, C_p 512
        both_paper = GPFNet("vgg16", "gpf", 10, peripheral_backbone="vgg16")
        widened = GPFNet("inception_v3", "gpf", 10, peripheral_backbone="vgg16", gif_hidden=(32, 48))
    assert (model.peripheral_spec.name, model.spec.name) == ("vgg16", "inception_v3")
    gif = model.gif
    assert (gif.excite_peripheral.reduce.in_features, gif.excite_peripheral.reduce.out_features) == (2560, 256)
    assert (gif.excite_peripheral.expand.in_features, gif.excite_peripheral.expand.out_features) == (256, 512)
    assert (gif.excite_foveal.reduce.in_features, gif.excite_foveal.reduce.out_features) == (2560, 512)
    assert (gif.excite_foveal.expand.in_features, gif.excite_foveal.expand.out_features) == (512, 2048)
    assert model.peripheral_fc.fc.in_features == 512 and model.foveal_fc.fc.in_features == 2048
    assert both_paper.gif_hidden == (256, 256) and model.gif_hidden == (256, 512)         # Table II each
    assert (widened.gif.excite_peripheral.reduce.out_features, widened.gif.excite_foveal.reduce.out_features) == (32, 48)
    with pytest.raises(OptionError, match="gif_hidden must be a positive int or a .peripheral, foveal. pair"):
        GPFNet("tiny", "gpf", 3, peripheral_backbone="small", gif_hidden=(4, 0))


def test_gif_gates_of_two_widths_follow_equations_5_to_7_by_hand():
    torch.manual_seed(0)
    gif = GatedInformationFusion(channels=(3, 5), hidden=(2, 4))
    p, f = torch.randn(2, 3), torch.randn(2, 5)
    z = torch.cat([p, f], dim=1)                                                 # Eq. 5: C_p + C_f values
    o1 = torch.sigmoid(F.linear(F.relu(F.linear(z, gif.excite_peripheral.reduce.weight,
                                                gif.excite_peripheral.reduce.bias)),
                                gif.excite_peripheral.expand.weight, gif.excite_peripheral.expand.bias))
    o2 = torch.sigmoid(F.linear(F.relu(F.linear(z, gif.excite_foveal.reduce.weight, gif.excite_foveal.reduce.bias)),
                                gif.excite_foveal.expand.weight, gif.excite_foveal.expand.bias))
    gated_p, gated_f = gif(p, f)
    assert torch.allclose(gated_p, p * o1, atol=1e-6) and torch.allclose(gated_f, f * o2, atol=1e-6)


def test_two_subnets_run_each_on_its_own_view_and_normalisation():
    torch.manual_seed(0)
    model = GPFNet("small", "gpf", 4, peripheral_backbone="tiny_inception", branch_width=8, fusion_width=8,
                   dropout=0.0).eval()
    periph, fovea = torch.randint(0, 256, (2, 3, 16, 24), dtype=torch.uint8), torch.randint(0, 256, (2, 3, 16, 16),
                                                                                          dtype=torch.uint8)
    x_p, x_f = model.normalize_peripheral(periph), model.normalize_foveal(fovea)
    assert torch.allclose(x_p, periph / 127.5 - 1, atol=1e-6)                    # Inception: mean = std = 0.5
    with torch.no_grad():
        p = model.peripheral(x_p).mean(dim=(2, 3))
        f = model.foveal(x_f).mean(dim=(2, 3))
        assert p.shape == (2, 240) and f.shape == (2, 32)
        assert torch.allclose(model(x_p, x_f), model(periph_feat=p, fovea=x_f), atol=1e-6)
        with pytest.raises(ValueError, match=r"periph_feat must be \[B, 240\]"):
            model(periph_feat=f, fovea=x_f)
    with pytest.raises(ModelError, match="normalize_peripheral"):
        model.normalize(periph)


def test_single_has_one_column_and_refuses_another_peripheral():
    model = GPFNet("small", "single", 3, peripheral_backbone="small", branch_width=4, fusion_width=4)
    assert model.foveal is None and model.peripheral_spec.name == "small" and model.gif_hidden is None
    with pytest.raises(OptionError, match="'single' has one column"):
        GPFNet("small", "single", 3, peripheral_backbone="tiny")


def test_config_records_both_subnets_and_rebuilds_them():
    torch.manual_seed(0)
    model = GPFNet("small", "pf", 4, peripheral_backbone="tiny", branch_width=8, fusion_width=8).eval()
    config = model.config()
    assert config["backbone"] == "small" and config["peripheral_backbone"] == "tiny"
    assert config["gif_hidden"] == [16, 8]
    assert config["subnets"]["peripheral"] == {"backbone": "tiny", "provider": "gpf", "channels": 32, "min_input": 8,
                                               "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    rebuilt = build_model(config)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    tampered = {**config, "subnets": {**config["subnets"],
                                      "foveal": {**config["subnets"]["foveal"], "mean": [0.5, 0.5, 0.5]}}}
    with pytest.raises(ModelError, match=r"foveal subnet small was saved as mean \[0.5, 0.5, 0.5\]"):
        build_model(tampered)

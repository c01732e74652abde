"""Excitation Backprop on residual networks: torchvision ResNet-50 and timm's ResNet / RegNetX.

gpf's EB (gpf.model.attention with the timm rules of gpf.model.eb_timm) is
compared with the float64 NumPy reference of tests/helpers/eb_reference.py,
written from Eq. 2-3 and the libraries' forward code (im2col convolutions,
explicit pooling windows, batch norm folded in float64; the residual sum one
linear layer over [h, x]). Networks have random weights and random eval-mode
batch-norm statistics (gamma of both signs, so the residual branch and the
shortcut both carry probability) and small inputs. Then properties that must
hold (non-negative maps, conservation), and the refusals: GELU, LayerNorm,
gates and other timm families are named up front, before any computation.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import timm
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from gpf.model import attention
from gpf.model.attention import (EBUnsupportedError, check_eb_supported, eb_layer_names, excitation_backprop,
                                 marginal_winning_probability, resolve_eb_layer)
from gpf.model.backbones import Backbone, BackboneSpec
from gpf.model.eb_timm import eb_walkable_timm, timm_default_eb_layer, timm_eb_classifier
from gpf.model.gpf import PeripheralNet

from helpers.eb_reference import reference_logits, reference_mwp, reference_network

torch.set_num_threads(1)


def randomize_bn(module: nn.Module, seed: int, nonpositive_shift: bool = False) -> None:
    """Random eval statistics for every batch norm (timm's BatchNormAct2d included); gamma of both
    signs. ``nonpositive_shift`` makes every folded bias <= 0, so no winning probability is lost."""
    gen = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            gamma = (torch.rand(n, generator=gen) + 0.5) * torch.where(torch.rand(n, generator=gen) < 0.3, -1.0, 1.0)
            mean = torch.randn(n, generator=gen) * 0.3
            beta = torch.randn(n, generator=gen) * 0.1
            if nonpositive_shift:     # small: activations of a deep random net die out under larger ones
                mean, beta = 0.1 * mean.abs() * gamma.sign(), -0.1 * beta.abs()
            bn.weight.data.copy_(gamma)
            bn.bias.data.copy_(beta)
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    if nonpositive_shift:
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.data.zero_()


def make(name: str, seed: int = 0, nonpositive_shift: bool = False):
    """(the library's model, the model EB walks, the reference's reading of it, stage read-outs)."""
    torch.manual_seed(seed)
    if name == "torchvision_resnet50":
        model = PeripheralNet("resnet50", num_classes=3).eval()   # gpf's registered backbone
        walked, kind = model, "torchvision"
    else:
        model = timm.create_model(name, num_classes=3).eval()
        walked, kind = timm_eb_classifier(model), "timm_regnet" if name.startswith("regnet") else "timm_resnet"
    randomize_bn(model, seed + 1, nonpositive_shift)
    stages = ["features.s1", "features.s2", "features.s3"] if kind == "timm_regnet" else \
        ["features.layer1", "features.layer2", "features.layer3"]
    return model, walked, kind, stages


# resnet10t: deep stem, avg-pool shortcut (ResNet-D); resnet18: BasicBlock, conv shortcut;
# resnet26d: Bottleneck + deep stem + avg-pool shortcut; regnetx_002: ConvNormAct / BatchNormAct2d,
# grouped convs, blocks without a sum and with identity and conv shortcuts.
NETWORKS = {"torchvision_resnet50": 32, "resnet10t": 64, "resnet18": 32, "resnet26d": 40, "regnetx_002": 48}


# ----------------------------------------------------------------------------- against the reference

@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_eb_matches_the_float64_reference(name):
    model, walked, kind, stages = make(name)
    size = NETWORKS[name]
    images = torch.randn(2, 3, size, size + 8, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([1, 2])
    chain = reference_network(model, kind)
    with torch.no_grad():
        logits = model(images)
    for b in range(2):   # the reference reads the network as the library runs it
        np.testing.assert_allclose(reference_logits(chain, images[b]), logits[b].double().numpy(),
                                   rtol=1e-4, atol=1e-4 * logits.abs().max().item())
    for layer in (stages[0], stages[-1]):
        contrastive = layer == stages[-1]
        mwp = marginal_winning_probability(walked, images, targets, layer, contrastive=contrastive)
        for b in range(2):
            ref = reference_mwp(chain, images[b], int(targets[b]), layer, contrastive)
            # a contrastive value is a difference of the target's and the dual's: float32 keeps
            # digits relative to those, so that is the scale of the absolute tolerance
            scale = np.abs(reference_mwp(chain, images[b], int(targets[b]), layer)).max() if contrastive else \
                np.abs(ref).max()
            assert np.abs(ref).max() > 0
            np.testing.assert_allclose(mwp[b].double().numpy(), ref, rtol=1e-4, atol=1e-5 * scale,
                                       err_msg=f"{name} {layer} contrastive={contrastive}")


def test_the_reference_splits_the_sum_between_branch_and_shortcut():
    """The check above is not trivial: at a block's input both the residual branch and the shortcut
    carry a share of the output's probability, and negative gammas make folded weights change sign."""
    model, walked, _, _ = make("resnet18")
    images = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    block = walked.features.layer2[0]       # conv shortcut
    trace = attention._forward(walked, images, "features.layer1")
    node = next(n for n in trace.nodes if len(getattr(n, "operators", ())) == 2)
    branch, shortcut = (share.sum().item() for share in node.backward(torch.ones_like(node.output.tensor)))
    assert min(branch, shortcut) > 0.1 * (branch + shortcut)
    assert (block.bn1.weight < 0).any() and (block.bn1.weight > 0).any()


# ----------------------------------------------------------------------------- properties

@pytest.mark.parametrize("name", ["resnet10t", "regnetx_002"])
def test_maps_are_non_negative_and_mass_is_conserved(name):
    """Folded biases <= 0: every active unit has W+ a > 0, so each stage holds the whole mass
    (1 for the target, 1 - 1 contrastive); with positive biases mass only leaks on the way down."""
    model, walked, _, stages = make(name, seed=4, nonpositive_shift=True)
    images = torch.randn(3, 3, 48, 40, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        pooled = walked.head[:-1](walked.features(images))
        target = walked(images).argmax(1)
    row = walked.head[-1].weight[target]
    total = ((pooled * row.clamp_min(0)).sum(1) > 0).double().numpy()
    dual = ((pooled * (-row).clamp_min(0)).sum(1) > 0).double().numpy()
    assert total.sum() == 3
    for layer in eb_layer_names(walked):
        mwp = marginal_winning_probability(walked, images, None, layer)
        assert mwp.min() >= 0, layer
        np.testing.assert_allclose(mwp.sum((1, 2, 3)).numpy(), total, atol=1e-5, err_msg=layer)
        contrast = marginal_winning_probability(walked, images, None, layer, contrastive=True)
        np.testing.assert_allclose(contrast.sum((1, 2, 3)).numpy(), total - dual, atol=1e-5, err_msg=layer)
    maps = excitation_backprop(walked, images, contrastive=True)
    assert maps.min() >= 0 and maps.shape == (3, 6, 5)      # stride 8, the default read-out

    model, walked, _, stages = make(name, seed=6)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(-0.5, 1.0)
    totals = [marginal_winning_probability(walked, images, None, layer).sum((1, 2, 3)) for layer in reversed(stages)]
    for upper, lower in zip(totals, totals[1:]):
        assert torch.all(lower <= upper + 1e-5)
    assert torch.all(totals[0] <= 1 + 1e-5) and torch.all(totals[-1] > 0)


# ----------------------------------------------------------------------------- the timm wrapper

@pytest.mark.parametrize("name", ["resnet10t", "resnet18", "regnetx_002"])
def test_features_head_is_the_timm_model_sharing_its_modules(name):
    model = timm.create_model(name, num_classes=5).eval()
    randomize_bn(model, 0)
    features, head = eb_walkable_timm(model)
    images = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(head(features(images)), model(images))
        torch.testing.assert_close(features(images), model.forward_features(images))
    timm_params = {id(p) for p in model.parameters()}
    assert {id(p) for p in features.parameters()} | {id(p) for p in head.parameters()} == timm_params
    walked = timm_eb_classifier(model)
    trace = attention._forward(walked, images, resolve_eb_layer(walked))
    torch.testing.assert_close(trace.logits.tensor, model(images).detach(), rtol=1e-4, atol=1e-4)


def test_default_layer_is_the_stride_8_stage_and_timm_names_are_kept():
    resnet, regnet = timm.create_model("resnet10t"), timm.create_model("regnetx_002")
    assert timm_default_eb_layer(resnet) == "features.layer2" and timm_default_eb_layer(regnet) == "features.s2"
    names = eb_layer_names(timm_eb_classifier(regnet))
    assert names[:3] == ["features.stem", "features.s1.b1", "features.s1"] and "features.s4.b1" in names
    features, _ = eb_walkable_timm(resnet)      # timm's state-dict keys, under features.
    assert set(features.state_dict()) == {k for k in resnet.state_dict() if not k.startswith("fc.")}
    # the deep stem's last conv and bn1 are one folded layer, read at either name
    assert {"features.conv1.6", "features.conv1", "features.bn1"} <= set(eb_layer_names(timm_eb_classifier(resnet)))


def test_a_stage1_backbone_from_timm_features():
    """The hook for ``timm:NAME`` backbones: a Backbone whose features are eb_walkable_timm's trunk is a
    stage-1 model EB walks, with the map at the stride-8 stage."""
    model = timm.create_model("resnet10t")
    features, _ = eb_walkable_timm(model)
    spec = BackboneSpec(name="timm_resnet10t", channels=model.num_features, stride=32, min_input=32,
                        default_eb_layer=timm_default_eb_layer(model), gif_hidden=64)
    stage1 = PeripheralNet(Backbone(spec, features), num_classes=2).eval()
    maps = excitation_backprop(stage1, torch.randn(2, 3, 64, 96))
    assert maps.shape == (2, 8, 12) and maps.min() >= 0


# ----------------------------------------------------------------------------- refusals, up front

class FeaturesHead(nn.Module):
    def __init__(self, features, head):
        super().__init__()
        self.features, self.head = features, head

    def forward(self, x):
        return self.head(self.features(x))


def _net(*middle, channels=4):
    features = nn.Sequential(OrderedDict([("conv1", nn.Conv2d(3, channels, 3, padding=1)), ("relu1", nn.ReLU()),
                                          *middle, ("pool", nn.MaxPool2d(2))]))
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 2))
    return FeaturesHead(features, head).eval()


def test_gelu_network_is_refused_naming_the_module_and_why():
    model = _net(("conv2", nn.Conv2d(4, 4, 3, padding=1)), ("act", nn.GELU()))
    calls = (lambda: check_eb_supported(model), lambda: eb_layer_names(model),
             lambda: resolve_eb_layer(model, "pool"))
    for call in calls:
        with pytest.raises(EBUnsupportedError, match=r"'features.act' \(torch.nn.modules.activation.GELU\): "
                                                     r"a signed activation") as err:
            call()
        assert isinstance(err.value, NotImplementedError) and "EB needs ReLU" in str(err.value)


@pytest.mark.parametrize("norm", [nn.LayerNorm([4, 8, 8]), nn.GroupNorm(1, 4), timm.layers.LayerNorm2d(4)])
def test_layer_norm_is_refused_naming_the_module_and_why(norm):
    model = _net(("norm", norm))
    with pytest.raises(EBUnsupportedError, match=rf"'features.norm' \(.*{type(norm).__name__}\): it normalises "
                                                 r"each sample by that sample's own statistics"):
        check_eb_supported(model)


def test_the_first_module_in_forward_order_is_named_even_inside_a_block():
    block = BasicBlock(4, 4)
    block.bn2 = nn.LayerNorm([4, 8, 8])
    model = _net(("layer1", nn.Sequential(block)), ("act", nn.SiLU()))
    with pytest.raises(EBUnsupportedError,
                       match=r"'features.layer1.0.bn2' \(torch.nn.modules.normalization.LayerNorm\)"):
        check_eb_supported(model)


def test_refused_when_the_stage1_model_is_built_not_on_the_first_batch():
    from gpf.pipeline.attend import AttentionModel

    features = nn.Sequential(OrderedDict([("conv1", nn.Conv2d(3, 4, 3, padding=1)), ("act1", nn.GELU()),
                                          ("pool1", nn.MaxPool2d(2))]))
    spec = BackboneSpec(name="gelu_net", channels=4, stride=2, min_input=2, default_eb_layer="features.pool1",
                        gif_hidden=2)
    with pytest.raises(EBUnsupportedError, match=r"'features.act1'.*GELU"):
        PeripheralNet(Backbone(spec, features))
    classifier = FeaturesHead(features, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)))
    classifier.spec = spec
    with pytest.raises(EBUnsupportedError, match=r"'features.act1'.*GELU"):
        AttentionModel.from_model(classifier, device=torch.device("cpu"))


@pytest.mark.parametrize("name, path, why", [
    ("convnext_atto", r"'stem.1' \(timm.layers.norm.LayerNorm2d\)", "normalises each sample"),
    ("vit_tiny_patch16_224", r"'blocks.0.norm1' \(.*LayerNorm\)", "normalises each sample"),
    ("mobilenetv3_small_050", r"'bn1.act' \(.*Hardswish\)", "a signed activation"),
    ("regnety_002", r"'features.s1.b1.se' \(.*SEModule\)", "excitation gate"),
    ("seresnet18", r"'features.layer1.0.se' \(.*SEModule\)", "excitation gate"),
])
def test_other_timm_networks_are_refused_naming_the_first_module(name, path, why):
    model = timm.create_model(name, num_classes=2)
    with pytest.raises(EBUnsupportedError, match=path) as err:
        eb_walkable_timm(model)
    assert why in str(err.value)


def test_every_check_happens_before_any_computation(monkeypatch):
    """A refused network computes nothing: the walk is planned (and refused) before the first conv runs."""
    model = timm.create_model("regnetx_002", num_classes=2).eval()
    walked = timm_eb_classifier(model)
    walked.features.s3.b2.conv2.bn.act = nn.SiLU()
    calls = []
    conv2d = torch.nn.functional.conv2d
    monkeypatch.setattr(torch.nn.functional, "conv2d", lambda *a, **k: calls.append(1) or conv2d(*a, **k))
    with pytest.raises(EBUnsupportedError, match=r"'features.s3.b2.conv2.bn.act' \(.*SiLU\)"):
        excitation_backprop(walked, torch.randn(1, 3, 32, 32))
    assert calls == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_on_timm_networks():
    for name in ("resnet10t", "regnetx_002"):
        _, walked, _, stages = make(name)
        images = torch.randn(2, 3, 48, 64)
        expected = excitation_backprop(walked, images, 1, stages[0], contrastive=True)
        got = excitation_backprop(walked.cuda(), images.cuda(), 1, stages[0], contrastive=True)
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())

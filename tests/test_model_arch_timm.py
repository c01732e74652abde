"""timm backbones (gpf.model.arch_timm): ``timm:NAME`` specs, descriptors, input rules, listing.

Independent references: timm's own modules called by hand (the mean over a
ResNet's map, a DeiT's normalised class token, the mean over a Swin's NHWC
map), the widths ``timm.create_model`` reports, and sizes that run or fail on a
real (random-weight) forward. Weights: tests/test_weights.py; stage 2 with a
timm foveal subnet: tests/test_train_stage2.py.
"""
from __future__ import annotations

import pytest
import timm
import torch
from click.testing import CliRunner

from gpf.model.arch_timm import describe_timm, fit_input, gif_width, timm_facts
from gpf.model.attention import EBUnsupportedError
from gpf.model.backbones import BackboneError, UnknownBackboneError, build_imagenet_head, create_backbone, get_spec
from gpf.model.gpf import GPFNet, ModelError, PeripheralNet, check_images, imagenet_classifier

torch.set_num_threads(1)

#: The families the issue names, smallest member of each (random weights, CPU).
FAMILIES = ("resnet10t", "convnext_atto", "efficientnet_b0", "mobilenetv3_small_050", "regnetx_002",
            "deit_tiny_patch16_224")


def _build(arch: str):
    torch.manual_seed(0)
    return create_backbone(f"timm:{arch}").eval()


@pytest.mark.parametrize("arch", FAMILIES)
def test_each_family_gives_b_by_c_descriptors_of_the_listed_width(arch):
    backbone = _build(arch)
    spec = backbone.spec
    reference = timm.create_model(arch, num_classes=0)
    assert spec.channels == reference.head_hidden_size == describe_timm(arch)[0]["channels"]
    assert spec.gif_hidden == gif_width(spec.channels) and spec.is_timm
    assert (spec.mean, spec.std) == (tuple(reference.pretrained_cfg["mean"]), tuple(reference.pretrained_cfg["std"]))
    side = spec.min_input
    with torch.no_grad():
        for shape in ((side, side), (side, 2 * side + 8), (48, 40)):
            out = backbone.descriptor(torch.randn(2, 3, *shape))
            assert out.shape == (2, spec.channels) and torch.isfinite(out).all(), shape
    if side > 1:
        with pytest.raises(ModelError, match=f"minimum input side {side}"):
            check_images(torch.randn(1, 3, side - 1, 64), spec, "fovea")


@pytest.mark.parametrize("arch", ["resnet10t", "convnext_atto", "regnetx_002"])
def test_min_input_of_cnns_is_the_smallest_side_a_real_forward_takes(arch):
    """Below the stride a CNN still runs (padding keeps 1x1 maps); min_input is then the stride, as for the
    registered backbones; ConvNeXt's unpadded 2x2 downsamples need the full 32."""
    backbone = _build(arch)
    spec = backbone.spec
    assert spec.min_input == spec.stride == 32

    def runs(side):
        try:
            with torch.no_grad():
                backbone.features.forward_features(torch.randn(1, 3, side, side))
            return True
        except RuntimeError:
            return False

    assert runs(spec.min_input)
    assert runs(31) == (arch != "convnext_atto")


def test_descriptors_are_timms_own_pooling_not_a_mean_over_dims_2_3():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 48, 64)
    resnet = _build("resnet10t")
    deit = _build("deit_tiny_patch16_224")
    with torch.no_grad():
        assert torch.allclose(resnet.descriptor(x), resnet.features.forward_features(x).mean(dim=(2, 3)), atol=1e-5)
        tokens = deit.features.forward_features(x)                  # [B, 1 + h*w, C], normalised
        assert tokens.shape == (2, 1 + 3 * 4, 192)
        assert torch.allclose(deit.descriptor(x), tokens[:, 0], atol=1e-5)           # the class token
        assert not torch.allclose(deit.descriptor(x), tokens.mean(dim=1), atol=1e-3)


def test_swin_pools_its_nhwc_map_and_gets_sides_rounded_up_to_its_patch():
    swin = _build("swin_tiny_patch4_window7_224")
    spec = swin.spec
    assert spec.input_multiple == 4 and spec.fixed_input is None and spec.channels == 768
    x = torch.randn(1, 3, 34, 38)
    with torch.no_grad():
        fitted = fit_input(x, spec)
        assert fitted.shape[-2:] == (36, 40)
        nhwc = swin.features.forward_features(fitted)
        assert nhwc.shape[-1] == 768                                 # channels last
        assert torch.allclose(swin.descriptor(x), nhwc.mean(dim=(1, 2)), atol=1e-5)


def test_fixed_size_models_get_every_view_resized_and_take_any_side():
    spec = get_spec("timm:levit_128s")                               # LeViT: attention biases of a 14x14 grid
    assert spec.fixed_input == (224, 224) and spec.min_input == 1
    x = torch.rand(2, 3, 40, 90)
    fitted = fit_input(x, spec)
    assert fitted.shape == (2, 3, 224, 224)
    assert torch.allclose(fitted, torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear"))
    plain = get_spec("timm:resnet10t")
    assert fit_input(x, plain) is x


def test_vit_takes_any_view_through_timms_dynamic_size_and_its_own_mean_std():
    spec = get_spec("timm:vit_tiny_patch16_224")
    assert timm_facts("timm:vit_tiny_patch16_224").kwargs == (("dynamic_img_size", True), ("dynamic_img_pad", True))
    assert spec.mean == spec.std == (0.5, 0.5, 0.5) and spec.min_input == spec.stride == 16
    model = GPFNet("timm:vit_tiny_patch16_224", "gpf", 10, peripheral_backbone="tiny", branch_width=8, fusion_width=8)
    images = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    assert torch.allclose(model.normalize_foveal(images), torch.ones(1, 3, 32, 32))            # (1 - .5) / .5
    assert not torch.allclose(model.normalize_peripheral(images), torch.ones(1, 3, 32, 32))    # ImageNet's
    with pytest.raises(ModelError, match="normalize_peripheral.*normalize_foveal"):
        model.normalize(images)


def test_unknown_timm_names_get_close_matches_and_bad_tags_the_tags():
    with pytest.raises(UnknownBackboneError, match=r"unknown timm model 'convnext_atoo'.*timm:convnext_atto"):
        get_spec("timm:convnext_atoo")
    with pytest.raises(UnknownBackboneError, match=r"no pretrained tag 'nope'.*a1_in1k"):
        get_spec("timm:resnet18.nope")
    assert get_spec("timm:resnet18.a1_in1k").channels == 512
    with pytest.raises(UnknownBackboneError, match="or any timm model as timm:NAME"):
        get_spec("resnet34")


def test_only_timm_families_eb_walks_are_stage1_networks():
    assert get_spec("timm:resnet10t").default_eb_layer == "features.layer2"
    assert get_spec("timm:regnetx_002").default_eb_layer == "features.s2"
    assert get_spec("timm:convnext_atto").default_eb_layer == ""
    assert PeripheralNet("timm:resnet10t").spec.default_eb_layer == "features.layer2"
    with pytest.raises(EBUnsupportedError, match=r"'stem.1' \(timm.layers.norm.LayerNorm2d\)"):
        PeripheralNet("timm:convnext_atto")
    with pytest.raises(EBUnsupportedError, match="timm ConvNeXt"):
        imagenet_classifier("timm:convnext_atto", weights="none")
    with pytest.raises(BackboneError, match=r"imagenet_classifier\('timm:resnet10t'\)"):
        build_imagenet_head("timm:resnet10t")


def test_models_command_lists_timm_models_with_c_and_gif_widths():
    from gpf.cli.models import models

    result = CliRunner().invoke(models, ["--timm", "convnext_at*"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:] if line.startswith("timm:")}
    assert rows["timm:convnext_atto"][1:3] == ["320", "[80,320]"] and rows["timm:convnext_atto"][-2] == "-"
    assert all(name.startswith("timm:convnext_at") for name in rows)
    full = CliRunner().invoke(models, ["--backbone", "timm:regnetx_002", "--backbone", "vgg16"])
    assert full.exit_code == 0, full.output
    regnet = full.output.splitlines()[1].split()
    assert regnet[:6] == ["timm:regnetx_002", "368", "32", "32", "features.s2", "[96,368]"]
    resnets = CliRunner().invoke(models, ["--timm", "resnet10t"])
    assert "features.layer2" in resnets.output.splitlines()[1], resnets.output
    none = CliRunner().invoke(models, ["--timm", "no_such_model_*"])
    assert none.exit_code != 0 and "no timm model matches" in none.output

"""Small backbones for tests and CPU demos (no published weights).

They reuse the building blocks of the big ones so every code path that looks at
module types (attention, freezing, BN handling) is exercised in milliseconds:

* ``tiny``: VGG-like conv/bn/relu/pool x 3 (32 channels, stride 8).
* ``small``: ResNet-like stem + torchvision ``BasicBlock`` and ``Bottleneck``
  stages, with the same child names as ResNet-18 (32 channels, stride 8).
* ``tiny_inception``: Inception-v3-like stem + one torchvision ``InceptionA``
  (240 channels, nominal stride 8).
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .arch_resnet import relu_not_inplace

TINY_CHANNELS = 32
SMALL_CHANNELS = 32
TINY_INCEPTION_POOL_FEATURES = 16
# InceptionA concatenates 64 (1x1) + 64 (5x5) + 96 (double 3x3) + pool_features.
TINY_INCEPTION_CHANNELS = 64 + 64 + 96 + TINY_INCEPTION_POOL_FEATURES


def _kaiming(module: nn.Module) -> nn.Module:
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu")
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
    return module


def tiny_features() -> nn.Sequential:
    """conv{k}/bn{k}/relu{k}/pool{k} for widths 8, 16, 32 (3x3 convs, 2x2 pools)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = 3
    for k, width in enumerate((8, 16, TINY_CHANNELS), start=1):
        layers[f"conv{k}"] = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        layers[f"bn{k}"] = nn.BatchNorm2d(width)
        layers[f"relu{k}"] = nn.ReLU(inplace=False)
        layers[f"pool{k}"] = nn.MaxPool2d(2, 2)
        in_channels = width
    return _kaiming(nn.Sequential(layers))


def small_features() -> nn.Sequential:
    """ResNet-like: stride-2 stem conv, max-pool, BasicBlock, then BasicBlock(stride 2) + Bottleneck."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    downsample = nn.Sequential(nn.Conv2d(16, SMALL_CHANNELS, 1, stride=2, bias=False),
                               nn.BatchNorm2d(SMALL_CHANNELS))
    layers = OrderedDict([
        ("conv1", nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)),
        ("bn1", nn.BatchNorm2d(16)),
        ("relu", nn.ReLU(inplace=False)),
        ("maxpool", nn.MaxPool2d(2, 2)),
        ("layer1", nn.Sequential(BasicBlock(16, 16))),
        ("layer2", nn.Sequential(BasicBlock(16, SMALL_CHANNELS, stride=2, downsample=downsample),
                                 Bottleneck(SMALL_CHANNELS, SMALL_CHANNELS // Bottleneck.expansion))),
    ])
    return relu_not_inplace(_kaiming(nn.Sequential(layers)))


def tiny_inception_features() -> nn.Sequential:
    """Valid-padded stem (BasicConv2d, max-pool), one InceptionA, a final max-pool."""
    from torchvision.models.inception import BasicConv2d, InceptionA

    return _kaiming(nn.Sequential(OrderedDict([
        ("Conv2d_1a_3x3", BasicConv2d(3, 32, kernel_size=3, stride=2)),
        ("maxpool1", nn.MaxPool2d(kernel_size=3, stride=2)),
        ("Mixed_5b", InceptionA(32, pool_features=TINY_INCEPTION_POOL_FEATURES)),
        ("maxpool2", nn.MaxPool2d(kernel_size=3, stride=2)),
    ])))

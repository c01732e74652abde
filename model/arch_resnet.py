"""ResNet-18 (He et al.), the paper's "ResNet-16" column of Table II (512 channels), and ResNet-50.

The paper names a "ResNet-16" with a 512-channel last stage and W1 = 64; no
16-layer ResNet exists in torchvision or the ResNet paper, and ResNet-18 is the
smallest standard ResNet whose last stage has 512 channels, so we use it.
ResNet-50 (Bottleneck blocks, 2048 channels) is not in the paper; it is the
common stronger trunk, and Excitation Backprop walks it like ResNet-18.
``features`` holds torchvision's modules under torchvision's names (conv1, bn1,
relu, maxpool, layer1..layer4; each layer an ``nn.Sequential`` of ``BasicBlock``
or ``Bottleneck``), so its state-dict keys are torchvision's with a ``features.``
prefix.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from torch import nn

RESNET18_CHANNELS = 512
RESNET50_CHANNELS = 2048
_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def relu_not_inplace(module: nn.Module) -> nn.Module:
    """Switch every ``nn.ReLU`` inside ``module`` to ``inplace=False``.

    torchvision's blocks use in-place ReLUs; those break backward hooks on the
    block's output (used by attention code) and save little memory.
    """
    for sub in module.modules():
        if isinstance(sub, nn.ReLU):
            sub.inplace = False
    return module


def _trunk(build: Callable[[], nn.Module]) -> nn.Sequential:
    net = build()
    return relu_not_inplace(nn.Sequential(OrderedDict((name, getattr(net, name)) for name in _STAGES)))


def resnet18_features() -> nn.Sequential:
    """torchvision's ResNet-18 trunk (stride 32) with its own names and init."""
    from torchvision.models import resnet18

    return _trunk(lambda: resnet18(weights=None))


def resnet50_features() -> nn.Sequential:
    """torchvision's ResNet-50 trunk (stride 32, 2048 channels) with its own names and init."""
    from torchvision.models import resnet50

    return _trunk(lambda: resnet50(weights=None))


def resnet_imagenet_head(channels: int) -> Callable[[int], nn.Sequential]:
    """torchvision's ``avgpool`` + ``fc`` (global average pool, one Linear) for ``channels`` inputs."""
    def build(num_classes: int = 1000) -> nn.Sequential:
        return nn.Sequential(OrderedDict([("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten(1)),
                                          ("fc", nn.Linear(channels, num_classes))]))
    return build



def resnet_torchvision_keys() -> dict[str, str | None]:
    """Prefix map from torchvision ``resnet18()`` / ``resnet50()`` state-dict keys to ours."""
    keys: dict[str, str | None] = {f"{name}.": f"features.{name}." for name in _STAGES}
    keys["fc."] = "head.fc."
    return keys


"""Inception-v3 (Szegedy et al.), the paper's "InceptionNet" column (2048 channels).

``features`` holds torchvision's modules under torchvision's names
(Conv2d_1a_3x3 ... Mixed_7c, without the auxiliary classifier), so state-dict
keys are torchvision's with a ``features.`` prefix.

Input normalisation: torchvision's ImageNet weights for Inception-v3 were
converted from Google's, which expect pixels scaled to [-1, 1]; torchvision
bridges this with ``transform_input`` (an affine map applied inside
``forward``). We have no functional ops between children, so the backbone
normalises with mean = std = 0.5 instead, which is the same input those
weights see (see docs/models.md).
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

INCEPTION_V3_CHANNELS = 2048
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
_STAGES = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
           "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
           "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")


def inception_v3_features() -> nn.Sequential:
    """torchvision's Inception-v3 trunk (nominal stride 32, valid-padded stem)."""
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=False, init_weights=True)
    return nn.Sequential(OrderedDict((name, getattr(net, name)) for name in _STAGES))


def inception_v3_imagenet_head(num_classes: int = 1000) -> nn.Sequential:
    """torchvision's ``avgpool`` -> ``dropout`` -> ``fc`` (flatten moved before dropout)."""
    fc = nn.Linear(INCEPTION_V3_CHANNELS, num_classes)
    nn.init.trunc_normal_(fc.weight, mean=0.0, std=0.1, a=-2, b=2)
    return nn.Sequential(OrderedDict([("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten(1)),
                                      ("dropout", nn.Dropout(0.5)), ("fc", fc)]))


def inception_v3_torchvision_keys() -> dict[str, str | None]:
    """Prefix map from torchvision ``inception_v3()`` state-dict keys to ours.

    The auxiliary classifier (``AuxLogits``) is part of the published weights
    file but not of the model we build; its keys are dropped (mapped to None).
    """
    keys: dict[str, str | None] = {f"{name}.": f"features.{name}." for name in _STAGES}
    keys["fc."] = "head.fc."
    keys["AuxLogits."] = None
    return keys

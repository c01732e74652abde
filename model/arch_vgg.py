"""VGG16 (Simonyan & Zisserman), the paper's main backbone, with named layers.

``features`` runs conv1_1 ... pool5 (all 13 conv layers and the 5 max-pools,
stride 32), exactly torchvision's ``vgg16().features`` with readable names, so
torchvision's ImageNet weights load by a key map and the ImageNet classifier
(``pool5 -> AdaptiveAvgPool2d(7) -> fc6/fc7/fc8``) is reproduced unchanged.
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

# (block index, conv widths) of configuration "D" in the VGG paper (Table 1).
VGG16_BLOCKS = ((1, (64, 64)), (2, (128, 128)), (3, (256, 256, 256)),
                (4, (512, 512, 512)), (5, (512, 512, 512)))
VGG16_CHANNELS = 512
VGG16_FC_WIDTH = 4096


def vgg16_features() -> nn.Sequential:
    """conv{b}_{i} / relu{b}_{i} / pool{b} for the 5 blocks; torchvision's init."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = 3
    for block, widths in VGG16_BLOCKS:
        for i, width in enumerate(widths, start=1):
            conv = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers[f"conv{block}_{i}"] = conv
            layers[f"relu{block}_{i}"] = nn.ReLU(inplace=False)
            in_channels = width
        layers[f"pool{block}"] = nn.MaxPool2d(kernel_size=2, stride=2)
    return nn.Sequential(layers)


def _linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.normal_(layer.weight, 0.0, 0.01)
    nn.init.zeros_(layer.bias)
    return layer


def vgg16_imagenet_head(num_classes: int = 1000) -> nn.Sequential:
    """torchvision's VGG16 ``avgpool`` + ``classifier`` with names fc6, fc7, fc8."""
    return nn.Sequential(OrderedDict([
        ("pool", nn.AdaptiveAvgPool2d(7)),
        ("flatten", nn.Flatten(1)),
        ("fc6", _linear(VGG16_CHANNELS * 7 * 7, VGG16_FC_WIDTH)),
        ("relu6", nn.ReLU(inplace=False)),
        ("drop6", nn.Dropout(0.5)),
        ("fc7", _linear(VGG16_FC_WIDTH, VGG16_FC_WIDTH)),
        ("relu7", nn.ReLU(inplace=False)),
        ("drop7", nn.Dropout(0.5)),
        ("fc8", _linear(VGG16_FC_WIDTH, num_classes)),
    ]))


def vgg16_torchvision_keys() -> dict[str, str | None]:
    """Prefix map from torchvision ``vgg16()`` state-dict keys to ours.

    torchvision numbers ``features`` children in order (conv, relu, ..., pool),
    and ``classifier`` as Linear(0) ReLU(1) Dropout(2) Linear(3) ... Linear(6).
    """
    keys: dict[str, str | None] = {}
    index = 0
    for block, widths in VGG16_BLOCKS:
        for i in range(1, len(widths) + 1):
            keys[f"features.{index}."] = f"features.conv{block}_{i}."
            index += 2  # conv, relu
        index += 1  # pool
    keys.update({"classifier.0.": "head.fc6.", "classifier.3.": "head.fc7.",
                 "classifier.6.": "head.fc8."})
    return keys

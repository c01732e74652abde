"""AlexNet (Krizhevsky et al.; torchvision's single-GPU "one weird trick" variant).

``features`` is torchvision's ``alexnet().features`` (conv1 ... pool5, 256
channels) with readable names; the ImageNet head is its ``avgpool`` + ``classifier``.
torchvision keeps PyTorch's default initialisation for AlexNet, and so do we.
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

ALEXNET_CHANNELS = 256
ALEXNET_FC_WIDTH = 4096

# (name, out channels, kernel, stride, padding, followed by max-pool)
_CONVS = (("conv1", 64, 11, 4, 2, True), ("conv2", 192, 5, 1, 2, True),
          ("conv3", 384, 3, 1, 1, False), ("conv4", 256, 3, 1, 1, False),
          ("conv5", 256, 3, 1, 1, True))


def alexnet_features() -> nn.Sequential:
    """conv{k} / relu{k} and pool1, pool2, pool5 (3x3, stride 2)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = 3
    for name, width, kernel, stride, padding, pooled in _CONVS:
        k = name[len("conv"):]
        layers[name] = nn.Conv2d(in_channels, width, kernel, stride=stride, padding=padding)
        layers[f"relu{k}"] = nn.ReLU(inplace=False)
        if pooled:
            layers[f"pool{k}"] = nn.MaxPool2d(kernel_size=3, stride=2)
        in_channels = width
    return nn.Sequential(layers)


def alexnet_imagenet_head(num_classes: int = 1000) -> nn.Sequential:
    """torchvision's AlexNet ``avgpool`` + ``classifier`` (dropout before fc6 and fc7)."""
    return nn.Sequential(OrderedDict([
        ("pool", nn.AdaptiveAvgPool2d(6)),
        ("flatten", nn.Flatten(1)),
        ("drop6", nn.Dropout(0.5)),
        ("fc6", nn.Linear(ALEXNET_CHANNELS * 6 * 6, ALEXNET_FC_WIDTH)),
        ("relu6", nn.ReLU(inplace=False)),
        ("drop7", nn.Dropout(0.5)),
        ("fc7", nn.Linear(ALEXNET_FC_WIDTH, ALEXNET_FC_WIDTH)),
        ("relu7", nn.ReLU(inplace=False)),
        ("fc8", nn.Linear(ALEXNET_FC_WIDTH, num_classes)),
    ]))


def alexnet_torchvision_keys() -> dict[str, str | None]:
    """Prefix map from torchvision ``alexnet()`` state-dict keys to ours."""
    return {
        "features.0.": "features.conv1.", "features.3.": "features.conv2.",
        "features.6.": "features.conv3.", "features.8.": "features.conv4.",
        "features.10.": "features.conv5.",
        "classifier.1.": "head.fc6.", "classifier.4.": "head.fc7.", "classifier.6.": "head.fc8.",
    }

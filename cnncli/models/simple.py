"""A small plain CNN and an MLP baseline (to show why convolutions win on images)."""

from __future__ import annotations

import math

import torch.nn as nn

from cnncli.models._registry import register_model


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages with max-pooling, global average pooling and a linear classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(in_channels, w),
            _conv_bn(w, w),
            nn.MaxPool2d(2),
            _conv_bn(w, 2 * w),
            _conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _conv_bn(2 * w, 4 * w),
            _conv_bn(4 * w, 4 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * w, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


class MLP(nn.Module):
    """Flatten the image and apply two hidden layers: no weight sharing, no translation invariance."""

    def __init__(self, num_classes: int = 10, in_features: int = 3 * 32 * 32, hidden: int = 512):
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(inplace=True),
            nn.Linear(hidden // 2, num_classes),
        )

    def forward(self, x):
        return self.classifier(x)


@register_model(family="smallcnn", input_size=(3, 32, 32), num_classes=10)
def smallcnn(*, num_classes: int = 10, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """A small plain CNN: 6 conv-BN-ReLU layers, 2 max-pools, global average pooling."""
    return SmallCNN(num_classes, in_channels)


@register_model(family="mlp", input_size=(3, 32, 32), num_classes=10)
def mlp(*, num_classes: int = 10, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """A multi-layer perceptron baseline on flattened pixels."""
    return MLP(num_classes, in_channels * math.prod(image_size))

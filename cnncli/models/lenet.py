"""LeNet-5 and the two-channel line detector."""

from __future__ import annotations

import torch.nn as nn

from cnncli.analysis import arith
from cnncli.models._registry import register_model


class LeNet5(nn.Module):
    """conv(6,5) relu maxpool(2) conv(16,5) relu maxpool(2) flatten fc(120) relu fc(84) relu fc(classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size=(32, 32)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        # the flattened size follows the input size, computed with the same arithmetic as `cnn shape`
        rows = arith.run_layers((in_channels, *image_size), "conv(6,k=5) maxpool(2) conv(16,k=5) maxpool(2)")
        c, h, w = rows[-1].output
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * h * w, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class LineNet(nn.Module):
    """Two 9x9 filters, ReLU, global average pooling, a linear layer: the smallest CNN for the lines task."""

    def __init__(self, num_classes: int = 2, in_channels: int = 1, filters: int = 2, kernel: int = 9):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, filters, kernel, padding=kernel // 2), nn.ReLU(inplace=True)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(filters, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


@register_model(family="lenet", input_size=(3, 32, 32), num_classes=10)
def lenet5(*, num_classes: int = 10, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """LeNet-5 (LeCun et al. 1998): two conv/pool stages and three fully-connected layers."""
    return LeNet5(num_classes, in_channels, tuple(image_size))


@register_model(family="linenet", input_size=(1, 32, 32), num_classes=2)
def linenet(*, num_classes: int = 2, in_channels: int = 1, image_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """Two-channel line detector: conv 2x9x9, ReLU, global average pool, linear (horizontal vs vertical)."""
    return LineNet(num_classes, in_channels)

"""MobileNetV2 (Sandler et al. 2018): inverted residuals with depthwise-separable convolutions.

torchvision's blocks and parameter layout, with the pooling and flatten as modules (so `cnn fcn` can see the
head). Small inputs (< 96 px) keep more resolution: the stem and the first down-sampling block use stride 1.
"""

from __future__ import annotations

import torch.nn as nn

from cnncli.models._registry import register_model

SMALL_INPUT = 96


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, image_size=(224, 224), width_mult: float = 1.0):
        from torchvision.models.mobilenetv2 import MobileNetV2 as TorchvisionMobileNetV2  # 1.5 s to import: when built

        super().__init__()
        tv = TorchvisionMobileNetV2(num_classes=num_classes, width_mult=width_mult)
        self.features = tv.features
        stem = self.features[0][0]
        if in_channels != 3:
            self.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stem.stride, 1, bias=False)
        if min(image_size) < SMALL_INPUT:
            self.features[0][0].stride = (1, 1)
            self.features[2].conv[1][0].stride = (1, 1)  # depthwise conv of the first stride-2 block
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = tv.classifier

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


@register_model(family="mobilenet", input_size=(3, 224, 224), num_classes=1000)
def mobilenet_v2(
    *, num_classes: int = 1000, in_channels: int = 3, image_size: tuple[int, int] = (224, 224)
) -> nn.Module:
    """MobileNetV2 (width 1.0), depthwise-separable inverted residual blocks."""
    return MobileNetV2(num_classes, in_channels, tuple(image_size))

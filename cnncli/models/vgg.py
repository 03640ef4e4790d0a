"""VGG 11/13/16/19 with and without batch norm (Simonyan & Zisserman 2014).

At ImageNet sizes the layout is torchvision's exactly (adaptive 7x7 pool, 4096-wide classifier); small inputs
(CIFAR-style, < 96 px) keep the features and use a 512-wide classifier on the flattened final map.
"""

from __future__ import annotations

import torch.nn as nn

from cnncli.analysis import arith
from cnncli.models._registry import register_model

CFGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
SMALL_INPUT = 96


def make_layers(cfg: list, batch_norm: bool, in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            c = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, depth: int, batch_norm: bool, num_classes: int, in_channels: int, image_size):
        super().__init__()
        self.features = make_layers(CFGS[depth], batch_norm, in_channels)
        if min(image_size) >= SMALL_INPUT:
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Flatten(),
                nn.Linear(512 * 7 * 7, 4096),
                nn.ReLU(True),
                nn.Dropout(0.5),
                nn.Linear(4096, 4096),
                nn.ReLU(True),
                nn.Dropout(0.5),
                nn.Linear(4096, num_classes),
            )
        else:
            spec = " ".join("maxpool(2)" if v == "M" else f"conv({v},k=3,p=1)" for v in CFGS[depth])
            _, h, w = arith.run_layers((in_channels, *image_size), spec)[-1].output
            self.avgpool = nn.Identity()
            self.classifier = nn.Sequential(
                nn.Flatten(), nn.Linear(512 * h * w, 512), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(512, num_classes)
            )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


def _build(depth: int, bn: bool, num_classes: int, in_channels: int, image_size) -> VGG:
    return VGG(depth, bn, num_classes, in_channels, tuple(image_size))


def _make(depth: int, bn: bool):
    def builder(
        *, num_classes: int = 1000, in_channels: int = 3, image_size: tuple[int, int] = (224, 224)
    ) -> nn.Module:
        return _build(depth, bn, num_classes, in_channels, image_size)

    builder.__name__ = f"vgg{depth}" + ("_bn" if bn else "")
    builder.__doc__ = f"VGG-{depth}{' with batch norm' if bn else ''}."
    return builder


for _depth in (11, 13, 16, 19):
    for _bn in (False, True):
        register_model(family="vgg", input_size=(3, 224, 224), num_classes=1000)(_make(_depth, _bn))

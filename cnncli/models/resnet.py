"""ResNets (He et al. 2015).

`resnet18..152` are torchvision's ResNet: at ImageNet sizes (>= 96 px) exactly torchvision's model; smaller
inputs get the CIFAR stem (3x3 stride-1 conv, no max-pool). `resnet20..110` are the CIFAR ResNets of the
paper (3 stages of 16/32/64 channels, 6n+2 layers, parameter-free shortcuts, "option A").
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from cnncli.models._registry import register_model

SMALL_INPUT = 96


def _build_imagenet_style(block: str, layers, *, num_classes: int, in_channels: int, image_size) -> nn.Module:
    from torchvision.models import resnet as tv  # imported when built: torchvision costs 1.5 s to import

    model = tv.ResNet(getattr(tv, block), layers, num_classes=num_classes)
    if min(image_size) < SMALL_INPUT:
        model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model


class ShortcutA(nn.Module):
    """Identity shortcut that subsamples and zero-pads channels (no parameters)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra = extra_channels

    def forward(self, x):
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class CifarBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = ShortcutA(cout - cin) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            stage = []
            for i in range(n):
                stage.append(CifarBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
            blocks.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = blocks
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


_TV = {
    18: ("BasicBlock", [2, 2, 2, 2]),
    34: ("BasicBlock", [3, 4, 6, 3]),
    50: ("Bottleneck", [3, 4, 6, 3]),
    101: ("Bottleneck", [3, 4, 23, 3]),
    152: ("Bottleneck", [3, 8, 36, 3]),
}


def _make_tv(depth: int):
    block, layers = _TV[depth]

    def builder(
        *, num_classes: int = 1000, in_channels: int = 3, image_size: tuple[int, int] = (224, 224)
    ) -> nn.Module:
        return _build_imagenet_style(
            block, layers, num_classes=num_classes, in_channels=in_channels, image_size=tuple(image_size)
        )

    builder.__name__ = f"resnet{depth}"
    builder.__doc__ = f"ResNet-{depth} (torchvision layout; CIFAR stem below {SMALL_INPUT} px)."
    return builder


def _make_cifar(depth: int):
    def builder(*, num_classes: int = 10, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)) -> nn.Module:
        return CifarResNet(depth, num_classes, in_channels)

    builder.__name__ = f"resnet{depth}"
    builder.__doc__ = f"CIFAR ResNet-{depth} of He et al. (16/32/64 channels, option-A shortcuts)."
    return builder


for _d in (18, 34, 50, 101, 152):
    register_model(family="resnet", input_size=(3, 224, 224), num_classes=1000, default=_d == 18)(_make_tv(_d))
for _d in (20, 32, 44, 56, 110):
    register_model(family="resnet_cifar", input_size=(3, 32, 32), num_classes=10)(_make_cifar(_d))

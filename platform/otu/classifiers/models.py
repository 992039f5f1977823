"""Classifiers written in the project (no torchvision): a small CNN and a ResNet-18-style net.

Both take ``C×H×W`` images, expose ``features(x)`` (penultimate features) and ``forward(x)``
(logits = ``head(features(x))``).
"""

from __future__ import annotations

import torch
from torch import nn

ARCHS = ("cnn", "resnet18")


class SmallCNN(nn.Module):
    """Conv blocks (conv-BN-ReLU ×2, then 2×2 max-pool while the map is ≥ 8 px), global average
    pool, a hidden linear layer; ``width`` channels in the first block, doubled in the next."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size, out = in_channels, image_size, width
        for _ in range(2):
            layers += [_conv_bn(channels, out), _conv_bn(out, out)]
            if size >= 8:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels, out = out, out * 2
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(channels, 2 * channels), nn.ReLU(inplace=True))
        self.head = nn.Linear(2 * channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convs with a (projected when shapes change) identity shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 layout (4 stages × 2 basic blocks, widths w, 2w, 4w, 8w). Small images (≤ 32 px)
    get a 3×3 stride-1 stem without max-pool (the CIFAR variant); larger ones the 7×7/2 + pool stem."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, width: int) -> None:
        super().__init__()
        if image_size <= 32:
            stem: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)]
        else:
            stem = [nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)]
        stem += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        if image_size > 32:
            stem.append(nn.MaxPool2d(3, 2, 1))
        blocks: list[nn.Module] = []
        c_in = width
        for stage in range(4):
            c_out = width * 2**stage
            stride = 1 if stage == 0 else 2
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.body = nn.Sequential(*stem, *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def build_model(
    arch: str, num_classes: int, in_channels: int = 1, image_size: int = 8, width: int | None = None
) -> nn.Module:
    """A fresh classifier. ``width``: first-stage channels (default 32 for ``cnn``, 64 for
    ``resnet18``, the ResNet paper's)."""
    if arch == "cnn":
        return SmallCNN(num_classes, in_channels, image_size, width or 32)
    if arch == "resnet18":
        return ResNet18(num_classes, in_channels, image_size, width or 64)
    raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")

"""PyTorch twins of funcnn's ResNets for the benchmark's torch worker
(torchvision is not installed): the same layers, shapes and parameter counts as
`funcnn.models.resnet20` and `funcnn.models.resnet18`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut, then ReLU. Shortcut "A" is the
    identity subsampled and zero-padded in channels, "B" a 1x1 conv and BN."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.extra = stride, c_out - c_in
        self.project = None
        if shortcut == "B" and (stride != 1 or c_in != c_out):
            self.project = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.project is not None:
            short = self.project(x)
        else:
            short = x[:, :, :: self.stride, :: self.stride]
            if self.extra:
                short = F.pad(short, (0, 0, 0, 0, 0, self.extra))
        return F.relu(y + short)


def _stages(widths, blocks: int, c_in: int, shortcut: str) -> list[nn.Module]:
    layers = []
    for stage, c_out in enumerate(widths):
        for i in range(blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            layers.append(BasicBlock(c_in, c_out, stride, shortcut))
            c_in = c_out
    return layers


def resnet20(num_classes: int = 10) -> nn.Module:
    """He et al.'s CIFAR ResNet-20 with option-A shortcuts."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        *_stages((16, 32, 64), 3, 16, "A"),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def resnet18(num_classes: int = 1000, small_inputs: bool = False) -> nn.Module:
    """torchvision's ResNet-18 (11,689,512 parameters with 1000 classes)."""
    if small_inputs:
        stem = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    else:
        stem = [
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        ]
    return nn.Sequential(
        *stem,
        *_stages((64, 128, 256, 512), 2, 64, "B"),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(512, num_classes),
    )

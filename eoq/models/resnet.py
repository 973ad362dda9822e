"""ResNets in the CIFAR layout (20/32/44/56/110) and the ImageNet layout (18/34/50).

CIFAR (He et al. 2016, section 4.2): 3x3 stem at 16 channels, three stages of n = (depth-2)/6
basic blocks at 16, 32, 64 channels, option-A shortcuts, global average pool, linear classifier.
ImageNet: 7x7/2 stem + 3x3/2 max-pool (or, with ``small_input``, a 3x3/1 stem and no pool for
32x32 images), four stages at 64-512 channels of basic (18, 34) or bottleneck (50) blocks with
1x1 projection shortcuts. Every conv and the classifier are quantizable layers; ``norm`` picks
'bn', 'fixup' or 'none' (see blocks.py), and Fixup init follows fixup.py.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.batchnorm import QBatchNorm2d
from ..nn.layers import FixupScalar, QConv2d, QLinear
from ..nn.fixup_tail import fixup_stem
from ..nn.stream import stream_split, to_stream
from .blocks import NORMS, BasicBlock, Bottleneck, ResidualBlock
from .fixup import fixup_branch_factor, he_fan_out_std, init_fixup_branch

CIFAR_DEPTHS = (20, 32, 44, 56, 110)
IMAGENET_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
                   50: (Bottleneck, (3, 4, 6, 3))}


class ResNet(nn.Module):
    stream_bits: int | None = None     # Fixup: the fixed-point stream of spec.stream_bits (set by prepare)

    def __init__(self, block, counts, widths, norm: str, num_classes: int, shortcut: str,
                 stem: str, in_channels: int = 3):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
        self.norm = norm
        big_stem = stem == "imagenet"
        self.conv1 = QConv2d(in_channels, widths[0], 7 if big_stem else 3, stride=2 if big_stem else 1,
                             padding=3 if big_stem else 1)
        self.bn1 = QBatchNorm2d(widths[0]) if norm == "bn" else None
        self.bias1 = FixupScalar("bias") if norm == "fixup" else None
        self.maxpool = nn.MaxPool2d(3, 2, 1) if big_stem else nn.Identity()
        in_planes, stages = widths[0], []
        for i, (planes, n) in enumerate(zip(widths, counts)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_planes, planes, stride, norm, shortcut))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.bias2 = FixupScalar("bias") if norm == "fixup" else None
        self.fc = QLinear(in_planes, num_classes)
        self._init()

    def _init(self):
        for m in self.modules():
            if isinstance(m, QConv2d):
                nn.init.normal_(m.weight, 0.0, he_fan_out_std(m))
            elif isinstance(m, QBatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.norm == "fixup":
            blocks = self.blocks()
            factor = fixup_branch_factor(len(blocks), len(blocks[0].convs))
            for b in blocks:
                init_fixup_branch(list(b.convs), factor)
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def blocks(self) -> list[ResidualBlock]:
        return [b for stage in self.stages for b in stage]

    def stem(self, x):
        x = self.conv1(x)
        if self.bn1 is not None:
            x = self.bn1(x)
        if self.bias1 is not None and self.stream_bits:      # exact, then rounded to the stream
            if isinstance(self.maxpool, nn.Identity):
                return fixup_stem(x, self.bias1, self.stream_bits)
            return to_stream(self.maxpool(F.relu(self.bias1(x.double()))), self.stream_bits)
        if self.bias1 is not None:
            x = self.bias1(x)
        return self.maxpool(F.relu(x))

    def head(self, x):
        if self.bias2 is not None and self.stream_bits:
            x, _ = stream_split(x, self.stream_bits)    # the last block's output and its error, rounded
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        if self.bias2 is not None:
            x = self.bias2(x, feeds=self.fc)
        return self.fc(x)

    def forward(self, x):
        x = self.stem(x)
        blocks = self.blocks()
        for i, block in enumerate(blocks):     # each block's tail may make the next one's first A codes
            x = block(x, blocks[i + 1] if i + 1 < len(blocks) else None)
        return self.head(x)


def cifar_resnet(depth: int = 20, norm: str = "fixup", num_classes: int = 10) -> ResNet:
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (e.g. {CIFAR_DEPTHS}), got {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, (n, n, n), (16, 32, 64), norm, num_classes, shortcut="A", stem="cifar")


def imagenet_resnet(depth: int = 18, norm: str = "fixup", num_classes: int = 1000,
                    small_input: bool = False) -> ResNet:
    if depth not in IMAGENET_DEPTHS:
        raise ValueError(f"ImageNet ResNet depth must be one of {tuple(IMAGENET_DEPTHS)}, got {depth}")
    block, counts = IMAGENET_DEPTHS[depth]
    return ResNet(block, counts, (64, 128, 256, 512), norm, num_classes, shortcut="B",
                  stem="cifar" if small_input else "imagenet")

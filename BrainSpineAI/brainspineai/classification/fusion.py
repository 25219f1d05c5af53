"""Attentional feature fusion (Dai, Gieseke, Oehmcke, Wu and Barnard, "Attentional Feature
Fusion", WACV 2021), used by AFF-CL to join the global and the local branch.

MS-CAM (multi-scale channel attention) computes, for every channel and position, a weight
``M = sigmoid(L(X) + G(X))`` where ``L`` is a point-wise bottleneck (1x1 conv, BN, ReLU,
1x1 conv, BN: local context, kept per position) and ``G`` the same bottleneck after global
average pooling (global context, broadcast). AFF fuses two feature maps of one shape as
``Z = M(X + Y) * X + (1 - M(X + Y)) * Y``; iterative AFF (iAFF) replaces the initial
``X + Y`` by a first AFF: ``Z = M2(Xi) * X + (1 - M2(Xi)) * Y`` with
``Xi = M1(X + Y) * X + (1 - M1(X + Y)) * Y``. ``M`` near 1 trusts ``X`` (the global branch
in AFF-CL), near 0 trusts ``Y`` (the local branch); the last weights are kept in
``last_weight`` for inspection.

Batch normalisation of the pooled context needs at least 2 samples per batch in training.
"""
from __future__ import annotations

import torch
import torch.nn as nn

REDUCTION = 4  # channel reduction ratio r of the bottleneck (the paper's default)


def _bottleneck(channels: int, inter: int) -> list:
    return [nn.Conv2d(channels, inter, 1, bias=False), nn.BatchNorm2d(inter), nn.ReLU(inplace=True),
            nn.Conv2d(inter, channels, 1, bias=False), nn.BatchNorm2d(channels)]


class MSCAM(nn.Module):
    """Multi-scale channel attention: (N, C, H, W) -> weights (N, C, H, W) in (0, 1)."""

    def __init__(self, channels: int, reduction: int = REDUCTION):
        super().__init__()
        inter = max(channels // reduction, 8)
        self.local_att = nn.Sequential(*_bottleneck(channels, inter))
        self.global_att = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_bottleneck(channels, inter))

    def forward(self, x):
        return torch.sigmoid(self.local_att(x) + self.global_att(x))


class AFF(nn.Module):
    """Attentional feature fusion of two maps of equal shape (N, C, H, W)."""

    def __init__(self, channels: int, reduction: int = REDUCTION):
        super().__init__()
        self.attention = MSCAM(channels, reduction)
        self.last_weight = None

    def forward(self, x, y):
        m = self.attention(x + y)
        self.last_weight = m.detach()
        return m * x + (1 - m) * y


class IAFF(nn.Module):
    """Iterative attentional feature fusion (two MS-CAM stages)."""

    def __init__(self, channels: int, reduction: int = REDUCTION):
        super().__init__()
        self.attention1 = MSCAM(channels, reduction)
        self.attention2 = MSCAM(channels, reduction)
        self.last_weight = None

    def forward(self, x, y):
        m1 = self.attention1(x + y)
        xi = m1 * x + (1 - m1) * y
        m2 = self.attention2(xi)
        self.last_weight = m2.detach()
        return m2 * x + (1 - m2) * y


def build_fusion(kind: str, channels: int) -> nn.Module:
    """``"aff"`` or ``"iaff"``; raises ValueError otherwise."""
    if kind == "aff":
        return AFF(channels)
    if kind == "iaff":
        return IAFF(channels)
    raise ValueError(f"fusion must be 'aff' or 'iaff', got {kind!r}")

"""Auxiliary heads: the local classifier every unit learns from, and later its early exit."""

from __future__ import annotations

import math

from torch import nn

from nfcompile.recipe.schema import HeadSection

# Tensors of size F*H*W a head keeps alive per sample through its backward pass: the conv output
# (saved by BatchNorm), the BatchNorm output and the ReLU output. Used only to *choose* F; the
# profiler then measures the real memory with the chosen width.
HEAD_SAVED_MAPS = 3
FLOAT_BYTES = 4


class AuxHead(nn.Module):
    """Conv3x3(C->F) + BN + ReLU + global average pool + Linear(F->classes)."""

    def __init__(self, in_channels: int, filters: int, num_classes: int):
        super().__init__()
        self.filters = filters
        self.conv = nn.Conv2d(in_channels, filters, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(filters)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(filters, num_classes)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.relu(self.bn(self.conv(x))))))


def head_bytes_per_sample(filters: int, spatial: int) -> int:
    return HEAD_SAVED_MAPS * filters * spatial * FLOAT_BYTES


def choose_head_filters(section: HeadSection, out_shape: tuple[int, ...], unit_bytes_per_sample: int) -> int:
    """Filters for the head on a unit with output ``out_shape`` (C, H, W).

    fixed: ``section.filters`` everywhere. adaptive: the widest power of two in
    [min_filters, filters] whose activations stay within ``memory_ratio`` of the unit's own
    per-sample activations. Early units have large maps and get narrow heads; deep units have
    small maps and get wide ones, so no head shrinks its block's batch size by much.
    """
    if section.policy == "fixed":
        return section.filters
    spatial = math.prod(out_shape[1:]) if len(out_shape) > 1 else 1
    affordable = section.memory_ratio * unit_bytes_per_sample / head_bytes_per_sample(1, spatial)
    if affordable < section.min_filters:
        return section.min_filters
    widest = 2 ** int(math.floor(math.log2(affordable)))
    return int(min(section.filters, max(section.min_filters, widest)))

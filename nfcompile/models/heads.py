"""Auxiliary heads: the local classifier every unit learns from, and later its early exit."""

from __future__ import annotations

import math

import torch
from torch import nn

from nfcompile.recipe.schema import HeadSection

# Tensors of size F*H*W a head keeps alive per sample through its backward pass: the conv output
# (saved by BatchNorm), the BatchNorm output and the ReLU output. Used only to *choose* F; the
# profiler then measures the real memory with the chosen width.
HEAD_SAVED_MAPS = 3
FLOAT_BYTES = 4


class AuxHead(nn.Module):
    """[AvgPool(k)] + depth x (Conv3x3 -> BN -> ReLU) + global average pool + Linear(F->classes).

    The optional pooling (kernel = stride = ``pool``, ceil mode) shrinks a large early map before the
    head's convs, so a head on a 28x28 unit can afford many filters without taking the batch size:
    its activations scale with the pooled map. A second conv gives the local loss more capacity than
    a linear probe of one conv (the deep-supervision heads of DGL and InfoPro are two to three layers).
    """

    def __init__(self, in_channels: int, filters: int, num_classes: int, *, pool: int = 1, depth: int = 1):
        super().__init__()
        self.in_channels, self.filters, self.pool_kernel, self.depth = in_channels, filters, pool, depth
        layers: list[nn.Module] = [nn.AvgPool2d(pool, stride=pool, ceil_mode=True)] if pool > 1 else []
        channels = in_channels
        for _ in range(depth):
            conv = nn.Conv2d(channels, filters, kernel_size=3, padding=1, bias=False)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            layers += [conv, nn.BatchNorm2d(filters), nn.ReLU()]
            channels = filters
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(filters, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.body(x))))

    def pooled_input(self, x):
        """What the convs see: ``x`` after the head's own pooling (``x`` itself where it has none)."""
        return self.body[0](x) if self.pool_kernel > 1 else x

    def from_pooled(self, pooled):
        """The logits from `pooled_input`'s output: ``forward(x) == from_pooled(pooled_input(x))``."""
        convs = self.body[1:] if self.pool_kernel > 1 else self.body
        return self.fc(self.flatten(self.pool(convs(pooled))))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints from before pooled and deeper heads name the one conv and BN `conv.` and `bn.`.
        for old, new in (("conv.", "body.0."), ("bn.", "body.1.")):
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@torch.no_grad()
def slim_head(head: AuxHead, filters: int) -> AuxHead:
    """A copy of ``head`` with ``filters`` filters per conv: at every conv, the filters whose BatchNorm scale
    is largest in magnitude (network slimming, Liu et al. 2017: a filter's |gamma| is how much of it reaches
    the next layer), with their weights, BatchNorm statistics and the next layer's matching inputs."""
    if not 1 <= filters <= head.filters:
        raise ValueError(f"a slim head keeps 1 to {head.filters} filters, not {filters}")
    convs = [m for m in head.body if isinstance(m, nn.Conv2d)]
    norms = [m for m in head.body if isinstance(m, nn.BatchNorm2d)]
    slim = AuxHead(head.in_channels, filters, head.fc.out_features, pool=head.pool_kernel, depth=head.depth)
    slim_convs = [m for m in slim.body if isinstance(m, nn.Conv2d)]
    slim_norms = [m for m in slim.body if isinstance(m, nn.BatchNorm2d)]
    kept_inputs = torch.arange(head.in_channels, device=convs[0].weight.device)
    for conv, norm, slim_conv, slim_norm in zip(convs, norms, slim_convs, slim_norms):
        kept = norm.weight.abs().argsort(descending=True, stable=True)[:filters].sort().values
        slim_conv.weight.copy_(conv.weight[kept][:, kept_inputs])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(slim_norm, name).copy_(getattr(norm, name)[kept])
        slim_norm.num_batches_tracked.copy_(norm.num_batches_tracked)
        kept_inputs = kept
    slim.fc.weight.copy_(head.fc.weight[:, kept_inputs])
    slim.fc.bias.copy_(head.fc.bias)
    return slim.train(head.training)


def head_pool_kernel(section: HeadSection, spatial_side: int) -> int:
    """The pooling kernel that brings a map of ``spatial_side`` to at most ``section.pool_to`` per side."""
    if section.pool_to is None or spatial_side <= section.pool_to:
        return 1
    return math.ceil(spatial_side / section.pool_to)


def head_bytes_per_sample(filters: int, spatial: int) -> int:
    return HEAD_SAVED_MAPS * filters * spatial * FLOAT_BYTES


def choose_head_filters(section: HeadSection, out_shape: tuple[int, ...], unit_bytes_per_sample: int) -> int:
    """Filters for the head on a unit with output ``out_shape`` (C, H, W).

    fixed: ``section.filters`` everywhere. adaptive: the widest power of two in
    [min_filters, filters] whose activations (on the pooled map, every conv of the head) stay within
    ``memory_ratio`` of the unit's own per-sample activations. Early units have large maps and get
    narrow heads, or, pooled first, wide heads at little cost; deep units have small maps and get
    wide ones, so no head shrinks its block's batch size by much.
    """
    if section.policy == "fixed":
        return section.filters
    side = out_shape[-1] if len(out_shape) > 1 else 1
    pooled = math.ceil(side / head_pool_kernel(section, side))
    spatial = pooled * pooled if len(out_shape) > 1 else 1
    affordable = section.memory_ratio * unit_bytes_per_sample / (section.depth * head_bytes_per_sample(1, spatial))
    if affordable < section.min_filters:
        return section.min_filters
    widest = 2 ** int(math.floor(math.log2(affordable)))
    return int(min(section.filters, max(section.min_filters, widest)))

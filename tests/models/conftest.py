"""Model tests never download: torch.hub is cut off as if this machine were offline."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError(f"offline in tests: {url}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def scramble_norms(module: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics and affine terms: BN is no longer the identity, so outputs only
    match when every buffer (not just the conv weights) came through."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, nn.BatchNorm2d):
                shape = norm.running_mean.shape
                norm.running_mean.copy_(torch.randn(shape, generator=generator) * 0.1)
                norm.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
                norm.weight.copy_(torch.rand(shape, generator=generator) + 0.5)
                norm.bias.copy_(torch.randn(shape, generator=generator) * 0.1)
    return module


@pytest.fixture
def scramble():
    return scramble_norms

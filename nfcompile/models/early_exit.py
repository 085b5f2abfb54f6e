"""Early exits: every prefix of units plus that unit's head is a complete classifier."""

from __future__ import annotations

import torch
from torch import nn

from nfcompile.models.adapters import UnitNet


class ExitNet(nn.Module):
    """One exit as a single static graph: units[0..k] then head k. What gets exported."""

    def __init__(self, units: list[nn.Module], head: nn.Module):
        super().__init__()
        self.units = nn.Sequential(*units)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.units(x))


class MultiExitNet(nn.Module):
    """The units of a `UnitNet` with heads on some of them (``heads[str(unit_index)]``).

    NeuroFlux puts an auxiliary head on every unit; backprop has one exit, the model's own
    classifier on the last unit.
    """

    @classmethod
    def single_exit(cls, unit_net: UnitNet) -> "MultiExitNet":
        """The whole model with its own classifier as the one exit, on the last unit (backprop, fine-tuning)."""
        return cls(unit_net, {len(unit_net.units) - 1: unit_net.classifier})

    def __init__(self, unit_net: UnitNet, heads: dict[int, nn.Module]):
        super().__init__()
        self.arch = unit_net.arch
        self.unit_names = list(unit_net.unit_names)
        self.units = unit_net.units
        self.classifier = unit_net.classifier
        self.heads = nn.ModuleDict({str(k): heads[k] for k in sorted(heads)})

    @property
    def exit_units(self) -> list[int]:
        return sorted(int(k) for k in self.heads)

    def exit_net(self, unit: int) -> ExitNet:
        """The exit at ``unit``, sharing modules with this net (no copy)."""
        if str(unit) not in self.heads:
            raise KeyError(f"no exit at unit {unit}; exits are at {self.exit_units}")
        return ExitNet(list(self.units[: unit + 1]), self.heads[str(unit)])

    def forward_exits(self, x: torch.Tensor, units: list[int] | None = None) -> dict[int, torch.Tensor]:
        """Logits of several exits from one pass through the trunk."""
        wanted = set(self.exit_units if units is None else units)
        last = max(wanted)
        logits = {}
        for index, unit in enumerate(self.units[: last + 1]):
            x = unit(x)
            if index in wanted:
                logits[index] = self.heads[str(index)](x)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_exits(x, [self.exit_units[-1]])[self.exit_units[-1]]


def block_exits(units: list[nn.Module], heads: list[nn.Module], h: torch.Tensor) -> list[torch.Tensor]:
    """The logits of every exit of consecutive ``units`` (one head each), from one pass through them:
    how a NeuroFlux block is evaluated, and how the planner measures that evaluation."""
    logits = []
    for unit, head in zip(units, heads):
        h = unit(h)
        logits.append(head(h))
    return logits

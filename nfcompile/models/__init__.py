"""Model adapters (units with shapes), auxiliary heads and the early-exit wrapper."""

from nfcompile.models.adapters import UnitNet, get_adapter, list_adapters, unit_net_from_torchvision
from nfcompile.models.build import (attach_heads, build_unit_net, multi_exit_from_state,
                                    multi_exit_state, unit_shapes_for)
from nfcompile.models.early_exit import ExitNet, MultiExitNet, block_exits
from nfcompile.models.heads import AuxHead, choose_head_filters

__all__ = ["AuxHead", "ExitNet", "MultiExitNet", "UnitNet", "attach_heads", "block_exits", "build_unit_net",
           "choose_head_filters", "get_adapter", "list_adapters", "multi_exit_from_state",
           "multi_exit_state", "unit_net_from_torchvision", "unit_shapes_for"]

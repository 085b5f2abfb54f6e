"""DRIVE pruning and its baselines (magnitude with rewinding, SNIP, SynFlow). Output: `PruneResult`."""

from nfcompile.stages.prune.masks import (exponential_schedule, global_masks, layer_sparsity, prunable_weights,
                                          weight_sparsity)
from nfcompile.stages.prune.prune import METHODS, compressed_size, prune_model, prune_with
from nfcompile.stages.prune.stage import prune_chosen_exit, pruned_exit_from_checkpoint
from nfcompile.stages.prune.training import train_masked

__all__ = ["METHODS", "compressed_size", "exponential_schedule", "global_masks", "layer_sparsity",
           "prunable_weights", "prune_chosen_exit", "prune_model", "prune_with", "pruned_exit_from_checkpoint",
           "train_masked", "weight_sparsity"]

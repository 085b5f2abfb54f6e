"""Training primitives every method shares: the steps, the optimizers and their schedule, top-1
accuracy over any input source, and the one epoch loop the methods parameterize.

It sits above `data` and `recipe` (it reads their types) and below the stages: the profiler in
`stages/plan` measures the very steps that `stages/train` and `stages/prune` run.
"""

from nfcompile.learning.evaluate import EVAL_BATCH_SIZE, eval_mode, top1_accuracies, top1_accuracy, top1_hits
from nfcompile.learning.loop import FitOutcome, fit
from nfcompile.learning.snapshot import BestWeights
from nfcompile.learning.optim import (lr_factor, lr_schedule, make_optimizer, scaled_lr, set_lr, warmed_up_schedule,
                                     warmup_steps)
from nfcompile.learning.steps import CheckpointedUnits, backprop_step, frozen, local_step

__all__ = ["EVAL_BATCH_SIZE", "BestWeights", "CheckpointedUnits", "FitOutcome", "backprop_step", "eval_mode", "fit",
           "frozen", "local_step", "lr_factor", "lr_schedule", "make_optimizer", "scaled_lr", "set_lr",
           "top1_accuracies", "top1_accuracy", "top1_hits", "warmed_up_schedule", "warmup_steps"]

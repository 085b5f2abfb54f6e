"""Training checkpoints: written atomically after every finished block, loaded weights_only.

A checkpoint is tied to the fingerprint of everything training depends on (recipe fields, plan);
a checkpoint from different settings is ignored, never half-applied.

Several processes (a torchrun job): every rank reaches each save together (a barrier), only rank 0
writes; on resume rank 0 reads and hands every rank the same state, so all continue from the same
blocks with the same weights (the other ranks may be on machines that cannot see the file).
"""

from __future__ import annotations

from pathlib import Path

from nfcompile.core import distributed as dist
from nfcompile.core.io import load_checkpoint, save_checkpoint
from nfcompile.core.log import get_logger
from nfcompile.core.results import BlockResult, TrainResult
from nfcompile.models import MultiExitNet, multi_exit_state
from nfcompile.models.build import match_head_specs
from nfcompile.recipe.schema import ModelSection

log = get_logger(__name__)

# 2: a finished block's checkpoint holds the next block's warm-started heads, and may hold slim heads.
FORMAT = "nfcompile.train/2"


class TrainCheckpoint:
    def __init__(self, path: Path, fingerprint: str):
        self.path = path
        self.fingerprint = fingerprint

    def save(self, net: MultiExitNet, model: ModelSection, num_classes: int, blocks: list[BlockResult]) -> None:
        note_block_weights(net)
        dist.barrier()
        if not dist.is_main():
            return
        save_checkpoint(self.path, {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "blocks": [b.to_dict() for b in blocks],
            "net": multi_exit_state(net, model, num_classes),
        })

    def restore(self, net: MultiExitNet) -> list[BlockResult]:
        """Load finished blocks into ``net``; [] when there is no usable checkpoint."""
        state = _read_on_main(self.path)
        if state is None:
            return []
        if state.get("format") != FORMAT:
            log.warning("%s was written by another nfcompile version (%s, this one reads %s): training starts over",
                        self.path, state.get("format"), FORMAT)
            return []
        if state.get("fingerprint") != self.fingerprint:
            log.warning("%s was written for other settings: training starts over", self.path)
            return []
        match_head_specs(net, state["net"]["heads"])
        net.load_state_dict(state["net"]["state_dict"])
        blocks = [BlockResult.from_dict(b) for b in state["blocks"]]
        log.info("resuming: blocks %s already trained (from %s)", [b.index for b in blocks], self.path)
        return blocks


SINGLE_EXIT_FORMAT = "nfcompile.train.single_exit/1"


def save_single_exit(path: Path, fingerprint: str, net: MultiExitNet, model: ModelSection, num_classes: int,
                     result: TrainResult) -> None:
    """Methods that train in one piece (backprop, fine-tuning) checkpoint once, when done."""
    note_block_weights(net)
    dist.barrier()
    if not dist.is_main():
        return
    save_checkpoint(path, {"format": SINGLE_EXIT_FORMAT, "fingerprint": fingerprint, "result": result.to_dict(),
                           "net": multi_exit_state(net, model, num_classes)})


def restore_single_exit(path: Path, fingerprint: str, net: MultiExitNet) -> TrainResult | None:
    """The finished result and weights of a previous run with the same settings, else None."""
    state = _read_on_main(path)
    if state is None:
        return None
    if state.get("format") != SINGLE_EXIT_FORMAT or state.get("fingerprint") != fingerprint:
        return None
    net.load_state_dict(state["net"]["state_dict"])
    log.info("resuming: training already finished (%s)", path)
    return TrainResult.from_dict(state["result"])


def _read_on_main(path: Path) -> dict | None:
    """The checkpoint (validated, weights_only) as rank 0 reads it, on every rank; None when absent."""
    state = load_checkpoint(path) if dist.is_main() and path.is_file() else None
    return dist.broadcast_object(state)


# Several processes: a digest of every rank's weights after each finished block, gathered into the
# train result, shows that the ranks never drifted apart.
_BLOCK_DIGESTS: list[str] = []


def note_block_weights(net) -> None:
    if dist.world_size() > 1:
        from nfcompile.learning.parallel import weights_digest

        _BLOCK_DIGESTS.append(weights_digest([net]))


def block_digests() -> list[str]:
    """The digests noted since the last call (one per block this process finished)."""
    out = list(_BLOCK_DIGESTS)
    _BLOCK_DIGESTS.clear()
    return out

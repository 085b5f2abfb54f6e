"""How far below another exit an exit may really be: a paired bound on the validation images.

`smallest_within` accepts exits within `within_points` of the best. Measured on a finite validation
split, the smallest exit that just passes was often lucky there: selected on one half of
Fashion-MNIST's 6,000 validation images, the exit chosen fell more than a point below the best on the
other half in 16-28% of random splits (VGG-16, stringent budget, seeds 0-1; `select.confidence`'s
description gives the measurement). With `select.confidence` an exit is accepted only where a
one-sided lower confidence bound of its accuracy minus the best's is within the window.

Both exits classify the same images, so the bound is paired: the per-image difference d is +1 where
only this exit is right, -1 where only the best is, 0 where they agree. Its mean is the accuracy
difference and its standard error sqrt((discordant / n - mean^2) / n) (McNemar's setting, with the
normal approximation). Exits of one network agree on most images, which makes this far tighter than
comparing two independent accuracies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from nfcompile.core.results import ExitScores


@dataclass(frozen=True)
class PairedCounts:
    """Per pair of exits, the validation images one classifies correctly and the other does not."""

    samples: int
    index: dict[str, int]  # exit name -> row of right_where_wrong
    right_where_wrong: tuple[tuple[int, ...], ...]

    @classmethod
    def from_scores(cls, scores: ExitScores) -> "PairedCounts | None":
        """None where the scores hold no counts (written before they were kept)."""
        counts = scores.val_right_where_wrong
        if not counts or scores.val_samples <= 0 or len(counts) != len(scores.exits):
            return None
        return cls(scores.val_samples, {score.name: i for i, score in enumerate(scores.exits)}, counts)

    def difference(self, name: str, reference: str) -> float:
        """Accuracy of ``name`` minus that of ``reference`` (a fraction), from the counts."""
        i, j = self.index[name], self.index[reference]
        return (self.right_where_wrong[i][j] - self.right_where_wrong[j][i]) / self.samples

    def lower_bound(self, name: str, reference: str, confidence: float) -> float:
        """One-sided ``confidence`` lower bound of ``difference(name, reference)``."""
        i, j = self.index[name], self.index[reference]
        n = self.samples
        mean = self.difference(name, reference)
        discordant = (self.right_where_wrong[i][j] + self.right_where_wrong[j][i]) / n
        standard_error = math.sqrt(max(discordant - mean * mean, 0.0) / n)
        return mean - NormalDist().inv_cdf(confidence) * standard_error

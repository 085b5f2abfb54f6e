"""How far below another exit an exit may really be: a paired bound on the validation images.

`smallest_within` accepts exits within `within_points` of the best. Measured on a finite validation
split, the smallest exit that just passes was often lucky there: on the benchmarks' Fashion-MNIST
runs, an exit chosen on one half of the 6,000 validation images fell more than a point below the
best on the other half in up to 28.5% of random halvings (benchmarks comparison 2). With
`select.confidence` an exit is accepted only where a one-sided lower confidence bound of its
accuracy minus the best's is within the window.

Both exits classify the same images, so the bound is paired (McNemar's setting): the per-image
difference is +1 where only this exit is right, -1 where only the best is, 0 where they agree, and
exits of one network agree on most images, which makes it far tighter than comparing two
independent accuracies. It is the Wald bound with Agresti and Min's adjustment (2005, "Simple
improved confidence intervals for comparing matched proportions"): half an image added to each of
the four agree/disagree cells. Without it, exits that differ on no image or a handful would get a
standard error of about nothing: two exits identical on a small split would pass any window.

The bound holds per comparison: picking the smallest of several exits that pass, against a best
that is itself the highest of several noisy accuracies, keeps it only roughly (the benchmark's
held-out check measures how roughly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from nfcompile.core.results import ExitScores
from nfcompile.errors import InputError


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
        if not counts:
            return None
        exits = len(scores.exits)
        if scores.val_samples <= 0 or len(counts) != exits or any(len(row) != exits for row in counts):
            raise InputError(f"stored scores: val_right_where_wrong is not {exits}x{exits} counts over a validation "
                             f"split (val_samples {scores.val_samples}): the score record is damaged",
                             hint="build again")
        return cls(scores.val_samples, {score.name: i for i, score in enumerate(scores.exits)}, counts)

    def lower_bound(self, name: str, reference: str, confidence: float) -> float:
        """One-sided ``confidence`` lower bound of ``difference(name, reference)`` (Agresti-Min)."""
        i, j = self.index[name], self.index[reference]
        only_this, only_reference = self.right_where_wrong[i][j] + 0.5, self.right_where_wrong[j][i] + 0.5
        n = self.samples + 2  # half an image in each of the four cells
        mean = (only_this - only_reference) / n
        standard_error = math.sqrt(max((only_this + only_reference) / n - mean * mean, 0.0) / n)
        return mean - NormalDist().inv_cdf(confidence) * standard_error

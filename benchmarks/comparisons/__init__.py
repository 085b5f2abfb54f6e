"""The suite's comparisons, registered in the order they run (importing a module registers it).

To add a comparison, write a module with `run`, `render` (and optionally `headlines`) and
`register_comparison(...)`, then import it below.
"""

from benchmarks.comparisons import time_to_accuracy  # noqa: F401
from benchmarks.comparisons import deliverable  # noqa: F401
from benchmarks.comparisons import ablations  # noqa: F401
from benchmarks.comparisons import profiler_fidelity  # noqa: F401
from benchmarks.comparisons import pipeline_overhead  # noqa: F401
from benchmarks.comparisons import gradient_filter  # noqa: F401
from benchmarks.comparisons import pruning  # noqa: F401
from benchmarks.comparisons import engine_efficiency  # noqa: F401
from benchmarks.comparisons import minimum_budget  # noqa: F401
from benchmarks.comparisons import accuracy_gap  # noqa: F401
from benchmarks.comparisons import scaling  # noqa: F401
from benchmarks.comparisons import learning_rate  # noqa: F401

"""nfcompile's benchmark suite: NeuroFlux against backprop, side by side, and every design choice measured.

`python -m benchmarks.run [--quick] [--only NAME ...]` runs the registered comparisons
(`benchmarks/comparisons/`) on one `Workbench`, writes `benchmarks/results/<date>-<machine>.json`
and regenerates `benchmarks/RESULTS.md` from it (`python -m benchmarks.report` re-renders a file).
"""

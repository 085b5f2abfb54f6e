"""nfcompile: train a CNN under a memory budget with NeuroFlux and ship a validated edge model."""

__version__ = "0.1.0"

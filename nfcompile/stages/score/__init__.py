"""Score every early exit: accuracy, parameters, MACs, ONNX size and latency. Output: `ExitScores`."""

from nfcompile.stages.score.deliverables import time_deliverables
from nfcompile.stages.score.latency_table import (LatencyTable, emit_latency_table,
                                                  read_latency_table)
from nfcompile.stages.score.score import EXITS_DIR, FULL_MODEL, exit_name, score_exits

__all__ = ["EXITS_DIR", "FULL_MODEL", "LatencyTable", "emit_latency_table", "exit_name",
           "read_latency_table", "score_exits", "time_deliverables"]

"""Pick a Pareto-optimal exit under the recipe's constraints and policy. Output: `Selection`.

No torch import anywhere in this package: selection runs on stored scores.
"""

from nfcompile.stages.select.pareto import Point, dominates, pareto_front
from nfcompile.stages.select.policies import list_policies
from nfcompile.stages.select.exits_report import exits_table, plot_pareto, vs_full_summary, write_exits_json
from nfcompile.stages.select.selection import compare_with_full, select_exit

__all__ = ["Point", "compare_with_full", "dominates", "exits_table", "list_policies", "pareto_front",
           "plot_pareto", "select_exit", "vs_full_summary", "write_exits_json"]

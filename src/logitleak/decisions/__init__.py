"""The one place every decision is made: family adjustment, readable, leak, strongest reading, recommendation.

``decide(results)`` returns structured :class:`Decisions` for an audit's results table;
``recommend_defence(tradeoff, max_loss)`` takes the same decisions once per defence and picks
the cheapest one that stops every leak. The verdict, the HTML report, the terminal summaries
and ``defend`` all read these; none of them re-derives a rule.
"""

from logitleak.decisions.attack import AttackCost, AttackDecisions, decide_attack
from logitleak.decisions.attributes import CALLS, STATUSES, AttributeDecision, Decisions, decide
from logitleak.decisions.defences import (
    DefenceDecision,
    Recommendation,
    decide_defences,
    recommend_defence,
    strongest_rows,
)
from logitleak.decisions.multiplicity import holm, westfall_young
from logitleak.decisions.rules import (
    TUNED_LEVELS,
    annotate,
    best_row,
    bits_shown,
    finite,
    k_order,
    level_rank,
    num,
    relevance,
    smallest_k_key,
    smallest_k_row,
    strongest,
    strongest_reading,
)

__all__ = [
    "CALLS", "STATUSES", "TUNED_LEVELS", "AttackCost", "AttackDecisions", "AttributeDecision", "DefenceDecision",
    "Decisions", "Recommendation", "annotate", "best_row", "bits_shown", "decide", "decide_attack",
    "decide_defences", "finite", "holm", "k_order", "level_rank", "num", "recommend_defence", "relevance",
    "smallest_k_key", "smallest_k_row", "strongest", "strongest_reading", "strongest_rows", "westfall_young",
]

"""What a trained bottleneck bought: where in the model the information is gone, and what it beats.

How far back in the residual stream the protected attributes are unreadable, and whether a
bottleneck beats the inference-time defences at equal answer accuracy.

Both read the audit's own decisions (:func:`logitleak.decisions.decide`, per defence through
:func:`logitleak.decisions.decide_defences`): a residual-stream row is *readable* by the same rule
as everywhere (its p-value below alpha and its accuracy interval above the baseline, the strongest
probe family standing for the layer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from logitleak.decisions.attributes import decide
from logitleak.decisions.defences import decide_defences
from logitleak.decisions.rules import num

EQUAL_ACCURACY = 0.01
"""Two answer accuracies this close count as equal when a bottleneck is set beside another defence."""


def information_gone_from(rows: pd.DataFrame, attributes: Sequence[str], n_layers: int,
                          alpha: float = 0.05) -> dict[str, int | None]:
    """Per attribute, the first decoder layer ``L`` from which no residual-stream layer ``l >= L`` reads
    it (``None``: the last layer still reads it, or no layer was measured) in one defence's rows."""
    best = decide(rows, alpha).best if len(rows) else rows
    out: dict[str, int | None] = {}
    for a in attributes:
        res = best[(best["level"] == "residual") & (best["attribute"] == a)] if len(best) else best
        readable = {int(num(r["layer"])): bool(r["readable"]) for _, r in res.iterrows()}
        if not readable or readable.get(n_layers, True):
            out[a] = None
            continue
        gone = n_layers
        while gone - 1 in readable and not readable[gone - 1]:
            gone -= 1
        out[a] = gone
    return out


def _where(gone: Mapping[str, int | None], n_layers: int) -> str:
    parts = []
    for a, layer in gone.items():
        if layer is None:
            parts.append(f"{a} is still read at the last layer")
        elif layer <= 1:
            parts.append(f"{a} is gone from every layer of the residual stream")
        else:
            parts.append(f"{a} is gone from layer {layer} of {n_layers} on")
    return "; ".join(parts)


def bottleneck_sentences(tradeoff: pd.DataFrame, bottlenecks: Mapping[str, Mapping], n_layers: int,
                         alpha: float = 0.05) -> list[str]:
    """Sentences for the recommendation: per bottleneck, where the protected information is gone
    (``bottlenecks[label]['gone_from_layer']``), and whether some bottleneck beats every
    inference-time defence of the grid at equal answer accuracy (within :data:`EQUAL_ACCURACY`)."""
    defences = decide_defences(tradeoff, alpha)
    out = []
    for label, info in bottlenecks.items():
        d = defences.get(label)
        if d is None:
            continue
        state = "stops every API-level leak" if d.works else f"still leaks {', '.join(d.leaks)} at the API level"
        out.append(f"{label} ({info.get('at', 'output')}) {state} at answer accuracy {d.utility_accuracy:.3f}; "
                   f"residual stream: {_where(info.get('gone_from_layer') or {}, n_layers)}.")
    inference = {k: v for k, v in defences.items() if k not in bottlenecks and k != "none"}
    working = sorted(((d.utility_accuracy, k) for k, d in defences.items() if k in bottlenecks and d.works), reverse=True)
    if not working:
        if bottlenecks:
            out.append("No bottleneck in the grid stops every API-level leak; try a larger lambda or more steps.")
        return out
    acc, label = working[0]
    rivals = [(d.utility_accuracy, k) for k, d in inference.items() if d.works and d.utility_accuracy >= acc - EQUAL_ACCURACY]
    if rivals:
        r_acc, r_label = max(rivals)
        out.append(f"It does not beat the inference-time defences: {r_label} also stops every leak, at answer accuracy "
                   f"{r_acc:.3f} (the bottleneck {label}: {acc:.3f}).")
    else:
        out.append(f"{label} beats every inference-time defence in the grid at equal answer accuracy: none of them stops "
                   f"every API-level leak at an answer accuracy of {acc - EQUAL_ACCURACY:.3f} or more.")
    return out

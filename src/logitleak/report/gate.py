"""The machine-readable verdict (``verdict.json``) and the CI gate (``--fail-on``, exit code 3).

Both read the decisions (:mod:`logitleak.decisions`) and re-derive nothing: per attribute its call,
its strongest API reading with bits and interval, and the smallest k at which it is readable.
A ``defend`` run's gate reads what would be deployed: the recommended defence, or no defence when
none is recommended.
"""

from __future__ import annotations

from pathlib import Path

from logitleak.decisions import AttributeDecision, Decisions, Recommendation, finite, num
from logitleak.decisions.defences import UNDEFENDED
from logitleak.integrity import write_json
from logitleak.report.verdict import verdict_sentence

FAIL_ON: tuple[str, ...] = ("none", "leak", "readable")
"""``leak``: some task-irrelevant attribute is readable at an API level; ``readable``: some attribute
(the task's included) is; ``none``: never."""
GATE_EXIT_CODE = 3
VERDICT_FILE = "verdict.json"


def _number(v) -> float | None:
    return num(v) if finite(v) else None


def reading(row) -> dict | None:
    """One reading (a results row) as plain JSON: where, which probe, bits with interval, score, p."""
    if row is None:
        return None
    return {"level": str(row["level"]), "layer": None if not finite(row.get("layer")) else int(num(row["layer"])),
            "k": None if not finite(row.get("k")) else int(num(row["k"])), "probe": str(row["probe"]),
            "bits": _number(row.get("v_info_bits")),
            "bits_ci": [_number(row.get("v_info_ci_low")), _number(row.get("v_info_ci_high"))],
            "accuracy": _number(row.get("accuracy")),
            "accuracy_ci": [_number(row.get("ci_low")), _number(row.get("ci_high"))],
            "baseline_accuracy": _number(row.get("baseline_accuracy")), "r2": _number(row.get("r2")),
            "p_value": _number(row.get("p_value")), "p_holm": _number(row.get("p_holm")),
            "readable": bool(row["readable"])}


def attribute_record(d: AttributeDecision) -> dict:
    """One attribute's decisions as plain JSON."""
    return {"attribute": d.attribute, "task_relevant": d.task_relevant, "call": d.call, "measured": d.measured,
            "readable": d.readable, "leak": d.leak, "strongest": reading(d.strongest), "smallest_k": d.smallest_k,
            "shown_from": reading(d.first)}


def verdict_record(dec: Decisions) -> dict:
    """A run's decisions as plain JSON (the content of ``verdict.json`` for an audit or probe run)."""
    return {"alpha": dec.alpha, "status": dec.status, "verdict": verdict_sentence(dec),
            "leaks": [d.attribute for d in dec.leaks],
            "readable": [d.attribute for d in dec.attributes.values() if d.readable],
            "api_tests": dec.n_tests, "adjustment": dec.adjustment, "reachable": dec.reachable,
            "attributes": [attribute_record(d) for d in dec.attributes.values()]}


def deployed(rec: Recommendation) -> str:
    """The defence a ``defend`` run's gate reads: the recommended one, else no defence."""
    return rec.label or UNDEFENDED


def defend_record(rec: Recommendation) -> dict:
    """A ``defend`` run's decisions as plain JSON: the recommendation and each defence's verdict."""
    return {"alpha": rec.alpha, "recommendation": {"kind": rec.kind, "label": rec.label, "text": rec.text},
            "deployed": deployed(rec),
            "defences": {label: {"utility_accuracy": _number(d.utility_accuracy),
                                 "utility_loss": _number(d.utility_loss), **verdict_record(d.decisions)}
                         for label, d in rec.defences.items()}}


def failing(dec: Decisions, fail_on: str) -> list[str]:
    """The attributes for which the gate's condition holds (empty: the gate passes). A design that
    cannot reach alpha (too few permutations) clears nothing: every measured attribute the gate
    asks about fails it, marked untestable."""
    if fail_on in ("leak", "readable") and not dec.reachable:
        asked = dec.irrelevant if fail_on == "leak" else list(dec.attributes.values())
        return [f"{d.attribute} (untestable)" for d in asked if d.measured]
    if fail_on == "leak":
        return [d.attribute for d in dec.leaks]
    if fail_on == "readable":
        return [d.attribute for d in dec.attributes.values() if d.readable]
    return []


def defend_failing(rec: Recommendation, fail_on: str) -> list[str]:
    """The gate on a ``defend`` run: :func:`failing` under the deployed defence (under any defence
    when that one was not measured)."""
    chosen = rec.defences.get(deployed(rec))
    decided = [chosen] if chosen is not None else list(rec.defences.values())
    return list(dict.fromkeys(a for d in decided for a in failing(d.decisions, fail_on)))


def write_verdict(out_dir: str | Path, record: dict) -> Path:
    """Write ``verdict.json`` into ``out_dir`` atomically; return its path."""
    path = Path(out_dir) / VERDICT_FILE
    write_json(path, record)
    return path


def gate_message(fail_on: str, names: list[str]) -> str:
    """The line the command prints when the gate fails."""
    what = {"leak": "task-irrelevant attributes readable at the API level",
            "readable": "attributes readable at the API level"}[fail_on]
    return f"--fail-on {fail_on}: {what} ({', '.join(names)}); exit code {GATE_EXIT_CODE}."

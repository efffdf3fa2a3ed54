"""The plain-words verdict of an audit, worded from the decisions (:mod:`logitleak.decisions`).

The rules (Holm across the API-level tests, readable = corrected p < alpha and the accuracy
interval above the baseline, the strongest probe family by V-information, the smallest k with a
readable row) are made in :mod:`logitleak.decisions`; this module only says them:

* **Leak.** A task-irrelevant attribute leaks through the API when some API-level row of it is
  readable. The headline and the leak line quote the *strongest* readable reading (most
  V-information) with its interval; the smallest k with a readable row ("shown from k";
  ``top1_prob`` has no k) is the secondary fact, per level as well, next to the best
  residual-stream layer and the best tuned-lens layer for the same attribute.
* **Wording.** Bits are V-information *estimates* (not a guaranteed bound); a bits figure whose
  interval includes 0 is said to be "not shown above zero".
"""

from __future__ import annotations

import math

import pandas as pd

from logitleak.decisions import AttributeDecision, Decisions, decide, finite, num
from logitleak.decisions.multiplicity import WESTFALL_YOUNG
from logitleak.report.finding import Finding
from logitleak.report.numeric import numeric_findings
from logitleak.report.wording import bits_text, evidence, where

TEST_WORDS: dict[str, str] = {
    "heldout": ("a one-sided held-out log-likelihood-gain test: each cross-validation fold after the first is "
                "scored by a probe trained only on the folds before it, and the gains over a random assignment "
                "of that fold's labels are tested with Student's t over samples or groups"),
    "permutation": ("label-permutation p-values with a refit per permutation, every attribute relabelled by the same "
                    "permutations, never below 1/(1+permutations)"),
}
"""How the method statement describes each value of the results column ``p_test``."""


def _int_or_none(v) -> int | None:
    return int(num(v)) if finite(v) else None


def _ci(row) -> tuple[float, float] | None:
    if finite(row.get("v_info_ci_low")) and finite(row.get("v_info_ci_high")):
        return (num(row["v_info_ci_low"]), num(row["v_info_ci_high"]))
    return None


def _finding(kind: str, text: str, d: AttributeDecision, row, **details) -> Finding:
    return Finding(kind, text, d.attribute, row["level"], _int_or_none(row["k"]), row["probe"],
                   num(row["v_info_bits"]), _ci(row), details=details)


def _internal_comparison(d: AttributeDecision, api_bits: float) -> tuple[str, dict]:
    """How the API figure compares with the best residual layer and the best tuned-lens layer."""
    parts, details = [], {}
    for label, r in (("the residual stream", d.residual), ("the tuned lens", d.tuned)):
        if r is None:
            parts.append(f"{label} was not measured")
            continue
        name = label.split()[-1]
        details[name] = r
        txt = f"{label} holds {bits_text(r)} at its best ({where(r)}, {r['probe']} probe"
        txt += ")" if bool(r["readable"]) else ", not significant above baseline)"
        bits = num(r["v_info_bits"])
        if name == "stream" and math.isfinite(bits) and bits > 0 and math.isfinite(api_bits):
            txt += f"; the API output carries {100 * api_bits / bits:.0f}% of that"
        parts.append(txt)
    return "For comparison, " + "; ".join(parts) + ".", details


def _leak(d: AttributeDecision) -> Finding:
    top, first = d.strongest, d.first
    per_level = []
    for level, r in d.first_per_level.items():
        kk = f"from k={int(num(r['k']))}" if finite(r["k"]) else "(top-1 probability alone)"
        per_level.append(f"{level} {kk} ({evidence(r)})")
    comp, details = _internal_comparison(d, num(top["v_info_bits"]))
    intro = f"LEAK — {d.attribute} (not asked about) can be read from the top-k output:"
    parts = [f"Strongest reading at {where(top)}: {evidence(top)}.",
             f"The smallest k at which it is shown: {where(first)}."]
    parts += [f"{p}." for p in per_level]
    parts.append(comp)
    return _finding("leak", intro + " " + " ".join(parts), d, top, first=first, top=top, first_k=d.smallest_k,
                    intro=intro, parts=parts, **details)


def _no_leak(d: AttributeDecision, alpha: float, reachable: bool = True) -> Finding:
    b = d.strongest
    said = "not readable" if reachable else "not testable (the design cannot reach significance)"
    txt = f"{d.attribute}: {said} from the API output at alpha={alpha:g} (strongest: {where(b)}, {evidence(b)})."
    if d.inside is not None:
        txt += (f" It is still readable inside the model, which an API user does not see: "
                f"{where(d.inside)} ({evidence(d.inside, with_p=False)}).")
    return _finding("no_leak", txt, d, b)


def _headline(dec: Decisions, leaks: list[Finding]) -> Finding:
    status = dec.status
    if status == "empty":
        return Finding("headline", "The results table is empty: nothing was measured, so nothing can be said.",
                       details={"status": status})
    if status == "no_api":
        return Finding("headline", "No API-level output (top-k ids, log-probabilities, logits or the top-1 probability) "
                                   "was measured, so this audit cannot say whether an API user can read anything.",
                       details={"status": status})
    if status == "leak":
        def _one(f: Finding) -> str:
            top, first = f.details["top"], f.details["first"]
            shown = f"shown from k={f.details['first_k']} on {first['level']}" if f.details["first_k"] is not None \
                else f"shown from the top-1 probability on {first['level']}"
            return f"{f.attribute} (strongest at {where(top)}: {bits_text(top)}, {f.probe} probe; {shown})"
        names = ", ".join(_one(f) for f in leaks)
        return Finding("headline", f"An API user CAN read task-irrelevant attributes from the top-k output: {names}.",
                       details={"status": status, "attributes": [f.attribute for f in leaks]})
    if status == "clean":
        measured = [d.attribute for d in dec.irrelevant if d.measured]
        return Finding("headline", f"No leak found: no task-irrelevant attribute ({', '.join(measured)}) can be read "
                                   f"from the top-k output — no API-level test is significant ({_adjusted(dec)}, "
                                   f"alpha={dec.alpha:g}) with accuracy above the majority baseline beyond its "
                                   "interval.", details={"status": status})
    if status == "untestable":
        return Finding("headline", f"No conclusion: {dec.unreachable_text()}. No leak was found, and none could "
                                   "have been.", details={"status": status})
    return Finding("headline", "No attribute other than the task-relevant one was measured at the API level, so there "
                               "is no leakage claim to make.", details={"status": status})


def _task_relevant(d: AttributeDecision) -> Finding:
    if not d.measured:
        return Finding("task_relevant", f"The task-relevant attribute {d.attribute} was not measured at the API level.",
                       d.attribute)
    top = d.strongest
    if d.readable:
        return _finding("task_relevant",
                        f"As expected, the task-relevant attribute {d.attribute} (the one the question asks about) is "
                        f"readable from the API output: strongest at {where(top)} ({evidence(top)}); shown from "
                        f"{where(d.first)}.", d, top)
    return _finding("task_relevant",
                    f"Unexpected: the task-relevant attribute {d.attribute} is NOT readable from the API output "
                    f"(strongest: {where(top)}, {evidence(top)}). The model may not answer the question reliably, "
                    "or the probe set is too small.", d, top)


def _method(dec: Decisions) -> Finding:
    ann, alpha, n_tests = dec.table, dec.alpha, dec.n_tests
    families = ", ".join(dict.fromkeys(ann["probe"]))
    tests = set(ann["p_test"].dropna().astype(str)) if "p_test" in ann.columns else set()
    test_words = " and ".join(TEST_WORDS.get(t, t) for t in sorted(tests)) or "the table's p-values"
    how = ("adjusted by Westfall–Young step-down max-T over the same label permutations" if
           dec.adjustment == WESTFALL_YOUNG else "Holm-Bonferroni corrected")
    correction = (f"At the API levels the p-values ({test_words}) are {how} across all "
                  f"{n_tests} API-level tests (every attribute, level, k and probe family); internal levels "
                  "show per-test p-values, for comparison only." if n_tests else
                  "Internal levels show per-test p-values (no API-level test to correct for).")
    return Finding(
        "method",
        f"How this was decided: a claim needs p < {alpha:g} AND the accuracy interval's lower end above "
        f"the majority baseline. {correction} Each level uses the strongest probe family run "
        f"({families}): the readable one with the most V-information. Bits are V-information estimates "
        f"(H(Y) − held-out cross-entropy) with bootstrap intervals: what that probe family reads on held-out "
        f"samples, an estimate rather than a guaranteed bound on the mutual information; a figure whose "
        f"interval includes 0 is not shown above zero.")


def verdict(results: pd.DataFrame, alpha: float = 0.05, *, decisions: Decisions | None = None) -> list[Finding]:
    """The plain-words verdict, strongest statement first (``decisions``: already taken on ``results``)."""
    dec = decisions if decisions is not None else decide(results, alpha)
    leaks = [_leak(d) for d in dec.irrelevant if d.leak]
    quiet = [_no_leak(d, dec.alpha, dec.reachable) for d in dec.irrelevant if d.measured and not d.leak]
    findings = [_headline(dec, leaks)] + leaks + quiet
    if dec.unmeasured and dec.status != "no_api":
        findings.append(Finding("not_measured", "Not measured at any API level: " + ", ".join(dec.unmeasured) + ".",
                                details={"attributes": dec.unmeasured}))
    if not dec.relevant and len(dec.table):
        findings.append(Finding(
            "task_relevant",
            "No row marks a task-relevant attribute, so every readable attribute above counts as leakage."))
    findings += [_task_relevant(d) for d in dec.relevant]
    if len(dec.table):
        findings += numeric_findings(dec)
        findings.append(_method(dec))
    return findings


def verdict_text(results: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """The verdict as plain sentences, headline first."""
    return [f.text for f in verdict(results, alpha)]


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _adjusted(dec: Decisions) -> str:
    return "Westfall–Young-adjusted" if dec.adjustment == WESTFALL_YOUNG else "Holm-corrected"


def verdict_sentence(dec: Decisions) -> str:
    """The verdict in one sentence (the report's first line and the terminal's last): which
    task-irrelevant attributes an API user can read, and the strongest reading with its interval."""
    status = dec.status
    measured = [d.attribute for d in dec.irrelevant if d.measured]
    if status == "leak":
        leaks = dec.leaks
        top = max(leaks, key=lambda d: num(d.strongest["v_info_bits"]) if finite(d.strongest["v_info_bits"]) else -1)
        r = top.strongest
        of = f" of the {len(measured)}" if len(measured) > 1 else ""
        plural = "s" if len(leaks) > 1 or of else ""
        return (f"LEAK: an API user CAN read {len(leaks)}{of} task-irrelevant attribute{plural} "
                f"from the top-k output ({_names([d.attribute for d in leaks])}); the strongest, {top.attribute}, "
                f"gives {bits_text(r)} at {where(r)} ({r['probe']} probe).")
    if status == "clean":
        return (f"No leak: none of the {len(measured)} task-irrelevant attributes ({_names(measured)}) can be read "
                f"from the API output ({_adjusted(dec)}, alpha={dec.alpha:g})." if len(measured) > 1 else
                f"No leak: the task-irrelevant attribute {measured[0]} cannot be read from the API output "
                f"(alpha={dec.alpha:g}).")
    return _headline(dec, []).text

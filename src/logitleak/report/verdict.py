"""The plain-words verdict of an audit, computed from the results table.

Rules (the same ones the HTML table and the terminal summary mark rows with):

* **Multiple comparisons.** Every API-level row (levels in ``API_LEVELS``: every attribute,
  level, k and probe family) with a p-value is one test of the family that leak claims come
  from; their p-values are Holm-Bonferroni adjusted together (``p_holm``). Rows of the
  internal levels (residual, lenses, full logits) keep their per-test p-value: they are shown
  for comparison, never as an API leak claim.
* **Readable.** A row is readable when its p-value (Holm-adjusted at the API levels) is below
  ``alpha`` AND the lower end of its accuracy interval (``ci_low``) is above the majority
  baseline (``baseline_accuracy``). A missing p-value or interval is never readable.
* **Strongest probe family.** For each (level, layer, k, attribute) one row stands for the
  level: among the families that are readable, the one with the most V-information
  (``v_info_bits``, accuracy breaks ties); if none is readable, the one with the most
  V-information overall. The verdict names the family it used.
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
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from logitleak.results import API_LEVELS, LEVELS, to_frame

GROUP_KEYS: tuple[str, ...] = ("level", "layer", "k", "attribute")
TEST_WORDS: dict[str, str] = {
    "heldout": ("a one-sided held-out log-likelihood-gain test: each cross-validation fold after the first is "
                "scored by a probe trained only on the folds before it, and the gains over a random assignment "
                "of that fold's labels are tested with Student's t over samples or groups"),
    "permutation": "label-permutation p-values with a refit per permutation, never below 1/(1+permutations)",
}
"""How the method statement describes each value of the results column ``p_test``."""
TUNED_LEVELS: tuple[str, ...] = ("tuned_lens_topk", "tuned_lens_answers")


@dataclass(frozen=True)
class Finding:
    """One statement of the verdict.

    ``kind`` is one of ``headline``, ``leak``, ``no_leak``, ``task_relevant``, ``not_measured``,
    ``method``. ``attribute``/``level``/``k``/``probe``/``bits`` describe the row the statement
    rests on, where there is one.
    """

    kind: str
    text: str
    attribute: str | None = None
    level: str | None = None
    k: int | None = None
    probe: str | None = None
    bits: float | None = None
    bits_ci: tuple[float, float] | None = None
    details: dict = field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        return self.text


# ---------------------------------------------------------------------------------------------
# numbers


def num(v) -> float:
    """Any cell -> float, NaN for null / non-numbers."""
    if v is None or v is pd.NA:
        return math.nan
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def finite(v) -> bool:
    return math.isfinite(num(v))


def fmt_num(v, digits: int = 2) -> str:
    f = num(v)
    return "n/a" if not math.isfinite(f) else f"{f:.{digits}f}"


def fmt_p(p) -> str:
    f = num(p)
    if not math.isfinite(f):
        return "n/a"
    if f < 1e-3:
        return f"{f:.1e}"
    return f"{f:.3f}"


def fmt_interval(lo, hi, digits: int = 2) -> str:
    if finite(lo) and finite(hi):
        return f" [{fmt_num(lo, digits)}, {fmt_num(hi, digits)}]"
    return ""


def fmt_acc(row) -> str:
    """'0.83 [0.80, 0.86] vs 0.35' — accuracy, its interval, the majority baseline (for a numeric
    attribute: 'R² 0.91 [0.90, 0.92], MAE 1.3 vs 4.5', the error beside the training mean's)."""
    if not finite(row.get("accuracy")) and finite(row.get("r2")):
        return (f"R² {fmt_num(row.get('r2'))}{fmt_interval(row.get('r2_ci_low'), row.get('r2_ci_high'))}, "
                f"MAE {fmt_num(row.get('mae'))} vs {fmt_num(row.get('baseline_mae'))}")
    s = fmt_num(row.get("accuracy")) + fmt_interval(row.get("ci_low"), row.get("ci_high"))
    if finite(row.get("baseline_accuracy")):
        s += f" vs {fmt_num(row.get('baseline_accuracy'))}"
    return s


def fmt_bits(row) -> str:
    """'0.61 [0.52, 0.70] of 1.58' — V-information in bits, its interval, H(Y)."""
    s = fmt_num(row.get("v_info_bits")) + fmt_interval(row.get("v_info_ci_low"), row.get("v_info_ci_high"))
    if finite(row.get("entropy_bits")):
        s += f" of {fmt_num(row.get('entropy_bits'))}"
    return s


def bits_shown(row) -> bool:
    """Whether the bits' interval lies above zero (a bits figure is only claimed when it does)."""
    return finite(row.get("v_info_ci_low")) and num(row["v_info_ci_low"]) > 0


def bits_text(row) -> str:
    """'0.61 [0.52, 0.70] of 1.58 bits', or '... of 1.58 bits, not shown above zero' when the
    interval includes 0 (or is missing)."""
    s = f"{fmt_bits(row)} bits"
    return s if bits_shown(row) else s + ", not shown above zero"


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray([num(x) for x in pvalues], dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adj
    return out


# ---------------------------------------------------------------------------------------------
# the annotated table


def _truthy(v) -> bool:
    if v is None or v is pd.NA:
        return False
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "y", "t")
    try:
        if isinstance(v, float) and math.isnan(v):
            return False
        return bool(v)
    except (TypeError, ValueError):
        return False


def relevance(results: pd.DataFrame) -> dict[str, bool]:
    """attribute -> whether the question asked about it (any row marks it task-relevant)."""
    out: dict[str, bool] = {}
    for attr, flag in zip(results["attribute"], results["task_relevant"]):
        key = str(attr)
        out[key] = out.get(key, False) or _truthy(flag)
    return out


def level_rank(level: str) -> int:
    return LEVELS.index(level) if level in LEVELS else len(LEVELS)


def annotate(results: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """The table with the verdict's columns added: ``is_api``, ``task_relevant_attr``, ``p_holm``
    (API rows only), ``p_used``, ``significant``, ``above_baseline``, ``readable``, ``leak``
    (readable, API level, task-irrelevant) and ``strength`` (the family-ranking key)."""
    df = to_frame(results).reset_index(drop=True)
    df["attribute"] = df["attribute"].astype(str)
    df["level"] = df["level"].astype(str)
    df["probe"] = df["probe"].astype(object).where(df["probe"].notna(), "probe")
    df["probe"] = df["probe"].astype(str)
    for col in ("accuracy", "baseline_accuracy", "ci_low", "ci_high", "p_value", "v_info_bits",
                "v_info_ci_low", "v_info_ci_high", "entropy_bits", "v_info_frac", "balanced_accuracy",
                "control_accuracy", "selectivity", "macro_f1", "ce_bits"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    rel = relevance(df)
    df["task_relevant_attr"] = df["attribute"].map(rel).astype(bool)
    df["is_api"] = df["level"].isin(API_LEVELS)
    df["p_holm"] = np.nan
    api_idx = df.index[df["is_api"]]
    if len(api_idx):
        df.loc[api_idx, "p_holm"] = holm(df.loc[api_idx, "p_value"])
    df["p_used"] = np.where(df["is_api"], df["p_holm"], df["p_value"])
    df["significant"] = np.isfinite(df["p_used"]) & (df["p_used"] < alpha)
    df["above_baseline"] = (np.isfinite(df["ci_low"]) & np.isfinite(df["baseline_accuracy"])
                            & (df["ci_low"] > df["baseline_accuracy"]))
    if "r2_ci_low" in df.columns:  # numeric attributes: the R² interval above the training-mean predictor's 0
        r2_lo = pd.to_numeric(df["r2_ci_low"], errors="coerce").astype(float)
        df["above_baseline"] |= np.isfinite(r2_lo) & (r2_lo > 0)
    df["readable"] = df["significant"] & df["above_baseline"]
    df["leak"] = df["readable"] & df["is_api"] & ~df["task_relevant_attr"]
    bits = df["v_info_bits"].where(np.isfinite(df["v_info_bits"]), -np.inf)
    acc = df["accuracy"].where(np.isfinite(df["accuracy"]), -np.inf)
    df["strength"] = list(zip(df["readable"].astype(int), bits, acc))
    df["_rank"] = df["level"].map(level_rank)
    return df


def strongest(ann: pd.DataFrame) -> pd.DataFrame:
    """One row per (level, layer, k, attribute): the strongest probe family (see module doc)."""
    if ann.empty:
        return ann.copy()
    order = sorted(range(len(ann)), key=lambda i: ann["strength"].iat[i], reverse=True)
    ranked = ann.iloc[order]
    keyed = ranked.assign(_lk=ranked["layer"].astype("Float64").fillna(-1.0),
                          _kk=ranked["k"].astype("Float64").fillna(-1.0))
    best = keyed.drop_duplicates(subset=["level", "_lk", "_kk", "attribute"], keep="first")
    best = best.sort_values(["_rank", "attribute", "_lk", "_kk"], kind="stable")
    return best.drop(columns=["_lk", "_kk"]).reset_index(drop=True)


def best_row(rows: pd.DataFrame):
    """The row with the most V-information (accuracy breaks ties; readable rows first)."""
    if rows.empty:
        return None
    i = max(range(len(rows)), key=lambda j: rows["strength"].iat[j][1:] + (rows["readable"].iat[j],))
    return rows.iloc[i]


# ---------------------------------------------------------------------------------------------
# describing rows


def where(row) -> str:
    """'topk_ids k=5', 'residual layer 6', 'tuned_lens_topk layer 5, k=10'."""
    parts = []
    if finite(row.get("layer")):
        parts.append(f"layer {int(num(row['layer']))}")
    if finite(row.get("k")):
        parts.append(f"k={int(num(row['k']))}")
    return f"{row['level']} " + ", ".join(parts) if parts else str(row["level"])


def evidence(row, with_p: bool = True) -> str:
    """'mlp probe: 0.61 [0.52, 0.70] of 1.58 bits; accuracy 0.83 [0.80, 0.86] vs baseline 0.35; Holm p=0.001'."""
    score = fmt_acc(row).replace(" vs ", " vs baseline ")
    s = f"{row['probe']} probe: {bits_text(row)}; " + (score if score.startswith("R²") else f"accuracy {score}")
    if with_p:
        if bool(row.get("is_api")) and finite(row.get("p_holm")):
            s += f"; Holm p={fmt_p(row['p_holm'])} (raw {fmt_p(row.get('p_value'))})"
        else:
            s += f"; p={fmt_p(row.get('p_value'))}"
    return s


def _int_or_none(v) -> int | None:
    return int(num(v)) if finite(v) else None


def _ci(row) -> tuple[float, float] | None:
    if finite(row.get("v_info_ci_low")) and finite(row.get("v_info_ci_high")):
        return (num(row["v_info_ci_low"]), num(row["v_info_ci_high"]))
    return None


def _k_sort(row) -> float:
    return num(row["k"]) if finite(row.get("k")) else 1.0  # top1_prob (no k) is a k=1 reading


def _internal_comparison(best: pd.DataFrame, attr: str, api_bits: float) -> tuple[str, dict]:
    """How the API figure compares with the best residual layer and the best tuned-lens layer."""
    rows = best[best["attribute"] == attr]
    parts, details = [], {}
    for label, levels in (("the residual stream", ("residual",)), ("the tuned lens", TUNED_LEVELS)):
        r = best_row(rows[rows["level"].isin(levels)])
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


# ---------------------------------------------------------------------------------------------
# the verdict


def verdict(results: pd.DataFrame, alpha: float = 0.05) -> list[Finding]:
    """The plain-words verdict, strongest statement first (see the module doc for the rules)."""
    ann = annotate(results, alpha)
    best = strongest(ann)
    api = best[best["is_api"]]
    n_tests = int(np.isfinite(ann.loc[ann["is_api"], "p_value"]).sum()) if len(ann) else 0
    rel = relevance(ann) if len(ann) else {}
    irrelevant = [a for a in dict.fromkeys(ann["attribute"]) if not rel.get(a, False)] if len(ann) else []
    relevant = [a for a in dict.fromkeys(ann["attribute"]) if rel.get(a, False)] if len(ann) else []

    findings: list[Finding] = []
    leaks: list[Finding] = []
    quiet: list[Finding] = []
    unmeasured: list[str] = []

    for attr in irrelevant:
        rows = api[api["attribute"] == attr]
        if rows.empty:
            unmeasured.append(attr)
            continue
        readable = rows[rows["readable"]]
        if readable.empty:
            b = best_row(rows)
            txt = (f"{attr}: not readable from the API output at alpha={alpha:g} "
                   f"(strongest: {where(b)}, {evidence(b)}).")
            inner = best_row(best[(best["attribute"] == attr) & ~best["is_api"] & best["readable"]])
            if inner is not None:
                txt += (f" It is still readable inside the model, which an API user does not see: "
                        f"{where(inner)} ({evidence(inner, with_p=False)}).")
            quiet.append(Finding("no_leak", txt, attr, b["level"], _int_or_none(b["k"]), b["probe"],
                                 num(b["v_info_bits"]), _ci(b)))
            continue
        per_level = []
        first_rows = []
        for level in [lv for lv in API_LEVELS if lv in set(readable["level"])]:
            lv = readable[readable["level"] == level]
            first = min((lv.iloc[i] for i in range(len(lv))), key=_k_sort)
            first_rows.append(first)
            kk = f"from k={int(num(first['k']))}" if finite(first["k"]) else "(top-1 probability alone)"
            per_level.append(f"{level} {kk} ({evidence(first)})")
        first = min(first_rows, key=lambda r: (_k_sort(r), -num(r["v_info_bits"]) if finite(r["v_info_bits"]) else 0))
        top = best_row(readable)
        comp, details = _internal_comparison(best, attr, num(top["v_info_bits"]))
        intro = f"LEAK — {attr} (not asked about) can be read from the top-k output:"
        parts = [f"Strongest reading at {where(top)}: {evidence(top)}.",
                 f"The smallest k at which it is shown: {where(first)}."]
        parts += [f"{p}." for p in per_level]
        parts.append(comp)
        txt = intro + " " + " ".join(parts)
        leaks.append(Finding("leak", txt, attr, top["level"], _int_or_none(top["k"]), top["probe"],
                             num(top["v_info_bits"]), _ci(top),
                             details={"first": first, "top": top, "first_k": _int_or_none(first["k"]),
                                      "intro": intro, "parts": parts, **details}))

    # headline
    if len(ann) == 0:
        findings.append(Finding("headline", "The results table is empty: nothing was measured, so nothing can be said."))
    elif api.empty:
        findings.append(Finding(
            "headline",
            "No API-level output (top-k ids, log-probabilities, logits or the top-1 probability) was "
            "measured, so this audit cannot say whether an API user can read anything."))
    elif leaks:
        def _one(f: Finding) -> str:
            top, first = f.details["top"], f.details["first"]
            shown = f"shown from k={f.details['first_k']} on {first['level']}" if f.details["first_k"] is not None \
                else f"shown from the top-1 probability on {first['level']}"
            return f"{f.attribute} (strongest at {where(top)}: {bits_text(top)}, {f.probe} probe; {shown})"
        names = ", ".join(_one(f) for f in leaks)
        findings.append(Finding(
            "headline",
            f"An API user CAN read task-irrelevant attributes from the top-k output: {names}.",
            details={"attributes": [f.attribute for f in leaks]}))
    elif irrelevant and len(unmeasured) < len(irrelevant):
        measured = [a for a in irrelevant if a not in unmeasured]
        findings.append(Finding(
            "headline",
            f"No leak found: no task-irrelevant attribute ({', '.join(measured)}) can be read from the "
            f"top-k output — no API-level test is significant (Holm-corrected, alpha={alpha:g}) with "
            "accuracy above the majority baseline beyond its interval."))
    else:
        findings.append(Finding(
            "headline",
            "No attribute other than the task-relevant one was measured at the API level, so there "
            "is no leakage claim to make."))
    findings += leaks + quiet
    if unmeasured and not api.empty:
        findings.append(Finding("not_measured", "Not measured at any API level: " + ", ".join(unmeasured) + ".",
                                details={"attributes": unmeasured}))

    # the attribute the question asked about
    if not relevant and len(ann):
        findings.append(Finding(
            "task_relevant",
            "No row marks a task-relevant attribute, so every readable attribute above counts as leakage."))
    for attr in relevant:
        rows = api[api["attribute"] == attr]
        if rows.empty:
            findings.append(Finding("task_relevant", f"The task-relevant attribute {attr} was not measured at the API level.", attr))
            continue
        readable = rows[rows["readable"]]
        if not readable.empty:
            first = min((readable.iloc[i] for i in range(len(readable))), key=_k_sort)
            top = best_row(readable)
            findings.append(Finding(
                "task_relevant",
                f"As expected, the task-relevant attribute {attr} (the one the question asks about) is "
                f"readable from the API output: strongest at {where(top)} ({evidence(top)}); shown from "
                f"{where(first)}.",
                attr, top["level"], _int_or_none(top["k"]), top["probe"], num(top["v_info_bits"]), _ci(top)))
        else:
            b = best_row(rows)
            findings.append(Finding(
                "task_relevant",
                f"Unexpected: the task-relevant attribute {attr} is NOT readable from the API output "
                f"(strongest: {where(b)}, {evidence(b)}). The model may not answer the question reliably, "
                "or the probe set is too small.",
                attr, b["level"], _int_or_none(b["k"]), b["probe"], num(b["v_info_bits"]), _ci(b)))

    if len(ann):
        from logitleak.report.flow import numeric_findings

        findings += numeric_findings(ann, best)
        families = ", ".join(dict.fromkeys(ann["probe"]))
        tests = set(ann["p_test"].dropna().astype(str)) if "p_test" in ann.columns else set()
        test_words = " and ".join(TEST_WORDS.get(t, t) for t in sorted(tests)) or "the table's p-values"
        correction = (f"At the API levels the p-values ({test_words}) are Holm-Bonferroni corrected across all "
                      f"{n_tests} API-level tests (every attribute, level, k and probe family); internal levels "
                      "show per-test p-values, for comparison only." if n_tests else
                      "Internal levels show per-test p-values (no API-level test to correct for).")
        findings.append(Finding(
            "method",
            f"How this was decided: a claim needs p < {alpha:g} AND the accuracy interval's lower end above "
            f"the majority baseline. {correction} Each level uses the strongest probe family run "
            f"({families}): the readable one with the most V-information. Bits are V-information estimates "
            f"(H(Y) − held-out cross-entropy) with bootstrap intervals: what that probe family reads on held-out "
            f"samples, an estimate rather than a guaranteed bound on the mutual information; a figure whose "
            f"interval includes 0 is not shown above zero."))
    return findings


def verdict_text(results: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """The verdict as plain sentences, headline first."""
    return [f.text for f in verdict(results, alpha)]

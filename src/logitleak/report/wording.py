"""How the report words numbers and rows: scores with intervals and baselines, bits, p-values, places."""

from __future__ import annotations

from logitleak.decisions.rules import bits_shown, finite, num

CALL_WORDS: dict[str, str] = {"leak": "LEAK", "no_leak": "no leak", "readable": "readable",
                              "not_readable": "NOT readable", "not_measured": "no API rows"}
"""How every table words an attribute's call (:data:`logitleak.decisions.CALLS`)."""


def fmt_num(v, digits: int = 2) -> str:
    """A number with ``digits`` decimals, 'n/a' when missing."""
    f = num(v)
    if not finite(f):
        return "n/a"
    return f"{0.0 if abs(f) < 0.5 * 10 ** -digits else f:.{digits}f}"  # no "-0.00"


P_FLOOR = 1e-10
"""Below this a p-value says only "very small" (a Student-t tail that far out is not resolved by the
test), so it is printed as ``< 1e-10``."""


def fmt_int(v) -> str:
    """A whole number (a layer, a k, a count), '' when missing."""
    f = num(v)
    return str(int(f)) if finite(f) else ""


def fmt_p(p) -> str:
    """A p-value: three decimals, scientific below 0.001, ``< 1e-10`` below :data:`P_FLOOR`, 'n/a' when missing."""
    f = num(p)
    if not finite(f):
        return "n/a"
    if f < P_FLOOR:
        return f"< {P_FLOOR:.0e}"
    if f < 1e-3:
        return f"{f:.1e}"
    return f"{f:.3f}"


def fmt_interval(lo, hi, digits: int = 2) -> str:
    """' [lo, hi]', or '' when either end is missing."""
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


def bits_text(row) -> str:
    """'0.61 [0.52, 0.70] of 1.58 bits', or '... of 1.58 bits, not shown above zero' when the
    interval includes 0 (or is missing)."""
    s = f"{fmt_bits(row)} bits"
    return s if bits_shown(row) else s + ", not shown above zero"


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

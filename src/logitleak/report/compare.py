"""Two or more runs side by side: their readings, the differences with intervals, the changed decisions.

Works for audit vs audit, audit vs defend, white-box vs endpoint.

Each run's decisions are its own (:func:`logitleak.decisions.decide`, or once per defence of a
``defend`` run), taken once when the run is loaded. Every run is compared with the first on the
(level, layer, k) cells both measured, so an audit at k = 1..20 and a defence measured at k = 20
meet at k = 20, and the same audit meets a defence at k = 1 at k = 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from logitleak.decisions import Decisions, decide, decide_defences, level_rank, num, strongest_reading
from logitleak.errors import LogitleakError
from logitleak.report.wording import CALL_WORDS
from logitleak.results import read_results

Z95 = 1.959963984540054
"""The normal quantile of a two-sided 95% interval."""


@dataclass(frozen=True)
class Run:
    """One run to compare: its name, where it came from, what kind of run, and its decisions."""

    name: str
    path: Path
    kind: str                      # "audit" (audit, demo or probe: a results table) or "defence" (one of a defend run)
    decisions: Decisions = field(repr=False)
    run_info: dict = field(default_factory=dict, repr=False)


def _run_info(path: Path) -> dict:
    try:
        return json.loads((path / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def _names(paths: Sequence[Path]) -> list[str]:
    """Each run's name: its folder's name, or its path when two folders share a name."""
    names = [p.name or str(p) for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names)]


def load_run(path: str | Path, name: str | None = None) -> list[Run]:
    """The runs in one output folder: one for an audit, demo or probe run (``results.parquet``), one
    per defence for a defend run (``tradeoff.json``)."""
    path = Path(path)
    name = name or path.name or str(path)
    if not path.is_dir():
        raise LogitleakError(f"{path} is not a run's output folder; pass the --out folder of an audit, demo, probe "
                             "or defend run.")
    info = _run_info(path)
    if (path / "results.parquet").is_file():
        return [Run(name, path, "audit", decide(read_results(path)), info)]
    if (path / "tradeoff.json").is_file():
        try:
            tradeoff = pd.DataFrame(json.loads((path / "tradeoff.json").read_text()))
        except ValueError:
            raise LogitleakError(f"{path / 'tradeoff.json'} is not a readable trade-off table; rerun `logitleak defend` "
                                 "into that folder to rewrite it.") from None
        return [Run(f"{name} [{label}]", path, "defence", d.decisions, info)
                for label, d in decide_defences(tradeoff).items()]
    raise LogitleakError(f"{path} holds neither results.parquet nor tradeoff.json; pass the --out folder of an audit, "
                         "demo, probe or defend run.")


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Every run in ``paths`` (a defend folder gives one run per defence), at least two in all."""
    paths = [Path(p) for p in paths]
    runs = [run for p, n in zip(paths, _names(paths)) for run in load_run(p, n)]
    if len(runs) < 2:
        raise LogitleakError("`compare` needs at least two runs; pass two or more output folders (a defend folder "
                             "counts once per defence).")
    return runs


def _cells_of(table: pd.DataFrame) -> list[tuple]:
    """Each row's (level, layer, k), a missing layer or k as -1."""
    return list(zip(table["level"], table["layer"].astype("Float64").fillna(-1.0),
                    table["k"].astype("Float64").fillna(-1.0)))


def _cells(dec: Decisions) -> set[tuple]:
    return set(_cells_of(dec.table))


def delta_interval(a, b) -> tuple[float, float, float]:
    """``b - a`` in bits with a 95% interval, from each reading's own interval read as a normal one
    (so for two runs on the same samples, which move together, the interval is conservative)."""
    d = num(b["v_info_bits"]) - num(a["v_info_bits"])
    se = [(num(r.get("v_info_ci_high")) - num(r.get("v_info_ci_low"))) / (2 * Z95) for r in (a, b)]
    if not all(math.isfinite(s) for s in se):
        return d, math.nan, math.nan
    half = Z95 * math.hypot(*se)
    return d, d - half, d + half


@dataclass(frozen=True)
class Comparison:
    """The runs, their readings against the first run's, and the decisions that changed."""

    runs: list[Run]
    readings: pd.DataFrame = field(repr=False)
    """One row per later run, attribute and level: that run's strongest reading and the first run's
    on the (level, layer, k) cells both measured, ``delta_bits`` with its interval, and whether the
    reading's readable call changed."""
    calls: pd.DataFrame = field(repr=False)
    """One row per attribute: each run's call (:data:`logitleak.decisions.CALLS`)."""
    changes: list[dict]
    left_out: list[str]

    @property
    def baseline(self) -> Run:
        return self.runs[0]


def _reading(prefix: str, r) -> dict:
    return {f"{prefix}layer": r["layer"], f"{prefix}k": r["k"], f"{prefix}probe": r["probe"],
            f"{prefix}bits": num(r["v_info_bits"]), f"{prefix}bits_ci_low": num(r.get("v_info_ci_low")),
            f"{prefix}bits_ci_high": num(r.get("v_info_ci_high")), f"{prefix}accuracy": num(r.get("accuracy")),
            f"{prefix}baseline_accuracy": num(r.get("baseline_accuracy")), f"{prefix}r2": num(r.get("r2")),
            f"{prefix}readable": bool(r["readable"]), f"{prefix}leak": bool(r["leak"])}


def _shared(best: pd.DataFrame, cells: set[tuple]) -> pd.DataFrame:
    return best[[c in cells for c in _cells_of(best)]]


def paired_readings(base: Run, run: Run, attrs: Sequence[str]) -> list[dict]:
    """``run`` against ``base`` on the cells both measured: per attribute and level, each one's
    strongest reading there and the difference in bits with its interval."""
    cells = _cells(base.decisions) & _cells(run.decisions)
    mine, theirs = _shared(run.decisions.best, cells), _shared(base.decisions.best, cells)
    rows = []
    for attr in attrs:
        m, t = mine[mine["attribute"] == attr], theirs[theirs["attribute"] == attr]
        for level in sorted(set(m["level"]), key=level_rank):
            r, b = strongest_reading(m[m["level"] == level]), strongest_reading(t[t["level"] == level])
            if b is None:  # the cell is shared, this attribute at it is not
                continue
            d, lo, hi = delta_interval(b, r)
            rows.append({"run": run.name, "attribute": attr, "level": level, **_reading("", r),
                         **_reading("base_", b), "delta_bits": d, "delta_ci_low": lo, "delta_ci_high": hi,
                         "readable_changed": bool(r["readable"]) != bool(b["readable"])})
    return rows


def compare_runs(runs: Sequence[Run]) -> Comparison:
    """Compare every run with the first: each attribute's call per run, the calls that changed, and
    the readings on the cells each run shares with the first."""
    runs = list(runs)
    attrs = [a for a in runs[0].decisions.attributes if all(a in r.decisions.attributes for r in runs[1:])]
    every = dict.fromkeys(a for r in runs for a in r.decisions.attributes)
    if not attrs:
        raise LogitleakError("The runs share no attribute, so there is nothing to compare; compare runs on the same "
                             "probe set (or with --attributes in common).")
    base = runs[0]
    for run in runs[1:]:
        if not _cells(base.decisions) & _cells(run.decisions):
            raise LogitleakError(f"{run.name} shares no level, layer and k with {base.name}, so their readings cannot be "
                                 "compared; compare runs that measured some of the same levels (e.g. the API's top-k "
                                 "at the same k).")
    readings = pd.DataFrame([row for run in runs[1:] for row in paired_readings(base, run, attrs)])
    calls = pd.DataFrame([{"attribute": a, **{run.name: run.decisions.attributes[a].call for run in runs}}
                          for a in attrs])
    changes = [{"attribute": a, "from_run": base.name, "from": base.decisions.attributes[a].call,
                "run": run.name, "to": run.decisions.attributes[a].call}
               for run in runs[1:] for a in attrs
               if run.decisions.attributes[a].call != base.decisions.attributes[a].call]
    return Comparison(runs=runs, readings=readings, calls=calls, changes=changes,
                      left_out=[a for a in every if a not in attrs])


def change_sentences(cmp: Comparison) -> list[str]:
    """One sentence per changed decision, e.g. 'size: LEAK in demo, no leak in defend [topk:1]'."""
    return [f"{c['attribute']}: {CALL_WORDS[c['from']]} in {c['from_run']}, {CALL_WORDS[c['to']]} in {c['run']}."
            for c in cmp.changes]


def comparison_record(cmp: Comparison) -> dict:
    """The comparison as plain JSON: the runs, each attribute's call per run, and what changed."""
    return {"baseline": cmp.baseline.name,
            "runs": [{"name": r.name, "path": str(r.path), "kind": r.kind, "status": r.decisions.status} for r in cmp.runs],
            "calls": cmp.calls.to_dict(orient="records"), "changes": cmp.changes,
            "attributes_left_out": cmp.left_out}

"""The `logitleak probe` command: probe a features file against a labels file."""

from __future__ import annotations

from pathlib import Path

import typer

from logitleak.cli.flags import check_fail_on, exit_on_gate, fail_on_option
from logitleak.errors import LogitleakError


def _fmt(x, spec: str = ".3f") -> str:
    try:
        if x is None or x != x:
            return "-"
        return format(float(x), spec)
    except (TypeError, ValueError):
        return "-"


def summary_table(df, title: str = "Probe results", alpha: float = 0.05, *, decisions=None):
    """A rich table: level, layer, attribute, probe, accuracy vs baseline, 95% CI, p, bits, and the
    decision (:mod:`logitleak.decisions`; ``decisions``: already taken on ``df``): p is Holm-adjusted
    across the API-level rows, and a row is readable when it is below ``alpha`` with its interval
    above the baseline."""
    from rich import box
    from rich.table import Table

    from logitleak.decisions import decide

    ann = (decisions if decisions is not None else decide(df, alpha)).table
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for col, justify in (("level", "left"), ("layer", "right"), ("attribute", "left"), ("probe", "left"),
                         ("acc", "right"), ("base", "right"), ("95% CI", "right"), ("p", "right"),
                         ("bits", "right"), ("%H", "right"), ("call", "left")):
        table.add_column(col, justify=justify, no_wrap=True)
    for r, a in zip(df.itertuples(index=False), ann.itertuples(index=False)):
        layer = "-" if r.layer is None or str(r.layer) == "<NA>" else str(r.layer)
        attr = f"{r.attribute}*" if bool(r.task_relevant) else str(r.attribute)
        frac = "-" if r.v_info_frac != r.v_info_frac else f"{100 * r.v_info_frac:.0f}"
        call = ("LEAK" if a.leak else "readable") if a.readable else ""
        table.add_row(str(r.level), layer, attr, str(r.probe), _fmt(r.accuracy), _fmt(r.baseline_accuracy),
                      f"{_fmt(r.ci_low, '.2f')}-{_fmt(r.ci_high, '.2f')}", _fmt(a.p_used, ".2g"),
                      _fmt(r.v_info_bits, ".2f"), frac, call)
    return table


def probe(
    features: Path = typer.Option(
        ..., "--features",
        help="Features: .npy (level = file stem), .npz (one level per array) or .parquet (numeric columns); "
             "3-D arrays (n, layers, d) give one feature set per layer."),
    labels: Path = typer.Option(
        ..., "--labels",
        help="Labels: .csv or .parquet, one column per attribute (plus an optional group column)."),
    out: Path = typer.Option(..., "--out", help="Output directory for results.parquet / .csv / .json."),
    group_column: str | None = typer.Option(
        None, "--group-column",
        help="Label column holding group ids; samples of a group never straddle train and test."),
    task: str | None = typer.Option(None, "--task", help="The attribute the task asks about (marked task-relevant)."),
    probes: str = typer.Option("linear,mlp", "--probes", help="Comma-separated probe families: linear, mlp."),
    mlp_levels: str = typer.Option(
        "api", "--mlp-levels",
        help="Feature sets (by name) the MLP probe runs on: comma-separated names, 'all', or 'api' (the default: "
             "sets named like the API levels, e.g. topk_ids, topk_logprobs, where the linear probe reads least, as "
             "in `audit`); the MLP is the costly family."),
    folds: int = typer.Option(5, "--folds", min=2, help="Cross-validation folds."),
    permutations: int = typer.Option(
        0, "--permutations", min=0,
        help="Label permutations with a refit each, the same for every attribute: the exact but costly check, "
             "adjusted over the API rows by Westfall–Young; fewer than 1/alpha can call nothing (default 0: the "
             "held-out test)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples for the intervals (0 = none)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Random seed (splits, permutations, control task, bootstrap, MLP init)."),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cuda when available, else cpu)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    duplicates: str = typer.Option(
        "group", "--duplicates",
        help="Rows whose features repeat another row's in every feature set (exactly or within "
             "--duplicate-tolerance): 'group' keeps each set of repeats on one side of every split and counts it as "
             "one unit (the default), 'refuse' stops with an error naming them, 'keep' takes them as given."),
    duplicate_tolerance: float = typer.Option(
        1e-4, "--duplicate-tolerance", min=0.0,
        help="Rows count as repeats when every feature differs by at most this times its column's spread (0: exact "
             "repeats only)."),
    fail_on: str = fail_on_option(),
    force: bool = typer.Option(False, "--force", help="Replace an earlier probe run's results in --out (never files "
                                                      "logitleak did not write)."),
) -> None:
    """Probe every feature set for every label attribute; write results and print a summary."""
    from rich.console import Console

    from logitleak.data.features import load_features, load_labels
    from logitleak.decisions import decide
    from logitleak.decisions.multiplicity import WESTFALL_YOUNG
    from logitleak.models.devices import check_device
    from logitleak.probing.families import PROBE_FAMILIES
    from logitleak.probing.sweep import evaluate_sweep
    from logitleak.report.console import print_table
    from logitleak.report.gate import failing, verdict_record, write_verdict
    from logitleak.results import write_results
    from logitleak.userpaths import claim_out_dir

    gate = check_fail_on(fail_on)
    out_dir = claim_out_dir(out, force=force)  # before any work: a path that cannot hold results fails now
    check_device(device)
    families = tuple(p.strip() for p in probes.split(",") if p.strip())
    unknown = [p for p in families if p not in PROBE_FAMILIES]
    if not families or unknown:
        raise LogitleakError(
            f"--probes {probes!r} names unknown families ({', '.join(unknown) or 'none given'}); use a comma-separated "
            f"subset of {', '.join(PROBE_FAMILIES)}.")
    feats = load_features(features)
    mlp_on = _mlp_levels(mlp_levels, feats) if "mlp" in families else None
    label_map, groups = load_labels(labels, group_column)
    n_labels = len(next(iter(label_map.values())))
    if n_labels == 0:
        raise LogitleakError(f"Labels file {labels} has no rows; give one row per sample (in the order of {features}).")
    for key, X in feats.items():
        if len(X) != n_labels:
            raise LogitleakError(
                f"{features} has {len(X)} rows (level '{key[0]}') but {labels} has {n_labels}; both files must list the "
                f"same samples in the same order.")
    if task is not None and task not in label_map:
        raise LogitleakError(
            f"--task '{task}' is not a column of {labels} (attributes: {', '.join(label_map)}); pass one of those.")
    warn = Console(stderr=True, highlight=False)
    groups = _repeats(feats, groups, features, duplicates, duplicate_tolerance, folds, warn)
    if group_column is None:
        _suggest_groups(feats, groups, features, warn)
    out_dir.begin({"features": str(features), "labels": str(labels), "group_column": group_column, "task": task},
                  "probe")
    df = evaluate_sweep(feats, label_map, groups=groups, task_attribute=task, probes=families, n_folds=folds,
                        n_permutations=permutations, n_bootstrap=bootstrap, seed=seed, device=device,
                        progress=progress, mlp_levels=mlp_on)
    write_results(df, out)
    dec = decide(df)  # once: the table, verdict.json and the gate read these
    write_verdict(out, verdict_record(dec))
    out_dir.finish({"rows": len(df), "seed": seed, "folds": folds,
                    "permutations": permutations, "bootstrap": bootstrap, "probes": list(families)})
    out_dir.release()
    console = Console()
    print_table(console, summary_table(df, title=f"Probe results ({len(df)} rows, {folds}-fold CV, "
                                       + (f"{permutations} permutations)" if permutations else "held-out gain test)"),
                                       decisions=dec))
    adjusted = ("Westfall–Young-adjusted over the same permutations" if dec.adjustment == WESTFALL_YOUNG
                else "Holm-adjusted") + " across the API-level rows; "
    console.print(f"Wrote {out / 'results.parquet'}, results.csv, results.json and verdict.json. "
                  "acc: held-out accuracy; base: majority-class baseline; p: " + ("permutation test; " if permutations else
                  "held-out gain test on forward-chained folds (column p_test); ") + adjusted +
                  "bits: V-information H(Y) - CE, %H: as a percentage of H(Y); * = task attribute; call: readable "
                  "(p < 0.05 with the interval above the baseline), LEAK when that is a task-irrelevant attribute at an "
                  "API level.")
    unreachable = dec.unreachable_text()
    if unreachable is not None:
        warn.print(f"Warning: no call can be made: {unreachable}.", style="yellow")
    if mlp_on is not None:
        n_mlp = sum(key[0] in mlp_on for key in feats)
        console.print(f"The MLP probe ran on {n_mlp} of {len(feats)} feature sets (--mlp-levels {mlp_levels}); "
                      "pass --mlp-levels all to run it on every set.")
    exit_on_gate(console, gate, failing(dec, gate))


def _repeats(feats, groups, source: Path, mode: str, tolerance: float, folds: int, warn):
    """The groups to probe with: duplicate rows grouped (and the user's groups merged), refused,
    or kept as given (``--duplicates``), with a warning naming how many."""
    from logitleak.data.repeats import find_repeats

    if mode not in ("group", "refuse", "keep"):
        raise LogitleakError(f"--duplicates {mode!r} is not one of group, refuse, keep; pick one.")
    if mode == "keep":
        return groups
    rep = find_repeats(feats, groups, tolerance)
    if not rep.repeated:
        return groups
    pairs = ", ".join(f"{a + 1} and {b + 1}" for a, b in rep.examples)
    what = (f"{rep.repeated} row(s) of {source} repeat an earlier row's features in every feature set "
            f"({rep.sets} set(s) of repeats; e.g. rows {pairs}, row 1 = the first)")
    if mode == "refuse":
        raise LogitleakError(f"{what}; remove the repeats, or pass --duplicates group to keep each set on one side "
                             f"of every split (or --duplicates keep if they are distinct samples).")
    n_units = len(set(rep.groups.tolist()))
    if n_units < folds:
        raise LogitleakError(f"{what}, which leaves {n_units} distinct units for {folds} folds; pass --duplicates keep "
                             f"if identical rows are distinct samples, or use fewer folds.")
    warn.print(f"Warning: {what}; each set is kept on one side of every split and counts as one unit in the tests "
               f"and intervals (--duplicates keep takes them as given).", style="yellow")
    return rep.groups


def _suggest_groups(feats, groups, source: Path, warn) -> None:
    """A ``--group-column`` suggestion when the rows come in tight clusters the labels file does not declare."""
    from logitleak.data.repeats import CLUSTER_RATIO, clustering_ratio

    ratio = clustering_ratio(feats, groups)
    if ratio < CLUSTER_RATIO:
        how = (f"each row's nearest neighbour is {1 / ratio:.1f}x closer than in the same features with the "
               f"clusters shuffled away" if ratio > 0 else "most rows have an identical twin")
        warn.print(f"Warning: the rows of {source} look clustered ({how}); if several rows come from one "
                   f"source (an image, a user, a document), pass --group-column naming it, or the p-values and "
                   f"intervals treat dependent rows as independent and come out too small.", style="yellow")


def _mlp_levels(spec: str, feats) -> set[str] | None:
    """``--mlp-levels`` -> the level names the MLP runs on (None: all)."""
    from logitleak.levels.table import API_LEVELS

    names = [x.strip() for x in spec.split(",") if x.strip()]
    if names == ["all"]:
        return None
    if names == ["api"]:
        return set(API_LEVELS)
    levels = {key[0] for key in feats}
    unknown = [x for x in names if x not in levels]
    if not names or unknown:
        raise LogitleakError(
            f"--mlp-levels {spec!r} names {', '.join(map(repr, unknown)) or 'no feature set'}, which the features file "
            f"does not have; pass 'all', 'api' or some of: {', '.join(sorted(levels))}.")
    return set(names)


def register(app: typer.Typer) -> None:
    """Add the ``probe`` command to the app."""
    app.command("probe")(probe)

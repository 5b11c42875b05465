#!/usr/bin/env python
"""Summaries, box plots and paired tests for a benchmark TSV (shared by every suite).

Input: a TSV (as :func:`inrreg_pipeline.metrics.write_rows_tsv` writes it; ``n/a`` is missing)
with one row per pair and method::

    suite  pair  method  [stratum columns, e.g. level, modality, stage]  metric columns...

``pair`` names the image pair (the unit of pairing); ``strata`` are columns that split the rows
into separate comparisons (e.g. the motion level): a pair is paired with itself only within one
stratum. Outputs, written into ``--out``:

* ``summary.md``: per stratum, a table of mean ± std (and n) of every metric for every method,
  then the paired comparison of the ``--reference`` method against every other method on the
  pairs both have (n, mean of reference - other, Wilcoxon signed-rank p, two-sided);
* ``box_<metric>.png``: one box plot per metric (methods side by side, one panel per stratum).

Paired test (:func:`paired_comparison`): differences are ``reference - other`` over the common
pairs where both values are finite. ``n < 2``: no test (p = NaN, ``note = "n<2"``). All differences
zero: no test (p = 1.0, ``note = "all differences zero"``; scipy would raise or warn). Otherwise
``scipy.stats.wilcoxon(d, zero_method="wilcox")`` (zero differences dropped, as Wilcoxon's
original test; ``note = "k zero differences dropped"`` when any).

    python benchmarks/report.py results/pairs.tsv --out results/ --reference two-network \\
        --strata level modality --metrics relative_distance success
"""
from __future__ import annotations

import argparse
import csv
import math
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

#: Columns that identify a row rather than measure it (never treated as metrics).
ID_COLUMNS = ("suite", "pair", "method")


def _number(text: str) -> float | str:
    if text in ("n/a", ""):
        return math.nan
    try:
        return float(text)
    except ValueError:
        return text


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a TSV as dicts; numeric cells become floats, ``n/a``/empty become NaN."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = [c for c in ID_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (need {', '.join(ID_COLUMNS)})")
        return [{k: (v if k in ID_COLUMNS else _number(v)) for k, v in row.items()} for row in reader]


def metric_columns(rows: Sequence[Mapping], exclude: Iterable[str] = ()) -> list[str]:
    """Columns (first-seen order) whose non-missing values are all numbers, minus ID and ``exclude``."""
    skip = set(ID_COLUMNS) | set(exclude)
    cols: list[str] = []
    for row in rows:
        cols.extend(k for k in row if k not in cols and k not in skip)
    return [c for c in cols if all(isinstance(r.get(c, math.nan), (int, float)) for r in rows)
            and any(np.isfinite(r.get(c, math.nan)) for r in rows)]


def _stratum_key(row: Mapping, strata: Sequence[str]) -> tuple:
    return tuple(_fmt_value(row.get(s)) for s in strata)


def _fmt_value(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _methods(rows: Sequence[Mapping]) -> list[str]:
    return list(OrderedDict.fromkeys(r["method"] for r in rows))


def _values(rows: Sequence[Mapping], method: str, metric: str) -> np.ndarray:
    v = np.array([r.get(metric, math.nan) for r in rows if r["method"] == method], dtype=float)
    return v[np.isfinite(v)]


def summarise(rows: Sequence[Mapping], metrics: Sequence[str]) -> list[dict]:
    """Per method (first-seen order) and metric: n (finite values), mean, std (ddof=0)."""
    out = []
    for method in _methods(rows):
        for metric in metrics:
            v = _values(rows, method, metric)
            out.append({"method": method, "metric": metric, "n": int(v.size),
                        "mean": float(v.mean()) if v.size else math.nan,
                        "std": float(v.std()) if v.size else math.nan})
    return out


def paired_comparison(rows: Sequence[Mapping], reference: str, metric: str) -> list[dict]:
    """``reference`` against every other method on their common pairs (see the module docstring).

    Returns one dict per other method: ``method``, ``n`` (pairs used), ``mean_difference``
    (reference - other), ``p_value`` (Wilcoxon signed-rank, two-sided) and ``note``.
    """
    from scipy.stats import wilcoxon

    by_method: dict[str, dict[str, float]] = {}
    for r in rows:
        v = r.get(metric, math.nan)
        if isinstance(v, (int, float)) and np.isfinite(v):
            if r["pair"] in by_method.setdefault(r["method"], {}):
                raise ValueError(f"pair '{r['pair']}' appears twice for method '{r['method']}' in one stratum")
            by_method[r["method"]][r["pair"]] = float(v)
    ref = by_method.get(reference, {})
    out = []
    for method in _methods(rows):
        if method == reference:
            continue
        other = by_method.get(method, {})
        common = [p for p in ref if p in other]
        d = np.array([ref[p] - other[p] for p in common], dtype=float)
        row = {"method": method, "n": int(d.size), "mean_difference": float(d.mean()) if d.size else math.nan,
               "p_value": math.nan, "note": ""}
        if d.size < 2:
            row["note"] = "n<2"
        elif np.all(d == 0):
            row["p_value"], row["note"] = 1.0, "all differences zero"
        else:
            zeros = int(np.sum(d == 0))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scipy warns on small n / ties; the p-value is still defined
                row["p_value"] = float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
            if zeros:
                row["note"] = f"{zeros} zero differences dropped"
        out.append(row)
    return out


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    if x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def markdown_summary(rows: Sequence[Mapping], metrics: Sequence[str], reference: str | None = None,
                     strata: Sequence[str] = (), title: str | None = None, digits: int = 3) -> str:
    """The Markdown text of ``summary.md`` (see the module docstring)."""
    lines = [f"# {title}" if title else "# Benchmark summary", ""]
    suites = sorted({r["suite"] for r in rows})
    lines += [f"Suite(s): {', '.join(suites)}. {len(rows)} rows. Cells: mean ± std (n).", ""]
    groups: "OrderedDict[tuple, list]" = OrderedDict()
    for r in rows:
        groups.setdefault(_stratum_key(r, strata), []).append(r)
    for key, sel in groups.items():
        if strata:
            lines += ["## " + ", ".join(f"{s} = {k}" for s, k in zip(strata, key)), ""]
        lines.append("| method | " + " | ".join(metrics) + " |")
        lines.append("|---|" + "---|" * len(metrics))
        stats = {(s["method"], s["metric"]): s for s in summarise(sel, metrics)}
        for method in _methods(sel):
            cells = []
            for m in metrics:
                s = stats[(method, m)]
                cells.append(f"{_fmt(s['mean'], digits)} ± {_fmt(s['std'], digits)} ({s['n']})" if s["n"] else "n/a")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
        if reference is not None and reference in _methods(sel) and len(_methods(sel)) > 1:
            lines += [f"Paired comparison, {reference} − other (Wilcoxon signed-rank, two-sided):", "",
                      "| metric | other method | n pairs | mean difference | p | note |",
                      "|---|---|---|---|---|---|"]
            for m in metrics:
                for c in paired_comparison(sel, reference, m):
                    lines.append(f"| {m} | {c['method']} | {c['n']} | {_fmt(c['mean_difference'], digits)} | "
                                 f"{_fmt(c['p_value'], 4)} | {c['note']} |")
            lines.append("")
    return "\n".join(lines)


def box_plots(rows: Sequence[Mapping], metrics: Sequence[str], out_dir: str | Path,
              strata: Sequence[str] = ()) -> list[Path]:
    """One PNG per metric, ``box_<metric>.png``: methods side by side, one panel per stratum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: "OrderedDict[tuple, list]" = OrderedDict()
    for r in rows:
        groups.setdefault(_stratum_key(r, strata), []).append(r)
    written = []
    for metric in metrics:
        fig, axes = plt.subplots(1, len(groups), figsize=(max(4.0, 2.2 * len(groups) + 1.5), 3.6), squeeze=False,
                                 sharey=True)
        for ax, (key, sel) in zip(axes[0], groups.items()):
            methods = _methods(sel)
            data = [_values(sel, m, metric) for m in methods]
            ax.boxplot([d if d.size else np.array([np.nan]) for d in data], showmeans=True)
            ax.set_xticks(range(1, len(methods) + 1), methods, rotation=30, ha="right", fontsize=7)
            if strata:
                ax.set_title(", ".join(f"{s}={k}" for s, k in zip(strata, key)), fontsize=8)
        axes[0][0].set_ylabel(metric)
        fig.tight_layout()
        path = out_dir / f"box_{''.join(c if c.isalnum() or c in '-_' else '_' for c in metric)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def trade_off_plot(rows: Sequence[Mapping], out_dir: str | Path, x: str = "sd_log_j", y: str = "dice_mean",
                   where: Mapping[str, object] | None = None, name: str = "tradeoff_dice_vs_sd_log_j.png") -> Path:
    """One point per method: mean ``y`` against mean ``x`` over its rows (matching ``where``), with
    the standard error of ``y`` as a bar; the accuracy/regularity trade-off users choose on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if all(r.get(k) == v for k, v in (where or {}).items())]
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    for method in _methods(sel):
        xs, ys = _values(sel, method, x), _values(sel, method, y)
        if not xs.size or not ys.size:
            continue
        err = ys.std(ddof=1) / np.sqrt(ys.size) if ys.size > 1 else 0.0
        ax.errorbar(xs.mean(), ys.mean(), yerr=err, fmt="o", capsize=3)
        ax.annotate(method, (xs.mean(), ys.mean()), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlabel(f"{x} (mean over pairs; lower = more regular)")
    ax.set_ylabel(f"{y} (mean over pairs)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out_dir) / name
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(tsv: str | Path, out_dir: str | Path, metrics: Sequence[str] | None = None,
                 reference: str | None = None, strata: Sequence[str] = (), title: str | None = None,
                 plots: bool = True) -> Path:
    """Read ``tsv``, write ``summary.md`` (and box plots) into ``out_dir``; return the summary path."""
    rows = read_rows(tsv)
    if not rows:
        raise ValueError(f"{tsv}: no rows")
    unknown = [s for s in strata if s not in rows[0]]
    if unknown:
        raise ValueError(f"{tsv}: no stratum column(s) {', '.join(unknown)}")
    metrics = list(metrics) if metrics else metric_columns(rows, exclude=strata)
    missing = [m for m in metrics if m not in rows[0]]
    if missing:
        raise ValueError(f"{tsv}: no metric column(s) {', '.join(missing)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "summary.md"
    path.write_text(markdown_summary(rows, metrics, reference, strata, title))
    if plots:
        box_plots(rows, metrics, out_dir, strata)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tsv", type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--metrics", nargs="+", help="metric columns (default: every numeric column)")
    ap.add_argument("--reference", help="method compared against every other one (paired)")
    ap.add_argument("--strata", nargs="+", default=[], help="columns that split the comparison (e.g. level)")
    ap.add_argument("--title")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    print(write_report(args.tsv, args.out, args.metrics, args.reference, args.strata, args.title,
                       plots=not args.no_plots).read_text())


if __name__ == "__main__":
    main()

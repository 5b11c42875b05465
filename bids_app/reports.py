"""Participant reports (``sub-X.html``), ``logs/CITATION.md`` and the group level."""
from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
from pathlib import Path

from .interfaces import atomic_write_text

#: group-level metrics drawn (column of the evaluation TSV, title, lower is better)
GROUP_METRICS = (("mean_dice", "Mean Dice (higher is better)"), ("mean_hd95_mm", "Mean HD95, mm"),
                 ("folding_percent", "% voxels with det J <= 0"), ("log_jacobian_std", "SD of log det J"),
                 ("runtime_s", "Registration runtime, s"))


def _sections(figures: list[Path]) -> str:
    out = []
    for fig in figures:
        title = fig.stem.replace("_", " ")
        out.append(f"<h3>{html.escape(title)}</h3>\n<div class='fig'><object type='image/svg+xml' "
                   f"data='{html.escape(fig.as_posix())}'>{html.escape(fig.name)}</object></div>")
    return "\n".join(out)


def _table_html(path: Path, columns: tuple[str, ...] | None = None) -> str:
    rows = read_tsv(path)
    if not rows:
        return ""
    cols = [c for c in (columns or rows[0].keys()) if c in rows[0]]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: str) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.4g}"


_STYLE = ("<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
          "font-size:90%}.fig object,.fig img{max-width:100%}</style>")


def write_participant_report(output_dir: Path, subject: str, methods_text: str, citations: dict) -> Path:
    """``output_dir/sub-X.html``: the reportlets of ``sub-X/figures``, evaluation tables, methods."""
    output_dir = Path(output_dir)
    figs = sorted((output_dir / f"sub-{subject}" / "figures").glob("*.svg"))
    tables = sorted((output_dir / f"sub-{subject}").rglob("*_desc-evaluation_metrics.tsv"))
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>inrreg: sub-{html.escape(subject)}</title>"
             f"{_STYLE}</head><body><h1>inrreg report: sub-{html.escape(subject)}</h1>"]
    parts.append("<h2>Registrations</h2><p>Each figure flickers between the fixed image (with tissue or label "
                 "contours) and the registered moving image; Jacobian figures show log det J and folded voxels.</p>")
    parts.append(_sections([f.relative_to(output_dir) for f in figs]) or "<p>No figures found.</p>")
    if tables:
        parts.append("<h2>Evaluation</h2>")
        for t in tables:
            parts.append(f"<h3>{html.escape(t.name)}</h3>" + _table_html(t))
    parts.append("<h2>Methods</h2><p>" + html.escape(methods_text) + "</p><h3>References</h3><ul>"
                 + "".join(f"<li>[{html.escape(k)}] {html.escape(v)}</li>" for k, v in citations.items()
                           if f"@{k}" in methods_text) + "</ul>")
    parts.append("</body></html>")
    out = output_dir / f"sub-{subject}.html"
    atomic_write_text(out, "\n".join(parts))
    return out


def write_citation(output_dir: Path, methods_text: str, citations: dict) -> Path:
    text = ["# Methods (citation boilerplate written by inrreg)", "", methods_text.strip(), "", "## References", ""]
    text += [f"- [@{k}] {v}" for k, v in citations.items() if f"@{k}" in methods_text]
    out = Path(output_dir) / "logs" / "CITATION.md"
    atomic_write_text(out, "\n".join(text) + "\n")
    return out


def read_tsv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


_ENT = re.compile(r"(sub|ses|acq|rec|run)-([A-Za-z0-9]+)")


def collect_group(output_dir: Path) -> list[dict]:
    """Long table: participant_id, session_id, t1w (the T1w's ``acq``/``rec``/``run`` entities, n/a
    for a session's only T1w), method, metric, value (numeric columns of each evaluation TSV)."""
    rows = []
    for tsv in sorted(Path(output_dir).glob("sub-*/**/*_desc-evaluation_metrics.tsv")):
        ents = dict(_ENT.findall(tsv.name))
        for r in read_tsv(tsv):
            for metric, value in r.items():
                if metric == "method":
                    continue
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    continue
                rows.append({"participant_id": f"sub-{ents.get('sub', '')}",
                             "session_id": f"ses-{ents['ses']}" if "ses" in ents else "n/a",
                             "t1w": "_".join(f"{k}-{ents[k]}" for k in ("acq", "rec", "run") if k in ents) or "n/a",
                             "method": r.get("method", "n/a"), "metric": metric,
                             "value": "n/a" if math.isnan(number) else repr(number)})
    return rows


def _figure(rows: list[dict], metric: str, title: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data: dict[str, list[float]] = {}
    for r in rows:
        if r["metric"] == metric and r["value"] != "n/a":
            data.setdefault(r["method"], []).append(float(r["value"]))
    if not data:
        return None
    methods = sorted(data)
    fig, ax = plt.subplots(figsize=(3.2 + 0.8 * len(methods), 3.2))
    ax.boxplot([data[m] for m in methods], showfliers=False)
    for i, m in enumerate(methods, start=1):
        xs = [i + 0.06 * ((j % 5) - 2) for j in range(len(data[m]))]
        ax.scatter(xs, data[m], s=18, zorder=3)
    ax.set_xticks(range(1, len(methods) + 1), methods)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_group(output_dir: Path) -> tuple[Path, Path, int]:
    """``group_registration.tsv`` and ``group_registration.html``; returns them and the number of
    T1w images they cover."""
    output_dir = Path(output_dir)
    rows = collect_group(output_dir)
    n = len({(r["participant_id"], r["session_id"], r["t1w"]) for r in rows})
    tsv = output_dir / "group_registration.tsv"
    cols = ["participant_id", "session_id", "t1w", "method", "metric", "value"]
    atomic_write_text(tsv, "\t".join(cols) + "\n" + "".join("\t".join(r[c] for c in cols) + "\n" for r in rows))
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>inrreg group report</title>{_STYLE}"
             f"</head><body><h1>inrreg group report</h1><p>{n} T1w image(s); methods: "
             f"{html.escape(', '.join(sorted({r['method'] for r in rows})))}. Data: group_registration.tsv.</p>"]
    for metric, title in GROUP_METRICS:
        png = _figure(rows, metric, title)
        if png:
            parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(metric)}' "
                         f"src='data:image/png;base64,{png}'>")
    # summary table: mean per method and metric
    summary: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r["value"] != "n/a":
            summary.setdefault((r["method"], r["metric"]), []).append(float(r["value"]))
    parts.append("<h2>Means</h2><table><tr><th>method</th><th>metric</th><th>n</th><th>mean</th></tr>" + "".join(
        f"<tr><td>{html.escape(m)}</td><td>{html.escape(k)}</td><td>{len(v)}</td><td>{sum(v) / len(v):.4g}</td></tr>"
        for (m, k), v in sorted(summary.items())) + "</table></body></html>")
    out = output_dir / "group_registration.html"
    atomic_write_text(out, "\n".join(parts))
    return tsv, out, n

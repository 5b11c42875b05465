"""Judge a candidate against a baseline on the dev pairings by a rule written before the runs.

Usage (the session 17 rule, with the subject-wise check it lacked)::

    python benchmarks/dev_rule.py benchmarks/results/oasis-trt-20_validation_2mm_cpu/pairs_dev.tsv \\
        --candidate svf-windows-syn-diffusion03 --baseline svf-3levels-c2f svf \\
        --pairs 16 --min-hd95-gain 0.15 --min-lower 11 --max-dice-loss 0.008 --max-sd-increase 0 \\
        --leave-one-subject-out

Rows are :mod:`oasis_pairs`'s ``pairs.tsv`` shape (``pair`` = ``sub-MM_to_sub-FF``, moving then
fixed; ``method``; ``stage``); only the ``affine+inr`` stage is judged. ``--baseline`` may name
several methods: each pairing takes the first that has a row for it (a preset renamed when it was
adopted keeps its old name on older rows). ``--split`` restricts the rows to those splits.

The rule, all on the pairings both methods have (their number must be ``--pairs``):

* mean HD95 at least ``--min-hd95-gain`` mm lower, and lower on at least ``--min-lower`` pairings;
* mean Dice at most ``--max-dice-loss`` lower;
* mean SD log J at most ``--max-sd-increase`` higher;
* no brain with more than ``--max-folding`` % of its voxels at det J <= 0;
* with ``--leave-one-subject-out``: the HD95 gain still at least ``--min-hd95-gain`` when every
  pairing of any one subject (moving or fixed) is left out. Sixteen pairings of five subjects are
  not independent: twice (sessions 15 and 17) a dev gain carried by one moving subject failed on
  the validation subjects.

Prints a Markdown report. Exit status: 0 the rule holds, 1 it does not, 2 bad input (one line).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

STAGE = "affine+inr"
METRICS = ("dice_mean", "hd95_mean_mm", "sd_log_j", "pct_detj_nonpos")


@dataclass(frozen=True)
class Rule:
    """Thresholds of a dev rule (mm for HD95, Dice and SD log J as fractions, folding in %)."""

    pairs: int
    min_hd95_gain_mm: float
    min_lower: int
    max_dice_loss: float
    max_sd_increase: float
    max_folding_pct: float = 0.01
    leave_one_subject_out: bool = False


@dataclass
class Verdict:
    """What the rule found: means of candidate - baseline, counts, and the reasons it fails."""

    pairs: list[str]
    delta: dict[str, float]
    hd95_lower_on: int
    max_folding_pct: float
    left_out_hd95_gain_mm: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return not self.failures


def subjects(pair: str) -> tuple[str, str]:
    """``(moving, fixed)`` of a pair name ``sub-MM_to_sub-FF``."""
    moving, sep, fixed = pair.partition("_to_")
    if not sep or not moving or not fixed:
        raise ValueError(f"pair name {pair!r} is not MOVING_to_FIXED")
    return moving, fixed


def read_rows(paths: list[Path], splits: list[str] | None = None) -> list[dict]:
    """The ``affine+inr`` rows of the TSVs (of ``splits`` only, when given), read by
    :func:`report.read_rows` (numbers as floats, ``n/a`` as NaN)."""
    return [row for path in paths for row in report.read_rows(path)
            if row.get("stage") == STAGE and (not splits or row.get("split") in splits)]


def by_pair(rows: list[dict], methods: list[str]) -> dict[str, dict[str, float]]:
    """``pair -> metrics`` from the first of ``methods`` that has a row for that pair; a metric
    missing or not a number is refused (a NaN would pass every threshold)."""
    out: dict[str, dict[str, float]] = {}
    for method in methods:
        for row in rows:
            if row["method"] == method and row["pair"] not in out:
                values = {m: row[m] for m in METRICS}
                if not all(isinstance(v, float) and math.isfinite(v) for v in values.values()):
                    raise ValueError(f"{method} on {row['pair']}: {', '.join(METRICS)} must be numbers, got {values}")
                out[row["pair"]] = values
    return out


def judge(candidate: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]], rule: Rule) -> Verdict:
    """Apply ``rule`` to the pairings both have."""
    pairs = sorted(set(candidate) & set(baseline))
    if not pairs:
        raise ValueError("the candidate and the baseline have no pairing in common")
    diff = {m: np.array([candidate[p][m] - baseline[p][m] for p in pairs]) for m in METRICS}
    verdict = Verdict(pairs=pairs, delta={m: float(d.mean()) for m, d in diff.items()},
                      hd95_lower_on=int((diff["hd95_mean_mm"] < 0).sum()),
                      max_folding_pct=max(candidate[p]["pct_detj_nonpos"] for p in pairs))
    need = verdict.failures.append
    if len(pairs) != rule.pairs:
        need(f"{len(pairs)} pairings, the rule needs {rule.pairs}")
    if -verdict.delta["hd95_mean_mm"] < rule.min_hd95_gain_mm:
        need(f"HD95 {verdict.delta['hd95_mean_mm']:+.3f} mm, needs -{rule.min_hd95_gain_mm:g}")
    if verdict.hd95_lower_on < rule.min_lower:
        need(f"HD95 lower on {verdict.hd95_lower_on}, needs {rule.min_lower}")
    if -verdict.delta["dice_mean"] > rule.max_dice_loss:
        need(f"Dice {verdict.delta['dice_mean']:+.4f}, at most -{rule.max_dice_loss:g} allowed")
    if verdict.delta["sd_log_j"] > rule.max_sd_increase:
        need(f"SD log J {verdict.delta['sd_log_j']:+.4f}, at most +{rule.max_sd_increase:g} allowed")
    if verdict.max_folding_pct > rule.max_folding_pct:
        need(f"{verdict.max_folding_pct:.4f} % of a brain folded, at most {rule.max_folding_pct:g}")
    everyone = sorted({s for p in pairs for s in subjects(p)})
    for subject in everyone:
        kept = [i for i, p in enumerate(pairs) if subject not in subjects(p)]
        if kept:
            verdict.left_out_hd95_gain_mm[subject] = 0.0 - float(diff["hd95_mean_mm"][kept].mean())  # no -0.0
    if rule.leave_one_subject_out:
        for subject, gain in verdict.left_out_hd95_gain_mm.items():
            if gain < rule.min_hd95_gain_mm:
                need(f"without {subject}'s pairings the HD95 gain is {gain:.3f} mm, needs {rule.min_hd95_gain_mm:g}")
    return verdict


def render_verdict(verdict: Verdict, candidate: dict, baseline: dict, names: tuple[str, str]) -> str:
    """The verdict as Markdown: one row per pairing, the means, the subject-wise gains, the reasons."""
    lines = [f"| pairing | {names[1]}: Dice / HD95 mm / SD log J | {names[0]} | difference |", "|---|---|---|---|"]
    for p in verdict.pairs:
        b, c = baseline[p], candidate[p]
        lines.append(f"| {p} | {b['dice_mean']:.4f} / {b['hd95_mean_mm']:.2f} / {b['sd_log_j']:.3f} | "
                     f"{c['dice_mean']:.4f} / {c['hd95_mean_mm']:.2f} / {c['sd_log_j']:.3f} | "
                     f"{c['dice_mean'] - b['dice_mean']:+.4f} / {c['hd95_mean_mm'] - b['hd95_mean_mm']:+.2f} / "
                     f"{c['sd_log_j'] - b['sd_log_j']:+.3f} |")
    d = verdict.delta
    lines += ["", f"{len(verdict.pairs)} pairings: Dice {d['dice_mean']:+.4f}, HD95 {d['hd95_mean_mm']:+.3f} mm "
              f"(lower on {verdict.hd95_lower_on}), SD log J {d['sd_log_j']:+.4f}, "
              f"at most {verdict.max_folding_pct:.4f} % of a brain folded.",
              "HD95 gain (mm) with each subject's pairings left out: "
              + ", ".join(f"{s} {g:.3f}" for s, g in verdict.left_out_hd95_gain_mm.items()) + ".",
              ""]
    lines.append("**The rule holds.**" if verdict.holds
                 else "**The rule does not hold:** " + "; ".join(verdict.failures) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tsv", nargs="+", type=Path, help="pairs.tsv files (oasis_pairs.py's shape)")
    ap.add_argument("--candidate", required=True, help="the candidate's method name in the rows")
    ap.add_argument("--baseline", required=True, nargs="+", help="the baseline's name(s), first match per pairing")
    ap.add_argument("--split", nargs="+", help="only rows of these splits")
    ap.add_argument("--pairs", type=int, required=True, help="how many pairings the rule judges")
    ap.add_argument("--min-hd95-gain", type=float, required=True, help="mm the mean HD95 must fall by")
    ap.add_argument("--min-lower", type=int, required=True, help="pairings on which HD95 must be lower")
    ap.add_argument("--max-dice-loss", type=float, required=True, help="how much lower the mean Dice may be")
    ap.add_argument("--max-sd-increase", type=float, required=True, help="how much higher mean SD log J may be")
    ap.add_argument("--max-folding", type=float, default=0.01, help="%% of a brain at det J <= 0 (default 0.01)")
    ap.add_argument("--leave-one-subject-out", action="store_true",
                    help="the HD95 gain must hold with each subject's pairings left out")
    args = ap.parse_args(argv)
    try:
        missing = [str(p) for p in args.tsv if not p.is_file()]
        if missing:
            raise ValueError(f"no such file: {', '.join(missing)}")
        rows = read_rows(args.tsv, args.split)
        candidate, baseline = by_pair(rows, [args.candidate]), by_pair(rows, args.baseline)
        if not candidate:
            raise ValueError(f"no {STAGE} rows of {args.candidate!r}")
        rule = Rule(args.pairs, args.min_hd95_gain, args.min_lower, args.max_dice_loss, args.max_sd_increase,
                    args.max_folding, args.leave_one_subject_out)
        verdict = judge(candidate, baseline, rule)
    except (ValueError, KeyError) as err:
        print(f"dev_rule: {err}", file=sys.stderr)
        return 2
    print(render_verdict(verdict, candidate, baseline, (args.candidate, args.baseline[0])))
    return 0 if verdict.holds else 1


if __name__ == "__main__":
    sys.exit(main())

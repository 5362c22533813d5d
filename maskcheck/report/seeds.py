"""Seeds: mean and spread per job over the seeds of a sweep, and the rule for calling a difference real.

A sweep trained with `--seeds 0,1,2` has one model per seed for every job (`ltd-T5-s0`, `-s1`,
`-s2`, grouped as `ltd-T5`). The report shows, per group, the mean and the min-max range over
seeds; a difference between two groups is called real only when their seed ranges do not
overlap (`exceeds_spread`): with three seeds that is a deliberately strict rule (ours), so a
1-3 pp difference between single runs is never reported as a finding.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import pandas as pd

from ..validate import markdown_text
from .loader import MASKED

SUMMARY_COLUMNS = ("method", "temperature", "group", "seeds", "clean_acc", "pgd-ce", "worst-case", "worst-case min",
                   "worst-case max", "worst-case std", "train_phase_acc", "train_phase min", "train_phase max",
                   "masked", "vs reference", "real difference")
REFERENCE = "trades"  # the comparison every group is held against (the paper's baseline, Table IV first row)


def group_name(name: str, seed: float | None) -> str:
    """`ltd-T5-s1` (seed 1) -> `ltd-T5`; names without a seed stay as they are."""
    if seed is None or (isinstance(seed, float) and math.isnan(seed)):
        return name
    return re.sub(rf"-s{int(seed)}$", "", name)


def exceeds_spread(a: Sequence[float], b: Sequence[float]) -> bool | None:
    """True when the seed ranges [min, max] of a and b do not overlap; None when either has < 2 seeds."""
    a, b = [x for x in a if not math.isnan(x)], [x for x in b if not math.isnan(x)]
    if len(a) < 2 or len(b) < 2:
        return None
    return max(a) < min(b) or max(b) < min(a)


def seed_summary(table: pd.DataFrame, reference: str = REFERENCE) -> pd.DataFrame:
    """One row per group: means over seeds, worst-case and training-phase ranges, how many seeds are `masked`,
    and the worst-case difference to the reference group with the seed-spread rule."""
    t = table[~table["audit_missing"]].copy()
    t["group"] = [group_name(n, s) for n, s in zip(t["name"], t["seed"])]
    ref = t[t["group"] == reference]["worst-case"].tolist()
    rows = []
    for (method, group), g in t.groupby(["method", "group"], sort=False):
        worst, phase = g["worst-case"].to_numpy(float), g["train_phase_acc"].to_numpy(float)
        real = exceeds_spread(worst.tolist(), ref) if group != reference and ref else None
        rows.append({
            "method": method, "temperature": g["temperature"].iloc[0], "group": group, "seeds": len(g),
            "clean_acc": g["clean_acc"].mean(), "pgd-ce": g["pgd-ce"].mean(), "worst-case": worst.mean(),
            "worst-case min": worst.min(), "worst-case max": worst.max(),
            "worst-case std": float(np.std(worst, ddof=1)) if len(worst) > 1 else math.nan,
            "train_phase_acc": np.nanmean(phase) if np.isfinite(phase).any() else math.nan,
            "train_phase min": np.nanmin(phase) if np.isfinite(phase).any() else math.nan,
            "train_phase max": np.nanmax(phase) if np.isfinite(phase).any() else math.nan,
            "masked": f"{int((g['verdict'] == MASKED).sum())}/{len(g)}",  # seeds graded masked
            "vs reference": worst.mean() - float(np.mean(ref)) if ref and group != reference else math.nan,
            "real difference": "-" if real is None else ("yes" if real else "no (within seed spread)"),
        })
    out = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)).astype({"temperature": float})
    return out.sort_values(["method", "temperature"], na_position="first", kind="stable").reset_index(drop=True)


def summary_markdown(summary: pd.DataFrame) -> str:
    """The seed table for the write-up: percentages, pp differences, '-' for unknown."""
    def pct(v: float) -> str:
        return "-" if v is None or math.isnan(v) else f"{100 * v:.1f}%"

    shown = summary.copy()
    for col in ("clean_acc", "pgd-ce", "worst-case", "worst-case min", "worst-case max", "worst-case std",
                "train_phase_acc", "train_phase min", "train_phase max"):
        shown[col] = shown[col].map(pct)
    shown["vs reference"] = shown["vs reference"].map(lambda v: "-" if math.isnan(v) else f"{100 * v:+.1f} pp")
    shown["temperature"] = shown["temperature"].map(lambda t: "-" if math.isnan(t) else f"{t:g}")
    return markdown_text(shown)  # one Markdown writer for all: every string cell escaped

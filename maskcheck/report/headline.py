"""The one-sentence summary at the top of the report, computed from the matrix table.

Example: "dd flagged at T >= 10; ltd flagged at T >= 15; trades not flagged". A method
flagged on a contiguous top range of its temperatures gets "at T >= t"; any other pattern
lists the temperatures. "not flagged" is said, never "robust": passing the checks is not a
proof of robustness.
"""

from __future__ import annotations

import math

import pandas as pd

from .loader import FLAGGED


def _fmt(t: float) -> str:
    return f"{t:g}"


def method_phrase(method: str, rows: pd.DataFrame) -> str:
    audited = rows[~rows["audit_missing"]]
    if audited.empty:
        return f"{method} not audited"
    flagged = audited[audited["verdict"] == FLAGGED]
    if flagged.empty:
        return f"{method} not flagged"
    temps = sorted(t for t in audited["temperature"] if not math.isnan(t))
    hot = sorted(t for t in flagged["temperature"] if not math.isnan(t))
    if not hot:
        return f"{method} flagged"
    if hot == [t for t in temps if t >= hot[0]] and len(hot) < len(temps):
        return f"{method} flagged at T >= {_fmt(hot[0])}"
    if len(hot) == len(temps):
        return f"{method} flagged at every T"
    return f"{method} flagged at T = " + ", ".join(_fmt(t) for t in hot)


def headline(table: pd.DataFrame) -> str:
    """One phrase per method (in table order), then how many models lack an audit."""
    parts = [method_phrase(m, table[table["method"] == m]) for m in dict.fromkeys(table["method"])]
    missing = int(table["audit_missing"].sum())
    if missing:
        parts.append(f"{missing} of {len(table)} models not audited")
    return "; ".join(parts)

"""The one-sentence summary at the top of the report, computed from the matrix table.

Example: "dd masked at T >= 10; ltd attack-sensitive at every T; trades: no masking detected".
The grades are the audit's (results.Verdict): `masked`, `attack-sensitive`, `no masking
detected`. A method graded on a contiguous top range of its temperatures gets "at T >= t"; any
other pattern lists the temperatures. "robust" is never said: passing the checks is not a proof.
"""

from __future__ import annotations

import math

import pandas as pd

from .loader import INCONCLUSIVE_STATUS, MASKED, SENSITIVE


def _fmt(t: float) -> str:
    return f"{t:g}"


def _where(hot: list[float], temps: list[float]) -> str:
    """'' (no temperatures), 'at T >= t', 'at every T' or 'at T = a, b'."""
    if not hot:
        return ""
    if len(hot) == len(temps):
        return " at every T"
    if hot == [t for t in temps if t >= hot[0]]:
        return f" at T >= {_fmt(hot[0])}"
    return " at T = " + ", ".join(_fmt(t) for t in hot)


def method_phrase(method: str, rows: pd.DataFrame) -> str:
    audited = rows[~rows["audit_missing"]]
    if audited.empty:
        return f"{method} not audited"
    temps = sorted(t for t in audited["temperature"] if not math.isnan(t))
    parts = []
    for status, word in ((MASKED, "masked"), (INCONCLUSIVE_STATUS, "inconclusive"), (SENSITIVE, "attack-sensitive")):
        graded = audited[audited["verdict"] == status]
        if not graded.empty:
            parts.append(word + _where(sorted(t for t in graded["temperature"] if not math.isnan(t)), temps))
    return f"{method} " + ", ".join(parts) if parts else f"{method}: no masking detected"


def headline(table: pd.DataFrame) -> str:
    """One phrase per method (in table order), then how many models lack an audit."""
    parts = [method_phrase(m, table[table["method"] == m]) for m in dict.fromkeys(table["method"])]
    missing = int(table["audit_missing"].sum())
    if missing:
        parts.append(f"{missing} of {len(table)} models not audited")
    return "; ".join(parts)

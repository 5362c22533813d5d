"""Power of the audit's attack-comparison rule against the share of masked inputs (issue 22, item 5).

    python experiments/broken-defense-zoo/power.py [--n 1000,359] [--shares 0.02,0.05,0.10,0.20]

Exact binomial power, not a measurement: if a share s of the audited points is masked (the
reference attack misses an adversarial example there that the check's challenger finds: Square for
black-box-gap, PGD-2x for attack-convergence, PGD-margin for loss-disagreement, an iterative attack
for one-step-vs-iterative, transfer / BPDA through the surrogate for transfer-attack; for local-linearity the
masked share is the share of rough points, and its FAIL needs PGD-CE 5 pp above the worst case besides), the number of extra breaks is Binomial(n, s), and the check's rule
(checks/base.py::excess: exact one-sided binomial test against `null_rate`, p < `alpha`, gap above
`min_gap`; black-box-gap FAILs only from `fail_gap`) fires when that count reaches its smallest
firing count k*. Power = P(Binomial(n, s) >= k*). It is an upper bound for a real defense, where the
challenger may miss some masked points too. The thresholds are read from the checks' own defaults,
so the table follows any change to them. n = 359 is the digits held-out split, 1000 the CLI's --n.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scipy.stats import binom, binomtest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from maskcheck.checks import REGISTRY  # noqa: E402

# (check, its threshold field that decides the grade shown, the grade it gives)
RULES = (("one-step-vs-iterative", "min_gap", "masked"), ("attack-convergence", "min_gap", "masked"),
         ("black-box-gap", "min_gap", "attack-sensitive"), ("black-box-gap", "fail_gap", "masked"),
         ("loss-disagreement", "min_gap", "masked"), ("transfer-attack", "min_gap", "attack-sensitive"),
         ("transfer-attack", "fail_gap", "masked"), ("local-linearity", "min_gap", "attack-sensitive"))


def firing_count(n: int, null_rate: float, alpha: float, gap: float, inclusive: bool) -> int | None:
    """The smallest count k with p(k) < alpha and k / n above `gap` (>= when `inclusive`), else None."""
    for k in range(1, n + 1):
        ok_gap = k / n >= gap if inclusive else k / n > gap
        if ok_gap and binomtest(k, n, null_rate, alternative="greater").pvalue < alpha:
            return k
    return None


def power(n: int, share: float, k: int | None) -> float:
    return 0.0 if k is None else float(binom.sf(k - 1, n, share))


def table(ns: list[int], shares: list[float]) -> str:
    head = "| check (rule -> grade) | null rate | alpha | gap | " + " | ".join(
        f"n={n}: k* / " + " / ".join(f"{100 * s:g}%" for s in shares) for n in ns) + " |"
    lines = [head, "|---|---|---|---|" + "---|" * len(ns)]
    for name, field, grade in RULES:
        check = REGISTRY[name]()
        null, alpha, gap = check.null_rate, check.alpha, getattr(check, field)
        cells = []
        for n in ns:
            k = firing_count(n, null, alpha, gap, inclusive=field == "fail_gap" or name == "loss-disagreement")
            cells.append(f"{k} / " + " / ".join(f"{power(n, s, k):.2f}" for s in shares))
        lines.append(f"| {name} ({field} -> {grade}) | {null:g} | {alpha:g} | {gap:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1000,359", help="audited points (1000: the CLI's default; 359: digits held-out)")
    parser.add_argument("--shares", default="0.02,0.05,0.10,0.20", help="shares of masked inputs")
    args = parser.parse_args(argv)
    print(table([int(v) for v in args.n.split(",")], [float(v) for v in args.shares.split(",")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

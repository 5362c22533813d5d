"""Where a sweep's time went, from its own files: training per run, audit per model, per attack, per check.

    PYTHONPATH=. python benchmarks/profile_sweep.py SWEEP [SWEEP ...] [--markdown]

Reads every RUN/run.json (`metrics.train_seconds`) and RUN/audit.json (`timings`: `attack:NAME`,
`check:NAME`, `total`) under SWEEP/runs. The seconds are each process's own (CPU work of one
worker), so with --jobs 2 they add up to about twice the wall time; shares are what to read.
Attack names: `apgd-t`, `square`, `noise-459`, `pgd-margin@0.1x20` (a PGD at another eps), ...;
`family` sums an attack over its variants (all `pgd-margin@...` runs are `pgd-margin@eps`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402


def family(attack: str) -> str:
    """`pgd-margin@0.1x20` -> `pgd-margin@eps`, `pgd-ce*10` -> `pgd-ce*scale`, `noise-459` -> `noise`."""
    attack = re.sub(r"@[0-9.e+-]+x[0-9]+$", "@eps", attack)
    attack = re.sub(r"\*[0-9.e+-]+$", "*scale", attack)
    return re.sub(r"^noise-[0-9]+$", "noise", attack)


def collect(sweeps: list[Path]) -> dict:
    train, audits = {}, {}
    for sweep in sweeps:
        for run_json in sorted(sweep.glob("runs/**/run.json")):
            name = str(run_json.parent.relative_to(sweep / "runs"))
            run = json.loads(run_json.read_text())
            train[name] = float((run.get("metrics") or {}).get("train_seconds") or 0.0)
            audit_json = run_json.parent / "audit.json"
            if audit_json.is_file():
                audits[name] = json.loads(audit_json.read_text()).get("timings") or {}
    return {"train": train, "audits": audits}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweeps", nargs="+", type=Path)
    args = p.parse_args()
    data = collect(args.sweeps)
    train, audits = data["train"], data["audits"]
    audit_total = sum(t.get("total", 0.0) for t in audits.values())
    total = sum(train.values()) + audit_total
    print(f"training {sum(train.values()):.0f} s over {len(train)} runs, audits {audit_total:.0f} s over {len(audits)} "
          f"models (process seconds, {100 * audit_total / max(total, 1e-9):.0f}% audits)")

    per_attack, per_check = defaultdict(float), defaultdict(float)
    for t in audits.values():
        for k, v in t.items():
            if k.startswith("attack:"):
                per_attack[family(k[len("attack:"):])] += v
            elif k.startswith("check:"):
                per_check[k[len("check:"):]] += v
    print("\nper attack (all models):")
    print_table(("attack", "seconds", "share of audits"),
                [(a, f"{s:.1f}", f"{100 * s / audit_total:.1f}%") for a, s in sorted(per_attack.items(), key=lambda kv: -kv[1])])
    checks = sum(per_check.values())
    print(f"\nper check (their own work, after the attacks; {checks:.1f} s, {100 * checks / max(audit_total, 1e-9):.1f}% of audits):")
    print_table(("check", "seconds"), [(c, f"{s:.2f}") for c, s in sorted(per_check.items(), key=lambda kv: -kv[1])])
    print("\nper model:")
    rows = []
    for name in sorted(train, key=lambda n: -(audits.get(n, {}).get("total", 0.0))):
        t = audits.get(name, {})
        top = sorted(((k[len("attack:"):], v) for k, v in t.items() if k.startswith("attack:")), key=lambda kv: -kv[1])[:3]
        rows.append((name, f"{train[name]:.1f}", f"{t.get('total', 0.0):.1f}" if t else "-",
                     ", ".join(f"{k} {v:.0f}" for k, v in top) or "-"))
    print_table(("model", "train s", "audit s", "top attacks (s)"), rows)
    print(f"audit share of process time: {audit_total / max(total, 1e-9):.2f}")


if __name__ == "__main__":
    main()

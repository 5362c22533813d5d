"""Summary table of a `benchmarks/gpu_check.sh` folder: figure, goal, ratio, met?

    python benchmarks/gpu_summary.py OUT

Reads the JSON each stage wrote (a stage killed by its time limit leaves its JSON partial or
missing; its row then says so) and `stages.tsv` (exit code and seconds per stage). Prints the
table and writes it to OUT/summary.md. Needs only the standard library.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def rows(out: Path) -> list[tuple[str, str, str, str, str]]:
    """(figure, value, goal, ratio, met?) per goal of issue 13."""
    stages = {}
    for line in (out / "stages.tsv").read_text().splitlines()[1:] if (out / "stages.tsv").is_file() else []:
        name, rc, seconds = line.split("\t")[:3]
        stages[name] = (int(rc), float(seconds))

    def missing(stage: str, what: str) -> tuple[str, str, str, str, str]:
        rc, secs = stages.get(stage, (None, 0.0))
        why = "not run" if rc is None else ("timed out" if rc in (124, 137) else f"exit {rc}") + f" after {secs:.0f} s"
        return (what, "-", "-", "-", f"no figure ({why}; see {stage}.log)")

    def row(what: str, value: float, goal: str, ratio: float, met: bool, fmt: str = "{:.1f}") -> tuple[str, str, str, str, str]:
        return (what, fmt.format(value), goal, f"{ratio:.2f}", "met" if met else "missed")

    table = []
    rc, secs = stages.get("train_cli", (None, 0.0))
    table.append(("`maskcheck train --device cuda` (no index) runs", f"exit {rc}", "exit 0", "-",
                  "met" if rc == 0 else f"missed (see train_cli.log)"))
    sweep = _load(out / "mnist_sweep.json")
    if "train_s" in sweep:
        table.append(row(f"MNIST sweep (T = {sweep['temps']}) training, --jobs {sweep['jobs']} (s)", sweep["train_s"], "<= 45 s",
                         sweep["train_s"] / sweep["goal_train_s"], sweep["train_s"] <= sweep["goal_train_s"]))
    else:
        table.append(missing("mnist_sweep", "MNIST sweep training (s)"))
    if "audit_s" in sweep:
        table.append(row(f"MNIST {sweep['audits']} audits of {sweep['audit_n']} points (s)", sweep["audit_s"], "<= 60 s",
                         sweep["audit_s"] / sweep["goal_audit_s"], sweep["audit_s"] <= sweep["goal_audit_s"]))
    else:
        table.append(missing("mnist_sweep", "MNIST audits (s)"))
    jobs = _load(out / "jobs_compare.json")
    if "compare_train_s" in jobs:
        r = jobs["train_s"] / jobs["compare_train_s"]
        table.append(row(f"--jobs {jobs['jobs']} / --jobs {jobs['compare_jobs']} training time (small sweep)", r, "<= 1",
                         r, r <= 1.0, "{:.2f}"))
    else:
        table.append(missing("jobs_compare", "--jobs N / --jobs 1 training time"))
    tp = _load(out / "throughput.json")
    for method, m in tp.get("methods", {}).items():
        table.append(row(f"{tp['arch']} {method} img/s vs bound {m['bound']:.0f}", m["images_per_s"], ">= 0.9 of bound",
                         m["ratio"], m["ratio"] >= 0.9, "{:.0f}"))
    if not tp.get("methods"):
        table.append(missing("throughput", "training throughput vs bound"))
    comp = _load(out / "compile.json")
    for method, gain in comp.get("compile_gain", {}).items():
        table.append(row(f"torch.compile bound / eager bound ({comp['arch']} {method})", gain, "> 1", gain, gain > 1.0,
                         "{:.2f}"))
    if not comp.get("compile_gain"):
        table.append(missing("compile", "torch.compile bound / eager bound"))
    smoke = _load(out / "smoke" / "measured.json")
    if smoke:
        total = smoke["stages"]["total_s"]
        table.append(row("cifar10-paper --smoke end to end (s)", total, "<= 300 s", total / 300, total <= 300))
        table.append(("cifar10-paper full protocol, GPU-hours (measured speeds)", f"{smoke['gpu_hours_total']:.0f}", "-", "-",
                      "figure"))
    else:
        table.append(missing("smoke", "cifar10-paper --smoke end to end (s)"))
    wall = sum(s for _, s in stages.values())
    table.append(row("gpu_check.sh stages, total (s)", wall, "<= 480 s", wall / 480, wall <= 480))
    return table


def main() -> None:
    out = Path(sys.argv[1])
    table = rows(out)
    head = ("figure", "value", "goal", "ratio", "met?")
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()

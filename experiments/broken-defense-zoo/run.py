"""The broken-defense zoo (issue 22): train each member, measure its ground truth, audit it, tabulate.

    python experiments/broken-defense-zoo/run.py [--datasets digits,mnist] [--seeds 0,1,2] [--members a,b]
        [--reduced] [--n N] [--out DIR] [--report reports/zoo]

For every (dataset, member, seed) it trains the member (maskcheck.zoo, the project's training loop),
measures the ground truth on the audited points (the per-point worst case of the family's adaptive
attack and a standard white-box battery, `zoo.ground_truth`), runs `maskcheck.auditing.run_audit` at
the CLI's default settings (`--reduced`: tests/test_calibration.py's cheaper audit) and writes one
JSON to OUT/<dataset>/<member>-s<seed>[-reduced].json; a rerun skips finished ones (resumable).
Finally it gathers every JSON under OUT into REPORT/results.json and REPORT/table.md (the README's
zoo table). A masked member counts as masked only where the user's PGD-CE overstates the ground
truth by >= 5 pp at some measured radius (`zoo.MASKING_MIN_GAP`): measured truth wins over intention.
MNIST needs the real test split under $MASKCHECK_SHARED_DATA (or --data-dir).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from maskcheck import zoo  # noqa: E402
from maskcheck.auditing import run_audit  # noqa: E402
from maskcheck.config import DEFAULT_APGD_ITERS, DEFAULT_N, DEFAULT_SQUARE_QUERIES  # noqa: E402
from maskcheck.data import load_dataset  # noqa: E402
from maskcheck.fileio import atomic_write_json, atomic_write_text  # noqa: E402

CONFIG = json.loads((HERE / "config.json").read_text())


def audit_settings(reduced: bool) -> dict[str, Any]:
    """The CLI's defaults (maskcheck audit: n 1000, Square 5000 queries, APGD 100 iterations, FAB-T off as
    `--autoattack-standard` is opt-in since issue 23), or the calibration's reduced audit."""
    if reduced:
        return dict(CONFIG["reduced_audit"])
    return dict(n=DEFAULT_N, square_queries=DEFAULT_SQUARE_QUERIES, apgd_iters=DEFAULT_APGD_ITERS, autoattack_standard=False)


def audited_points(result: Any, splits: Any, n: int) -> tuple[torch.Tensor, torch.Tensor, list[int] | None]:
    """The points the audit attacked: its recorded sample when the audit JSON has one (issue 22 makes it a
    seeded random sample), else the first n held-out points (today's audit)."""
    x, y = splits.heldout.tensors
    d = result.to_dict()
    idx = None
    for holder in (d, d.get("config") or {}):
        for key in ("indices", "sample_indices", "points"):
            v = holder.get(key)
            if isinstance(v, dict):
                v = v.get("indices")
            if isinstance(v, list) and v and all(isinstance(i, int) for i in v):
                idx = v
    if idx is None:
        return x[:n], y[:n], None
    t = torch.tensor(idx)
    return x[t], y[t], idx


def run_one(dataset: str, name: str, seed: int, reduced: bool, splits: Any, eps: float, n: int | None = None) -> dict[str, Any]:
    member = zoo.MEMBERS[name]
    t0 = time.perf_counter()
    model = zoo.build_member(name, dataset, splits, seed, eps)
    train_s = time.perf_counter() - t0
    settings = audit_settings(reduced)
    settings["n"] = n or settings["n"]
    t0 = time.perf_counter()
    result = run_audit(model, splits, eps=eps, seed=seed, progress=False, **settings)
    audit_s = time.perf_counter() - t0
    x, y, idx = audited_points(result, splits, result.n)
    truth: dict[str, Any] = {}
    t0 = time.perf_counter()
    for frac in member.truth_eps_fraction:
        res = zoo.ground_truth(member, model, x, y, eps * frac, seed, num_classes=splits.info.num_classes)
        truth[f"{frac:g}"] = {k: float(v.float().mean()) for k, v in res.items()}
    truth_s = time.perf_counter() - t0
    at_eps = truth["1"]
    gaps = {f: t["pgd-ce"] - t["truth"] for f, t in truth.items()}
    v = result.verdict
    quote = v.quote["acc"] if v.quote else None
    return {
        "dataset": dataset, "member": name, "seed": seed, "reduced": reduced, "eps": eps, "kind": member.kind,
        "family": member.family, "defense": member.defense, "broken_by": member.broken_by, "expected": list(member.expected),
        "n": result.n, "points": "audit sample" if idx is not None else f"first {result.n} held-out",
        "clean_acc": result.clean_acc, "true_robust_acc": at_eps["truth"], "pgd_ce": at_eps["pgd-ce"],
        "audit_pgd_ce": result.robust_acc.get("pgd-ce"), "truth": truth, "pgd_ce_overstates": gaps,
        "masks": any(g >= zoo.MASKING_MIN_GAP for g in gaps.values()),
        "grade": v.grade, "mechanisms": list(v.mechanisms), "verdict": v.text, "quote": v.quote,
        "quote_error": None if quote is None else quote - at_eps["truth"],
        "robust_acc": result.robust_acc, "audit_seconds": round(audit_s, 1), "train_seconds": round(train_s, 1),
        "truth_seconds": round(truth_s, 1), "timings": dict(result.timings), "config": result.config, "settings": settings,
    }


def out_path(out: Path, dataset: str, name: str, seed: int, reduced: bool) -> Path:
    return out / dataset / f"{name}-s{seed}{'-reduced' if reduced else ''}.json"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _grouped(rows: list[dict[str, Any]]) -> list[tuple[tuple[str, str, bool], list[dict[str, Any]]]]:
    """Rows by (dataset, member, reduced), in dataset / reduced / zoo order, each group sorted by seed."""
    groups: dict[tuple[str, str, bool], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["member"], r["reduced"]), []).append(r)
    order = list(zoo.MEMBERS)
    keyed = sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], order.index(kv[0][1])))
    return [(k, sorted(rs, key=lambda r: r["seed"])) for k, rs in keyed]


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: defense, paper that broke it, grade per seed, mechanisms, quoted vs true robust accuracy, audit seconds."""
    lines = ["| dataset | member | defense | broken by | masks (truth) | grade per seed | mechanisms named | "
             "quoted / true / PGD-CE (%) per seed | audit s |", "|---|---|---|---|---|---|---|---|---|"]
    for (ds, name, reduced), rs in _grouped(rows):
        m = zoo.MEMBERS[name]
        masks = "sound" if m.kind == "sound" and not any(r["masks"] for r in rs) else \
            ("yes" if all(r["masks"] for r in rs) else "no" if not any(r["masks"] for r in rs) else "some seeds")
        if m.kind == "masked" and masks == "no":
            masks = "no (not a masked member)"
        grades = ", ".join(f"s{r['seed']}: {r['grade']}" for r in rs)
        mechs = "; ".join(sorted({x for r in rs for x in r["mechanisms"]})) or "-"
        nums = ", ".join(f"{pct((r['quote'] or {}).get('acc'))} / {pct(r['true_robust_acc'])} / {pct(r['pgd_ce'])}" for r in rs)
        secs = ", ".join(f"{r['audit_seconds']:.0f}" for r in rs)
        lines.append(f"| {ds}{' (reduced)' if reduced else ''} | {name} | {m.defense} | {m.broken_by} | {masks} | {grades} | "
                     f"{mechs} | {nums} | {secs} |")
    return "\n".join(lines) + "\n"


def short_table(rows: list[dict[str, Any]]) -> str:
    """The README's zoo table: default-settings rows only, one line per (dataset, member); the mechanism column
    names the member's expected mechanisms the audit named (the full list is in table.md)."""
    lines = ["| data | defense | broken by | masks by its truth | grade s0 / s1 / s2 | expected mechanism named | "
             "quoted / true robust acc. % per seed | audit s |", "|---|---|---|---|---|---|---|---|"]
    for (ds, name, reduced), rs in _grouped(rows):
        if reduced:
            continue
        m = zoo.MEMBERS[name]
        masks = "/".join("yes" if r["masks"] else "no" for r in rs)
        grades = " / ".join(r["grade"] for r in rs)
        named = sorted({x for r in rs for x in r["mechanisms"] if any(e in x for e in m.expected)}) if m.kind == "masked" else []
        mech = "; ".join(named) if named else ("-" if m.kind == "sound" else "none")
        nums = ", ".join(f"{pct((r['quote'] or {}).get('acc'))} / {pct(r['true_robust_acc'])}" for r in rs)
        secs = ", ".join(f"{r['audit_seconds']:.0f}" for r in rs)
        lines.append(f"| {ds} | {name}: {m.defense} | {m.broken_by} | {masks} | {grades} | {mech} | {nums} | {secs} |")
    return "\n".join(lines) + "\n"


def gather(out: Path, report: Path) -> list[dict[str, Any]]:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*/*.json"))]
    report.mkdir(parents=True, exist_ok=True)
    atomic_write_json(report / "results.json", {"experiment": CONFIG["name"], "rows": rows})
    atomic_write_text(report / "table.md", table(rows))
    atomic_write_text(report / "readme-table.md", short_table(rows))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(CONFIG["datasets"]))
    parser.add_argument("--seeds", default=",".join(map(str, CONFIG["seeds"])))
    parser.add_argument("--members", default=",".join(zoo.MEMBERS))
    parser.add_argument("--reduced", action="store_true", help="the calibration's cheaper audit instead of the CLI's defaults")
    parser.add_argument("--n", type=int, default=None, help="audited points (default: the audit's; tests use a few)")
    parser.add_argument("--out", default=str(HERE / "results"), help="one JSON per (dataset, member, seed); reruns skip them")
    parser.add_argument("--report", default=str(REPO / "reports" / "zoo"), help="results.json and table.md go here")
    parser.add_argument("--data-dir", default=os.environ.get("MASKCHECK_SHARED_DATA"), help="folder holding MNIST/raw")
    args = parser.parse_args(argv)
    unknown = [m for m in args.members.split(",") if m not in zoo.MEMBERS]
    if unknown:
        print(f"run.py: error: unknown member(s) {', '.join(unknown)}; valid: {', '.join(zoo.MEMBERS)}", file=sys.stderr)
        return 2
    out, eps = Path(args.out), float(CONFIG["eps"])
    for dataset in args.datasets.split(","):
        splits = load_dataset(dataset, args.data_dir) if dataset != "digits" else load_dataset("digits")
        for seed in (int(s) for s in args.seeds.split(",")):
            for name in args.members.split(","):
                path = out_path(out, dataset, name, seed, args.reduced)
                if path.is_file():
                    print(f"skip {path} (finished)", flush=True)
                    continue
                row = run_one(dataset, name, seed, args.reduced, splits, eps, args.n)
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(path, row)
                print(f"{dataset} {name} s{seed}: {row['grade']} ({'; '.join(row['mechanisms']) or '-'}); quoted "
                      f"{pct((row['quote'] or {}).get('acc'))}% true {pct(row['true_robust_acc'])}% PGD-CE {pct(row['pgd_ce'])}%"
                      f" masks={row['masks']} audit {row['audit_seconds']:.0f}s", flush=True)
    gather(out, Path(args.report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

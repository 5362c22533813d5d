"""Wall time of a temperature sweep's training and of its audits (issue 13's MNIST goals).

    PYTHONPATH=. python benchmarks/sweep_speed.py [--dataset mnist] [--data-dir D] [--device auto]
        [--temps 1,2,5,10,15,20] [--jobs 6] [--audit-n 500] [--epochs E] [--compare-jobs 1]

Trains the sweep (`maskcheck.sweep.run_sweep`: natural, dd teacher + student per T, trades, ltd
per T; the dataset's default epochs unless `--epochs`) into a fresh folder, then audits its
deployed models (`audit_sweep`, `--audit-n` points each), timing both. Goals on one
H100/H200-class GPU with the defaults: training <= 45 s, the 14 audits <= 60 s.
`--compare-jobs K` trains the same sweep again with `--jobs K` (a fresh folder) and prints the
ratio of the two training times: `--jobs N` on one GPU must never be slower than `--jobs 1`.
The last line holds the worst goal ratio (time / goal; <= 1 is met).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, print_table, setup, verdict  # noqa: E402

from maskcheck.config import parse_temps  # noqa: E402
from maskcheck.sweep import audit_sweep, run_sweep  # noqa: E402


def train(out: Path, args, jobs: int) -> float:  # noqa: ANN001
    settings = {k: v for k, v in (("epochs", args.epochs), ("max_train", args.max_train), ("eval_n", args.eval_n),
                                   ("final_eval_n", args.eval_n)) if v}
    start = time.perf_counter()
    run_sweep(out, temps=parse_temps(args.temps), dataset=args.dataset, device=args.device, jobs=jobs, settings=settings,
              data_dir=args.data_dir, log=lambda m: print(f"  [{time.perf_counter() - start:6.1f} s] {m}", flush=True),
              compile=args.compile)
    return time.perf_counter() - start


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--temps", default="1,2,5,10,15,20")
    ap.add_argument("--jobs", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=None, help="default: the dataset's")
    ap.add_argument("--audit-n", type=int, default=500)
    ap.add_argument("--no-audit", action="store_true")
    ap.add_argument("--compare-jobs", type=int, default=None, help="train again with this many workers and compare")
    ap.add_argument("--goal-train", type=float, default=45.0)
    ap.add_argument("--goal-audit", type=float, default=60.0)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--max-train", type=int, default=None, help="train on the first N images (plumbing runs)")
    ap.add_argument("--eval-n", type=int, default=None, help="held-out points attacked per epoch and at the end (plumbing runs)")
    ap.add_argument("--json", default=None, help="also write the figures here, updated after each stage")
    ap.add_argument("--out", default=None, help="keep the sweep here (default: a temporary folder)")
    args = ap.parse_args()
    device = setup(args)
    rows, ratios = [], []
    figures: dict = {"device": str(device), "dataset": args.dataset, "temps": args.temps, "jobs": args.jobs}

    def save(**kw: object) -> None:
        figures.update(kw)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp) / "sweep"
        print(f"training the sweep with --jobs {args.jobs} on {device} ...", flush=True)
        t_train = train(out, args, args.jobs)
        rows.append((f"train, --jobs {args.jobs}", t_train, args.goal_train, t_train / args.goal_train))
        ratios.append(("training", t_train / args.goal_train))
        save(train_s=t_train, goal_train_s=args.goal_train)
        if not args.no_audit:
            start = time.perf_counter()
            done = audit_sweep(out, n=args.audit_n, device=args.device, data_dir=args.data_dir, jobs=args.jobs, progress=False,
                               log=lambda m: print(f"  [{time.perf_counter() - start:6.1f} s] {m}", flush=True))
            t_audit = time.perf_counter() - start
            rows.append((f"{len(done)} audits of {args.audit_n} points, --jobs {args.jobs}", t_audit, args.goal_audit,
                         t_audit / args.goal_audit))
            ratios.append(("audits", t_audit / args.goal_audit))
            save(audit_s=t_audit, audits=len(done), audit_n=args.audit_n, goal_audit_s=args.goal_audit)
        if args.compare_jobs:
            print(f"training the same sweep with --jobs {args.compare_jobs} ...", flush=True)
            t_other = train(Path(args.out or tmp) / f"sweep-jobs{args.compare_jobs}", args, args.compare_jobs)
            rows.append((f"train, --jobs {args.compare_jobs}", t_other, t_other, 1.0))
            ratios.append((f"--jobs {args.jobs} / --jobs {args.compare_jobs}", t_train / t_other))
            save(compare_jobs=args.compare_jobs, compare_train_s=t_other)
    print(f"device {device}, dataset {args.dataset}, temps {args.temps}")
    print_table(("stage", "seconds", "goal s", "ratio"), rows)
    for name, r in ratios[2 if not args.no_audit else 1:]:
        print(f"{name} training time: {r:.2f} (goal <= 1: {verdict(r, 1.0)})")
    worst = max(ratios, key=lambda r: r[1])
    print(f"worst ratio ({worst[0]}): {worst[1]:.2f} (goal <= 1: {verdict(worst[1], 1.0)})")


if __name__ == "__main__":
    main()

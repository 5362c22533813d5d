"""The full default audit battery vs pyautoattack `standard`, same model, same points.

    PYTHONPATH=. python benchmarks/audit_vs_autoattack.py [--dataset digits|mnist --data-dir ../shared/data]
        [--n 500] [--eps E] [--runs RUN_DIR ...]

Prints, per model, wall time of both, the time ratio audit / AutoAttack (goal <= 1.0) and the
worst-case robust accuracy difference audit - AutoAttack (goal <= +0.5 pp: at least as strong).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import models_for  # noqa: E402

from maskcheck.audit import run_audit  # noqa: E402
from maskcheck.data import load_dataset  # noqa: E402


def autoattack_acc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str) -> float:
    from pyautoattack import AutoAttack

    aa = AutoAttack(model, eps=eps, norm={"linf": "Linf", "l2": "L2"}[norm], version="standard", seed=0, device="cpu")
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=500)
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--norm", default="linf")
    p.add_argument("--runs", nargs="*", default=[])
    args = p.parse_args()
    torch.set_num_threads(2)
    splits = load_dataset(args.dataset, args.data_dir)
    eps = args.eps or splits.info.default_eps
    x, y = splits.heldout_tensors(args.n)
    if len(y) < args.n:
        print(f"note: {args.dataset} holds {len(y)} held-out points; using all of them", file=sys.stderr)
    rows = []
    for name, model in models_for(splits, eps, args.runs).items():
        t0 = time.perf_counter()
        audit = run_audit(model, (x, y), eps=eps, norm=args.norm, n=len(y), num_classes=splits.info.num_classes,
                          seed=0, progress=False)
        t_audit = time.perf_counter() - t0
        t0 = time.perf_counter()
        aa = autoattack_acc(model, x, y, eps, args.norm)
        t_aa = time.perf_counter() - t0
        ours = audit.robust_acc["worst-case"]
        rows.append((name, t_audit, t_aa, ours, aa, audit.verdict.text))
        print(f"{name:10s} audit {t_audit:6.1f} s  AA {t_aa:6.1f} s  worst-case {100 * ours:5.1f}%  AA {100 * aa:5.1f}%  "
              f"diff {100 * (ours - aa):+5.1f} pp  ratio {t_audit / t_aa:.2f}  [{audit.verdict.text}]", flush=True)
    total_audit, total_aa = sum(r[1] for r in rows), sum(r[2] for r in rows)
    worst_diff = max(100 * (r[3] - r[4]) for r in rows)
    print(f"dataset {args.dataset} n={len(y)} eps={eps:g}: worst robust-accuracy difference {worst_diff:+.1f} pp (goal <= +0.5)")
    print(f"wall-time ratio audit/AutoAttack: {total_audit / total_aa:.2f} (goal <= 1.0)")


if __name__ == "__main__":
    main()

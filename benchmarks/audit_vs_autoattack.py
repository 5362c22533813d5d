"""The full default audit battery vs pyautoattack `standard`, same model, same points.

    PYTHONPATH=. python benchmarks/audit_vs_autoattack.py [--device auto] [--dataset digits|mnist]
        [--data-dir ../shared/data] [--n 500] [--eps E] [--runs RUN_DIR ...]

Without --runs it trains a natural, a trades and a dd (T = 20) model with maskcheck's training
defaults. Prints, per model, wall time of both, the worst-case robust accuracy of each and their
difference audit - AutoAttack (goal <= +0.5 pp: the audit's strongest attack at least as strong),
then the total wall-time ratio audit / AutoAttack (goal <= 1.0) last.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, print_table, seconds, setup, verdict  # noqa: E402
from _models import models_for  # noqa: E402

from maskcheck.auditing import run_audit  # noqa: E402
from maskcheck.data import load_dataset  # noqa: E402


def autoattack_acc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
                   device: torch.device) -> float:
    """Robust accuracy under AutoAttack `standard` (APGD-CE, APGD-T, FAB-T, Square)."""
    from pyautoattack import AutoAttack

    aa = AutoAttack(model, eps=eps, norm={"linf": "Linf", "l2": "L2"}[norm], version="standard", seed=0, device=str(device))
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=500)
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--norm", default="linf")
    p.add_argument("--runs", nargs="*", default=[], help="run folders to audit instead of training fresh models")
    args = p.parse_args()
    device = setup(args)
    splits = load_dataset(args.dataset, args.data_dir)
    eps = args.eps or splits.info.default_eps
    x, y = (t.to(device) for t in splits.heldout_tensors(args.n))
    if len(y) < args.n:
        print(f"note: {args.dataset} holds {len(y)} held-out points; using all of them", file=sys.stderr)
    rows, totals, diffs = [], [0.0, 0.0], []
    for name, model in models_for(args.dataset, device, args.runs, args.data_dir).items():
        box: dict = {}
        t_audit = seconds(lambda: box.update(a=run_audit(model, (x, y), eps=eps, norm=args.norm, n=len(y), device=device,
                                                         num_classes=splits.info.num_classes, seed=0, progress=False)), device)
        t_aa = seconds(lambda: box.update(aa=autoattack_acc(model, x, y, eps, args.norm, device)), device)
        ours, theirs = box["a"].robust_acc["worst-case"], box["aa"]
        totals[0], totals[1] = totals[0] + t_audit, totals[1] + t_aa
        diffs.append(100 * (ours - theirs))
        rows.append((name, f"{t_audit:.1f}", f"{t_aa:.1f}", t_audit / t_aa, f"{100 * ours:.1f}", f"{100 * theirs:.1f}",
                     f"{diffs[-1]:+.1f}", box["a"].verdict.text))
    print(f"device {device}, dataset {args.dataset}, n={len(y)}, eps={eps:g}, norm {args.norm}")
    print_table(("model", "audit s", "AA s", "ratio", "worst-case %", "AA %", "diff pp", "verdict"), rows)
    worst = max(diffs)
    print(f"worst robust-accuracy difference audit - AA: {worst:+.1f} pp (goal <= +0.5: {verdict(worst, 0.5)})")
    ratio = totals[0] / totals[1]
    print(f"wall-time ratio audit/AutoAttack: {ratio:.2f} (goal <= 1.0: {verdict(ratio, 1.0)})")


if __name__ == "__main__":
    main()

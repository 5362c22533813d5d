"""The default audit (every check, default settings) vs pyautoattack `standard`, same model, same points.

    PYTHONPATH=. python benchmarks/audit_vs_autoattack.py [--device auto] [--dataset digits|mnist]
        [--data-dir ../shared/data] [--n 500] [--eps E] [--runs RUN_DIR ... | --sweep SWEEP]

--sweep: every model the sweep audits (its runs but the dd teachers), e.g. the folder
`benchmarks/end_to_end.py --keep DIR` leaves, which is the issue-23 goal's "every digits model of
the sweep". Without --runs or --sweep it trains a natural, a trades and a dd (T = 20) model with
maskcheck's training defaults. Prints, per model, wall time of both and their ratio, the
worst-case robust accuracy of each and their difference audit - AutoAttack (goal <= +0.5 pp: the
audit's strongest attacks at least as strong), the largest per-model time ratio (goal <= 0.5,
issue 23) and the total time ratio last. AutoAttack standard runs APGD-CE, APGD-T, FAB-T and Square
at 5000 queries on 1 thread per --threads; on 14 digits models about 30-60 min on 2 idle cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, print_table, seconds, setup, verdict  # noqa: E402
from _models import models_for  # noqa: E402

from maskcheck.auditing import run_audit  # noqa: E402
from maskcheck.checkpoint import LoadedModel, load_model  # noqa: E402
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
    p.add_argument("--sweep", type=Path, default=None, help="a sweep folder: every model it audits (not the dd teachers)")
    args = p.parse_args()
    if args.sweep is not None:
        args.runs = [str(d) for d in sorted((args.sweep / "runs").iterdir())
                     if (d / "run.json").is_file() and not d.name.startswith("dd-teacher")]
    device = setup(args)
    splits = load_dataset(args.dataset, args.data_dir)
    eps = args.eps or splits.info.default_eps
    x, y = (t.to(device) for t in splits.heldout_tensors(args.n))
    if len(y) < args.n:
        print(f"note: {args.dataset} holds {len(y)} held-out points; using all of them", file=sys.stderr)
    rows, totals, diffs, ratios = [], [0.0, 0.0], [], []
    # a run folder is audited as the sweep audits it (with its run.json); a fresh model as a bare module
    models = ({Path(d).name: load_model(d, device=device) for d in args.runs} if args.runs
              else models_for(args.dataset, device, [], args.data_dir))
    for name, loaded in models.items():
        model = loaded.model if isinstance(loaded, LoadedModel) else loaded
        box: dict = {}
        t_audit = seconds(lambda: box.update(a=run_audit(loaded, (x, y), eps=eps, norm=args.norm, n=len(y), device=device,
                                                         num_classes=splits.info.num_classes, seed=0, progress=False)), device)
        t_aa = seconds(lambda: box.update(aa=autoattack_acc(model, x, y, eps, args.norm, device)), device)
        ours, theirs = box["a"].robust_acc["worst-case"], box["aa"]
        totals[0], totals[1] = totals[0] + t_audit, totals[1] + t_aa
        diffs.append(100 * (ours - theirs))
        ratios.append(t_audit / t_aa)
        # each model's figures as they come: a run stopped by a time limit still leaves them
        print(f"{name}: audit {t_audit:.1f} s, AutoAttack {t_aa:.1f} s, ratio {t_audit / t_aa:.2f}; worst case "
              f"{100 * ours:.1f}% vs AA {100 * theirs:.1f}% ({diffs[-1]:+.1f} pp); {box['a'].verdict.grade}",
              file=sys.stderr, flush=True)
        rows.append((name, f"{t_audit:.1f}", f"{t_aa:.1f}", t_audit / t_aa, f"{100 * ours:.1f}", f"{100 * theirs:.1f}",
                     f"{diffs[-1]:+.1f}", box["a"].verdict.text))
    print(f"device {device}, dataset {args.dataset}, n={len(y)}, eps={eps:g}, norm {args.norm}")
    print_table(("model", "audit s", "AA s", "ratio", "worst-case %", "AA %", "diff pp", "verdict"), rows)
    worst = max(diffs)
    print(f"worst robust-accuracy difference audit - AA: {worst:+.1f} pp (goal <= +0.5: {verdict(worst, 0.5)})")
    worst_ratio = max(ratios)
    print(f"largest per-model time ratio audit/AutoAttack: {worst_ratio:.2f} (goal <= 0.5 on every model: {verdict(worst_ratio, 0.5)})")
    ratio = totals[0] / totals[1]
    print(f"wall-time ratio audit/AutoAttack, all models: {ratio:.2f} (goal <= 0.5: {verdict(ratio, 0.5)})")


if __name__ == "__main__":
    main()

"""Audit time as the number of points grows: n = 100, 200, 500, 1000 and the log-log exponent.

    PYTHONPATH=. python benchmarks/audit_growth.py [--device auto] [--kind natural|trades|dd] [--sizes 100,200,500,1000]

Uses all 1,797 digits images (the held-out split alone has 359) with a model trained on the
training split, shuffled once with a fixed seed so every n holds the same mix of held-out and
training points (training points are fitted better and cost the attacks more: taking the held-out
points first made n = 500 and 1000 look superlinear). A small untimed audit warms up first. The exponent is the slope of log(time) vs log(n) (1.0 = linear, goal <= 1.1).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import loglog_exponent, parser, print_table, seconds, setup, verdict  # noqa: E402
from _models import KINDS, train  # noqa: E402

from maskcheck.auditing import run_audit  # noqa: E402
from maskcheck.data import load_dataset  # noqa: E402


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--kind", default="natural", choices=sorted(KINDS))
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--sizes", default="100,200,500,1000")
    args = p.parse_args()
    device = setup(args)
    splits = load_dataset("digits")
    eps = args.eps or splits.info.default_eps
    model = train(args.kind, "digits", device)
    x = torch.cat([splits.heldout.tensors[0], splits.train.tensors[0]]).to(device)
    y = torch.cat([splits.heldout.tensors[1], splits.train.tensors[1]]).to(device)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0)).to(device)
    x, y = x[order], y[order]
    run_audit(model, (x, y), eps=eps, n=20, num_classes=10, seed=0, device=device, progress=False)
    sizes = [int(s) for s in args.sizes.split(",")]
    times = [seconds(lambda: run_audit(model, (x, y), eps=eps, n=n, num_classes=10, seed=0, device=device,
                                       progress=False), device) for n in sizes]
    print(f"device {device}, digits, {args.kind} model, eps={eps:g}")
    print_table(("n", "audit s", "ms/point"), [(n, f"{t:.1f}", f"{1000 * t / n:.1f}") for n, t in zip(sizes, times)])
    slope = loglog_exponent(sizes, times)
    print(f"audit time log-log exponent: {slope:.2f} (goal <= 1.1: {verdict(slope, 1.1)})")


if __name__ == "__main__":
    main()

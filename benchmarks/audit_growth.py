"""Audit time as the number of points grows: n = 100, 200, 500, 1000 and the log-log exponent.

    PYTHONPATH=. python benchmarks/audit_growth.py [--kind natural|trades|dd] [--eps E]

Uses all 1,797 digits images (the held-out split alone has 359) with a model trained on the
training split; the exponent is the slope of log(time) vs log(n) (1.0 = linear).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import train  # noqa: E402

from maskcheck.audit import run_audit  # noqa: E402
from maskcheck.data import load_dataset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", default="natural")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--sizes", default="100,200,500,1000")
    args = p.parse_args()
    torch.set_num_threads(2)
    splits = load_dataset("digits")
    model = train(splits, args.kind, eps=args.eps)
    x = torch.cat([splits.heldout.tensors[0], splits.train.tensors[0]])
    y = torch.cat([splits.heldout.tensors[1], splits.train.tensors[1]])
    sizes = [int(s) for s in args.sizes.split(",")]
    times = []
    for n in sizes:
        t0 = time.perf_counter()
        run_audit(model, (x, y), eps=args.eps, n=n, num_classes=10, seed=0, progress=False)
        times.append(time.perf_counter() - t0)
        print(f"n={n:5d}  {times[-1]:6.1f} s", flush=True)
    slope = np.polyfit(np.log(sizes), np.log(times), 1)[0]
    print(f"log-log exponent: {slope:.2f}")


if __name__ == "__main__":
    main()

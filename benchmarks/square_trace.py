"""When does Square break each point? The evidence behind the audit's Square stall stop (issue 23).

    PYTHONPATH=. python benchmarks/square_trace.py [--runs RUN_DIR ...] [--queries 5000] [--eps 0.2]

Without --runs it trains a trades and an ltd-T1 digits model (and the natural teacher) with the
dataset defaults. For each model: PGD-CE (the audit's, 20 steps) on all held-out points, then
pyautoattack's Square with AutoAttack standard's settings (p_init 0.8, fixed schedule) for
--queries queries on the survivors, printing the query at which each point fell. The audit stops
Square once its window is 1 pixel wide and no point fell for SQUARE_STALL_SWEEPS sweeps over the
image (maskcheck.attacks); the last column says whether that stop would have lost any of them.
About 25 min on 2 loaded cores (two Square runs of 5000 queries on ~230 points each).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, print_table, setup  # noqa: E402

from maskcheck import attacks  # noqa: E402
from maskcheck.checkpoint import load_model  # noqa: E402
from maskcheck.config import derived_seed  # noqa: E402
from maskcheck.data import load_dataset  # noqa: E402
from maskcheck.training import make_config, train_run  # noqa: E402


def train_models(folder: Path, device: torch.device) -> list[Path]:
    natural = folder / "natural"
    train_run(make_config("natural", "digits"), natural, device=device, progress=False)
    out = []
    for name, method, temp in (("trades", "trades", None), ("ltd-T1", "ltd", 1.0)):
        train_run(make_config(method, "digits", temperature=temp), folder / name, device=device, progress=False,
                  teacher_dir=natural if method == "ltd" else None)
        out.append(folder / name)
    return out


def stall_stop(breaks: list[int], h: int, w: int, c: int, budget: int) -> int:
    """The query at which the audit's rule stops, given the queries at which points fell."""
    start = attacks._square_min_side_query(h, w, c, "linf", 0.8)
    if start is None:
        return budget
    patience, last = attacks.SQUARE_STALL_SWEEPS * h * w, start
    for q in sorted(breaks):
        if q > last + patience:
            break
        last = max(last, q)
    return min(budget, last + patience)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--runs", nargs="*", default=[])
    p.add_argument("--queries", type=int, default=5000)
    p.add_argument("--eps", type=float, default=None)
    args = p.parse_args()
    device = setup(args)
    splits = load_dataset("digits")
    x, y = (t.to(device) for t in splits.heldout_tensors(10_000))
    eps = args.eps or splits.info.default_eps
    rows = []
    with tempfile.TemporaryDirectory(prefix="maskcheck-square-") as tmp:
        runs = [Path(r) for r in args.runs] or train_models(Path(tmp), device)
        for run in runs:
            model = load_model(run, device=device).model.eval()
            g = torch.Generator(device=device).manual_seed(0)
            idx = attacks.pgd(model, x, y, eps=eps, steps=attacks.PGD_STEPS, generator=g, stop_when_broken=True).correct.nonzero().flatten()
            from pyautoattack.square import SquareAttack

            sq = SquareAttack(attacks.ContiguousGrad(model).eval(), norm="Linf", n_queries=args.queries, eps=eps, p_init=0.8,
                              n_restarts=1, seed=derived_seed(0, "square"), device=device, resc_schedule=False)
            sq.init_hyperparam(x[idx])
            torch.random.manual_seed(sq.seed)
            t0 = time.perf_counter()
            with torch.no_grad():
                spent, adv = sq.attack_single_run(x[idx].contiguous(), y[idx])
                fell = model(adv).argmax(1) != y[idx]
            breaks = sorted(int(q) for q in spent[fell].tolist())
            stop = stall_stop(breaks, *x.shape[2:], x.shape[1], args.queries)
            lost = sum(q > stop for q in breaks)
            rows.append((run.name, len(y), len(idx), len(breaks), " ".join(map(str, breaks)) or "-", stop, lost,
                         f"{time.perf_counter() - t0:.0f}"))
    print(f"digits, eps {eps:g} Linf, Square {args.queries} queries on PGD-CE's survivors")
    print_table(("model", "n", "PGD-CE survivors", "Square breaks", "at queries", "stall stop", "lost", "seconds"), rows)
    print(f"breaks lost by the stall stop: {sum(r[6] for r in rows)} (goal 0)")


if __name__ == "__main__":
    main()

"""Training time as the number of epochs grows: 1, 2, 4 epochs and the log-log exponent.

    PYTHONPATH=. python benchmarks/train_growth.py [--device auto] [--method trades] [--epochs 1,2,4]

Each run is a full `maskcheck.training.train_run` on digits with the dataset's defaults (a fresh
temporary run folder, so nothing resumes), timed from call to return: setup, the epochs with their
held-out progress check, the final evaluation and the atomic save. The exponent is the slope of
log(time) vs log(epochs) (1.0 = linear; below 1 means fixed costs weigh; goal <= 1.1).
One untimed warm-up run comes first (the first run in a process pays for kernel and thread-pool
set-up), then the epoch counts are timed in `--repeats` interleaved rounds and the fastest of each
is kept, so a load spike from other processes on a shared machine does not bend the fit.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import loglog_exponent, parser, print_table, seconds, setup, verdict  # noqa: E402

from maskcheck.training import make_config, train_run  # noqa: E402


def timed_run(cfg, device) -> tuple[float, float]:
    """(wall seconds of train_run, seconds inside its epoch loops) for one fresh run of `cfg`."""
    with tempfile.TemporaryDirectory(prefix="maskcheck-bench-") as tmp:
        box: dict = {}
        wall = seconds(lambda: box.update(r=train_run(cfg, Path(tmp) / "run", device=device, progress=False)), device)
    return wall, sum(h["seconds"] for h in box["r"]["metrics"]["history"])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--method", default="trades", help="a method that needs no teacher: natural, trades, pgd-at, dd")
    p.add_argument("--temperature", type=float, default=None, help="dd only")
    p.add_argument("--epochs", default="1,2,4")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    device = setup(args)
    counts = [int(e) for e in args.epochs.split(",")]
    timed_run(make_config(args.method, "digits", epochs=1, max_train=256, temperature=args.temperature), device)
    best: dict[int, tuple[float, float]] = {}
    for _ in range(args.repeats):
        for epochs in counts:
            wall, epoch_s = timed_run(make_config(args.method, "digits", epochs=epochs, temperature=args.temperature), device)
            best[epochs] = min(best.get(epochs, (wall, epoch_s)), (wall, epoch_s))
    cfg = make_config(args.method, "digits", temperature=args.temperature)
    times = [best[e][0] for e in counts]
    rows = [(e, f"{best[e][0]:.1f}", f"{best[e][1]:.1f}", f"{best[e][0] / e:.1f}") for e in counts]
    print(f"device {device}, digits, {cfg.name}, batch {cfg.batch_size}, {cfg.attack_steps} attack steps")
    print_table(("epochs", "train_run s", "epoch loops s", "s/epoch"), rows)
    print(f"fastest of {args.repeats} interleaved rounds after a warm-up run")
    slope = loglog_exponent(counts, times)
    print(f"training time log-log exponent: {slope:.2f} (goal <= 1.1: {verdict(slope, 1.1)})")


if __name__ == "__main__":
    main()

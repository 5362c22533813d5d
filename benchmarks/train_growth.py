"""Training time as the number of epochs grows: 1, 2, 4 epochs and the log-log exponent.

    PYTHONPATH=. python benchmarks/train_growth.py [--device auto] [--method trades] [--epochs 1,2,4]

Each run is a full `maskcheck.training.train_run` on digits with the dataset's defaults (a fresh
temporary run folder, so nothing resumes), timed from call to return: setup, the epochs with their
held-out progress check, the final evaluation and the atomic save. The exponent is the slope of
log(time) vs log(epochs) (1.0 = linear; below 1 means fixed costs weigh; goal <= 1.1).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import loglog_exponent, parser, print_table, seconds, setup, verdict  # noqa: E402

from maskcheck.training import make_config, train_run  # noqa: E402


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--method", default="trades", help="a method that needs no teacher: natural, trades, pgd-at, dd")
    p.add_argument("--temperature", type=float, default=None, help="dd only")
    p.add_argument("--epochs", default="1,2,4")
    args = p.parse_args()
    device = setup(args)
    counts = [int(e) for e in args.epochs.split(",")]
    rows, times = [], []
    for epochs in counts:
        cfg = make_config(args.method, "digits", epochs=epochs, temperature=args.temperature)
        with tempfile.TemporaryDirectory(prefix="maskcheck-bench-") as tmp:
            box: dict = {}
            times.append(seconds(lambda: box.update(r=train_run(cfg, Path(tmp) / "run", device=device, progress=False)), device))
        epoch_s = sum(h["seconds"] for h in box["r"]["metrics"]["history"])
        rows.append((epochs, f"{times[-1]:.1f}", f"{epoch_s:.1f}", f"{times[-1] / epochs:.1f}"))
    print(f"device {device}, digits, {cfg.name}, batch {cfg.batch_size}, {cfg.attack_steps} attack steps")
    print_table(("epochs", "train_run s", "epoch loops s", "s/epoch"), rows)
    slope = loglog_exponent(counts, times)
    print(f"training time log-log exponent: {slope:.2f} (goal <= 1.1: {verdict(slope, 1.1)})")


if __name__ == "__main__":
    main()

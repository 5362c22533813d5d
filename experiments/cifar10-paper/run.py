"""The LTD paper's Table IV protocol on CIFAR-10, for GPU users.

    python experiments/cifar10-paper/run.py [--device cuda] [--jobs N] [--data-dir D] [--download]
                                            [--throughput IMG_PER_S] [--dry-run] [--force]

Trains natural (the LTD teacher), defensive distillation and TRADES+LTD over the teacher
temperatures of Table IV (WRN-34-10, the paper's recipe: `--preset paper`), then audits every
model on the whole test split and renders the report under reports/cifar10/.

Before starting it prints the GPU-hours it expects. The estimate is passes x images / throughput,
where a "pass" is one forward+backward of WRN-34-10 and the default throughput (images/s) is an
assumption for one modern data-centre GPU with mixed precision: measure yours with
`python benchmarks/train_throughput.py --device cuda --arch wrn-34-10` and pass `--throughput`.
On a machine without CUDA it refuses to start unless `--force` is given (weeks of CPU time).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CIFAR10_TRAIN_IMAGES = 50_000
# Passes per image in one training step (forward+backward = 1; a forward alone ~ 1/3).
# TRADES/LTD: natural term + adversarial term + K attack steps (K = the preset's PGD steps).
FORWARD_ONLY = 1 / 3
# Audit cost per point, in passes: APGD-CE (100 it.) on all points, targeted APGD-DLR (9 targets x
# 100 it.) and Square (5000 forward-only queries) on the points still standing, plus the cheaper checks.
AUDIT_PASSES_PER_POINT = 100 + 0.55 * (900 + 5000 * FORWARD_ONLY) + 200


def training_passes(method: str, epochs: int, attack_steps: int) -> float:
    per_image = {
        "natural": 1.0,
        "dd-teacher": 1.0,
        "dd": 1.0 + FORWARD_ONLY,  # + the teacher's forward for the soft labels
        "trades": attack_steps + 2.0,
        "ltd": attack_steps + 2.0 + FORWARD_ONLY,
    }[method]
    return per_image * epochs * CIFAR10_TRAIN_IMAGES


def estimate_gpu_hours(cfg: dict, throughput: float, attack_steps: int) -> tuple[float, list[tuple[str, float]]]:
    temps = cfg["temps"]
    rows = [("natural teacher", training_passes("natural", cfg["epochs"], attack_steps))]
    if "dd" in cfg["methods"]:
        rows.append((f"dd teachers + students x{len(temps)}",
                     len(temps) * (training_passes("dd-teacher", cfg["dd_epochs"], attack_steps)
                                   + training_passes("dd", cfg["dd_epochs"], attack_steps))))
    if "trades" in cfg["methods"]:
        rows.append(("trades", training_passes("trades", cfg["epochs"], attack_steps)))
    if "ltd" in cfg["methods"]:
        rows.append((f"ltd x{len(temps)}", len(temps) * training_passes("ltd", cfg["epochs"], attack_steps)))
    n_models = 1 + len(temps) * ("dd" in cfg["methods"]) + ("trades" in cfg["methods"]) + len(temps) * ("ltd" in cfg["methods"])
    rows.append((f"audit of {n_models} models x {cfg['audit_n']} points", n_models * cfg["audit_n"] * AUDIT_PASSES_PER_POINT))
    hours = [(label, passes / throughput / 3600) for label, passes in rows]
    return sum(h for _, h in hours), hours


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--jobs", type=int, default=1, help="parallel training workers (one per GPU)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--out", default=str(REPO / "runs" / "cifar10-paper"))
    parser.add_argument("--throughput", type=float, default=2000.0,
                        help="WRN-34-10 forward+backward images/s on your GPU (assumed default; measure it)")
    parser.add_argument("--attack-steps", type=int, default=10, help="training PGD steps of the preset (for the estimate)")
    parser.add_argument("--dry-run", action="store_true", help="print the estimate and the commands, run nothing")
    parser.add_argument("--force", action="store_true", help="start even without CUDA")
    args = parser.parse_args(argv)

    cfg = json.loads((HERE / "config.json").read_text())
    total, rows = estimate_gpu_hours(cfg, args.throughput, args.attack_steps)
    print(f"cifar10-paper: expected about {total:.0f} GPU-hours at {args.throughput:.0f} img/s (an estimate):")
    for label, hours in rows:
        print(f"  {label:<40} {hours:8.1f} h")

    common = ["--dataset", cfg["dataset"], "--eps", cfg["eps"], "--device", args.device, "--seed", str(cfg["seed"])]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    sweep = [sys.executable, "-m", "maskcheck", "train-sweep", *common, "--preset", cfg["preset"],
             "--temps", ",".join(str(t) for t in cfg["temps"]), "--methods", ",".join(cfg["methods"]),
             "--out", args.out, "--jobs", str(args.jobs), "--audit", "--audit-n", str(cfg["audit_n"]),
             "--report", "--report-out", str(REPO / "reports" / "cifar10" / "index.html")]
    if args.download:
        sweep.append("--download")
    print("command:", shlex.join(sweep))
    if args.dry_run:
        return 0
    if not cuda_available() and not args.force:
        print("cifar10-paper: no CUDA device here; this protocol needs a GPU (see the estimate above). "
              "Rerun on a GPU machine, or pass --force to start on CPU anyway.", file=sys.stderr)
        return 2
    return subprocess.call(sweep, cwd=REPO)


if __name__ == "__main__":
    sys.exit(main())

"""The LTD paper's Table IV protocol on CIFAR-10, for GPU users, and its smoke run.

    python experiments/cifar10-paper/run.py [--device cuda] [--jobs N] [--data-dir D] [--out DIR]
                                            [--dry-run] [--force] [--compile]
    python experiments/cifar10-paper/run.py --smoke [--smoke-steps 200] [--audit-n 100] [--arch A] ...

Full run: trains natural (the LTD teacher), defensive distillation and TRADES+LTD over the teacher
temperatures of Table IV (WRN-34-10, the paper's recipe: `--preset paper`), then audits every
model on the whole test split and renders the report under reports/cifar10/. The data must be
on disk (the python pickles under DATA_DIR/cifar-10-batches-py; maskcheck never downloads).
On a machine without CUDA it refuses to start unless `--force` is given (weeks of CPU time).

`--smoke` runs the whole protocol end to end at a tiny scale: every job (natural, dd teacher and
student, trades, ltd) for `--smoke-steps` steps of the paper's batch on a subset, at the first
and last temperature of the sweep, then audits 100 points per model and renders the report
(SMOKE_OUT/report.html). Training runs one job at a time so each run's speed is the card's,
and the GPU-hours of the full protocol are printed from those measured speeds (and the measured
audit seconds per point), not from an assumed throughput; they are also written to
SMOKE_OUT/measured.json, which a later full run prints again. `--smoke --tiny` (small-cnn,
one-step attacks) on CPU is the CI test of this script's plumbing (tests/test_cifar10_paper.py).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

CIFAR10_TRAIN_IMAGES = 50_000
MEASURED = "measured.json"
KINDS = ("natural", "dd-teacher", "dd", "trades", "ltd")


def job_kind(name: str) -> str:
    """natural | dd-teacher | dd | trades | ltd, from a sweep job name such as `dd-teacher-T5`."""
    for kind in ("dd-teacher", "natural", "trades", "ltd", "dd"):
        if name == kind or name.startswith(kind + "-"):
            return kind
    raise ValueError(f"unknown job {name!r}")


def measured_rates(sweep: Path) -> dict[str, float]:
    """Training images/s per job kind, from each run's first epoch (its steps plus a clean evaluation)."""
    per_kind: dict[str, list[float]] = {}
    for run_json in sorted(sweep.glob("runs/*/run.json")):
        run = json.loads(run_json.read_text())
        first = run["metrics"]["history"][0]
        images = run["metrics"].get("train_images") or run["config"]["max_train"]
        per_kind.setdefault(job_kind(run["name"]), []).append(images / first["seconds"])
    return {k: sum(v) / len(v) for k, v in per_kind.items()}


def measured_audit_seconds(sweep: Path, square_queries: int, full_queries: int = 5000) -> dict[str, float]:
    """Audit seconds per point per job kind; Square's share scaled to `full_queries` queries."""
    per_kind: dict[str, list[float]] = {}
    for audit_json in sorted(sweep.glob("runs/*/audit.json")):
        audit = json.loads(audit_json.read_text())
        timings = audit["timings"]
        square = sum(v for k, v in timings.items() if k.startswith("attack:") and "square" in k)
        total = timings["total"] + square * (full_queries / square_queries - 1)
        per_kind.setdefault(job_kind(audit["model"]["name"]), []).append(total / audit["n"])
    return {k: sum(v) / len(v) for k, v in per_kind.items()}


def full_protocol_hours(cfg: dict, epochs: int, rates: dict[str, float], audit_s: dict[str, float]) -> list[tuple[str, float]]:
    """GPU-hours of the full protocol per part, from measured speeds (images/s, audit s/point)."""
    n_t = len(cfg["temps"])
    counts = {"natural": 1, "dd-teacher": n_t * ("dd" in cfg["methods"]), "dd": n_t * ("dd" in cfg["methods"]),
              "trades": 1 * ("trades" in cfg["methods"]), "ltd": n_t * ("ltd" in cfg["methods"])}
    rows = []
    for kind in KINDS:
        if counts[kind] and kind in rates:
            rows.append((f"train {kind} x{counts[kind]} ({epochs} epochs, {rates[kind]:.0f} img/s)",
                         counts[kind] * epochs * CIFAR10_TRAIN_IMAGES / rates[kind] / 3600))
    for kind in KINDS:
        if counts[kind] and kind in audit_s and kind != "dd-teacher":
            rows.append((f"audit {kind} x{counts[kind]} ({cfg['audit_n']} points, {audit_s[kind]:.3f} s/point)",
                         counts[kind] * cfg["audit_n"] * audit_s[kind] / 3600))
    return rows


def print_hours(rows: list[tuple[str, float]], note: str) -> float:
    total = sum(h for _, h in rows)
    print(f"cifar10-paper: the full protocol needs about {total:.1f} GPU-hours ({note}):", flush=True)
    for label, hours in rows:
        print(f"  {label:<62} {hours:8.2f} h", flush=True)
    return total


def smoke(cfg: dict, args: argparse.Namespace) -> int:
    """The whole protocol at a tiny scale; prints the measured GPU-hours of the full one."""
    from maskcheck.report import render_report
    from maskcheck.sweep import audit_sweep, run_sweep
    from maskcheck.training import PRESETS

    preset = PRESETS[cfg["preset"]]
    out = Path(args.out or REPO / "runs" / "cifar10-paper-smoke")
    temps = [cfg["temps"][0], cfg["temps"][-1]]
    settings = {**preset, "epochs": 1, "milestones": [], "max_train": args.smoke_steps * preset["batch_size"],
                "eval_n": 20, "final_eval_n": args.audit_n}  # a small per-epoch check: the epoch time is the measurement
    if args.arch:
        settings["arch"] = args.arch
    if args.tiny:  # CI's CPU plumbing run: the smallest network, one-step attacks
        settings.update(arch="small-cnn", attack_steps=1, eval_steps=1)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    print(f"smoke: temps {temps}, {args.smoke_steps} steps of {preset['batch_size']} per job, "
          f"arch {settings.get('arch')}, device {args.device}", flush=True)
    # one job at a time: each run's measured speed is then the card's, not a share of it
    run_sweep(out, temps=temps, methods=cfg["methods"], dataset=cfg["dataset"], seed=cfg["seed"], device=args.device,
              jobs=1, settings=settings, data_dir=args.data_dir, log=log, compile=args.compile)
    stages["train_s"] = time.perf_counter() - t0
    rates = measured_rates(out)
    epochs = int(preset["epochs"])
    print_hours(full_protocol_hours(cfg, epochs, rates, {}), "training only so far; measured by this smoke run")
    t1 = time.perf_counter()
    audit_sweep(out, n=args.audit_n, seed=cfg["seed"], square_queries=args.square_queries, device=args.device,
                autoattack_standard=True,  # the paper's Table IV compares AutoAttack standard (FAB-T opt-in since issue 23)
                data_dir=args.data_dir, jobs=args.jobs, progress=False, log=log)
    stages["audit_s"] = time.perf_counter() - t1
    audit_s = measured_audit_seconds(out, args.square_queries)
    t2 = time.perf_counter()
    report = render_report([out], out / "report.html")
    stages["report_s"] = time.perf_counter() - t2
    stages["total_s"] = time.perf_counter() - t0
    rows = full_protocol_hours(cfg, epochs, rates, audit_s)
    total = print_hours(rows, "measured by this smoke run")
    (out / MEASURED).write_text(json.dumps({"device": args.device, "arch": settings.get("arch", cfg["arch"]),
                                            "smoke_steps": args.smoke_steps, "train_images_per_s": rates,
                                            "audit_seconds_per_point": audit_s, "stages": stages,
                                            "gpu_hours": dict(rows), "gpu_hours_total": total}, indent=2))
    print(f"smoke: report {report}; stages " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--jobs", type=int, default=1, help="parallel worker processes (training and audits)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None, help="sweep folder (default runs/cifar10-paper, smoke: runs/cifar10-paper-smoke)")
    parser.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    parser.add_argument("--force", action="store_true", help="start the full run even without CUDA")
    parser.add_argument("--compile", action="store_true", help="train with torch.compile")
    parser.add_argument("--smoke", action="store_true", help="the whole protocol at a tiny scale (minutes on one GPU)")
    parser.add_argument("--smoke-steps", type=int, default=200, help="smoke: training steps per job")
    parser.add_argument("--audit-n", type=int, default=100, help="smoke: points per audit")
    parser.add_argument("--square-queries", type=int, default=1000, help="smoke: Square queries per audit (scaled to 5000 in the estimate)")
    parser.add_argument("--arch", default=None, help="smoke: another architecture")
    parser.add_argument("--tiny", action="store_true", help="smoke on CPU: small-cnn, 1-step attacks (tests the plumbing only)")
    args = parser.parse_args(argv)
    cfg = json.loads((HERE / "config.json").read_text())
    if args.smoke:
        return smoke(cfg, args)

    out = Path(args.out or REPO / "runs" / "cifar10-paper")
    measured = REPO / "runs" / "cifar10-paper-smoke" / MEASURED
    if measured.is_file():
        m = json.loads(measured.read_text())
        print(f"cifar10-paper: about {m['gpu_hours_total']:.0f} GPU-hours, as measured by the smoke run in {measured} "
              f"on {m['device']} ({m['arch']}).")
    else:
        print("cifar10-paper: GPU-hours unknown; run it with --smoke first on the same card to measure them.")
    common = ["--dataset", cfg["dataset"], "--eps", cfg["eps"], "--device", args.device, "--seed", str(cfg["seed"])]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    sweep = [sys.executable, "-m", "maskcheck", "train-sweep", *common, "--preset", cfg["preset"],
             "--temps", ",".join(str(t) for t in cfg["temps"]), "--methods", ",".join(cfg["methods"]),
             "--out", str(out), "--jobs", str(args.jobs), "--audit", "--audit-n", str(cfg["audit_n"]),
             "--report", "--report-out", str(REPO / "reports" / "cifar10" / "index.html")]
    if args.compile:
        sweep.append("--compile")
    print("command:", shlex.join(sweep))
    if args.dry_run:
        return 0
    import torch

    if not torch.cuda.is_available() and not args.force:
        print("cifar10-paper: no CUDA device here; this protocol needs a GPU. "
              "Rerun on a GPU machine, or pass --force to start on CPU anyway.", file=sys.stderr)
        return 2
    return subprocess.call(sweep, cwd=REPO)


if __name__ == "__main__":
    sys.exit(main())

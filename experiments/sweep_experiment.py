"""Run one sweep experiment from its config.json: train-sweep -> audit -> report, via the CLI.

Each experiment folder holds a `config.json` and a `run.py` that calls `main(<folder>)`. The
commands are printed before they run, so a reader can replay them by hand. The report lands in
`reports/<report>/index.html` (committed as the sample) and the runs under `runs/<name>/` (not
committed: rerunning resumes and skips finished models).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sweep_command(cfg: dict, out: Path, device: str, jobs: int, data_dir: str | None) -> list[str]:
    temps = cfg["temps"] if isinstance(cfg["temps"], str) else ",".join(str(t) for t in cfg["temps"])
    cmd = [sys.executable, "-m", "maskcheck", "train-sweep", "--dataset", cfg["dataset"],
           "--temps", temps, "--methods", ",".join(cfg["methods"]),
           "--out", str(out), "--device", device, "--jobs", str(jobs),
           "--audit", "--audit-n", str(cfg["audit_n"]), "--no-report"]
    if cfg.get("seeds") is not None:  # issue 17: every job per seed
        cmd += ["--seeds", ",".join(str(s) for s in cfg["seeds"])]
    else:
        cmd += ["--seed", str(cfg.get("seed", 0))]
    # FAB-T (only the AutoAttack-standard figure needs it) is opt-in since issue 23; a config without
    # the key keeps the figure it had when FAB-T was the default
    cmd += ["--autoattack-standard" if cfg.get("autoattack_standard", True) else "--no-autoattack-standard"]
    if cfg.get("arms"):
        cmd += ["--arms", ",".join(cfg["arms"])]
    if cfg.get("select_temperature"):
        cmd += ["--select-temperature"]
    for key in ("eps", "epochs", "arch", "max_train", "attack_steps", "teacher_acc", "teacher_epochs", "square_queries", "batch_size"):
        if cfg.get(key) is not None:
            cmd += [f"--{key.replace('_', '-')}", str(cfg[key])]
    if data_dir or cfg.get("data_dir"):
        cmd += ["--data-dir", str(data_dir or (REPO / cfg["data_dir"]))]
    return cmd


def main(folder: Path, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"experiment {folder.name}")
    parser.add_argument("--config", default="config.json", help="config file in the experiment folder (e.g. config-gpu.json)")
    parser.add_argument("--device", default=None, help="default: the config's device, else auto")
    parser.add_argument("--jobs", type=int, default=None, help="default: the config's jobs, else 1")
    parser.add_argument("--data-dir", default=None, help="overrides the config's data folder")
    parser.add_argument("--out", default=None, help="sweep folder (default runs/<name>; rerun the command to resume)")
    parser.add_argument("--dry-run", action="store_true", help="print the command and the cost estimate, run nothing")
    args = parser.parse_args(argv)
    cfg = json.loads((folder / args.config).read_text())
    out, report_dir = Path(args.out or REPO / "runs" / cfg["name"]), REPO / "reports" / cfg["report"]
    report = [sys.executable, "-m", "maskcheck", "report", str(report_dir / "data"), "-o", str(report_dir / "index.html")]
    cmd = sweep_command(cfg, out, args.device or cfg.get("device", "auto"), args.jobs or cfg.get("jobs", 1), args.data_dir)
    print("command:", shlex.join(cmd), flush=True)
    if cfg.get("cost"):
        print(f"estimated cost ({cfg['cost'].get('machine', '?')}): {cfg['cost'].get('estimate', '?')}", flush=True)
    if args.dry_run:
        print("then: copy the JSON files to", report_dir / "data", "and", shlex.join(report))
        return 0
    start = time.perf_counter()
    code = subprocess.call(cmd, cwd=REPO)
    if code == 0:
        copy_json(out, report_dir / "data")
        print("command:", shlex.join(report), flush=True)
        code = subprocess.call(report, cwd=REPO)
    print(f"{cfg['name']}: finished with exit code {code} in {time.perf_counter() - start:.0f} s; report: {report_dir / 'index.html'}")
    return code


def copy_json(sweep: Path, dest: Path) -> None:
    """The sweep's JSON (manifest, run records, audits) without the weights: what the report reads.

    Committed under reports/, so the sample report and its write-up can be checked against the data.
    """
    if dest.exists():
        shutil.rmtree(dest)
    # runs/<name>/ (one seed) or runs/s<seed>/<name>/ (--seeds); the temperature search's result, not its probes
    files = [sweep / "sweep.json", *sorted(sweep.glob("runs/**/run.json")), *sorted(sweep.glob("runs/**/audit.json")),
             *sorted(sweep.glob("select-temperature/temperature.json"))]
    for src in files:
        target = dest / src.relative_to(sweep)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)

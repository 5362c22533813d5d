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
    cmd = [sys.executable, "-m", "maskcheck", "train-sweep", "--dataset", cfg["dataset"],
           "--temps", ",".join(str(t) for t in cfg["temps"]), "--methods", ",".join(cfg["methods"]),
           "--out", str(out), "--seed", str(cfg["seed"]), "--device", device, "--jobs", str(jobs),
           "--audit", "--audit-n", str(cfg["audit_n"]), "--no-report"]
    for key in ("eps", "epochs", "arch"):
        if cfg.get(key) is not None:
            cmd += [f"--{key}", str(cfg[key])]
    if data_dir or cfg.get("data_dir"):
        cmd += ["--data-dir", str(data_dir or (REPO / cfg["data_dir"]))]
    return cmd


def main(folder: Path, argv: list[str] | None = None) -> int:
    cfg = json.loads((folder / "config.json").read_text())
    parser = argparse.ArgumentParser(description=cfg.get("about", folder.name))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--data-dir", default=None, help="overrides the config's data folder")
    parser.add_argument("--out", default=str(REPO / "runs" / cfg["name"]))
    parser.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    args = parser.parse_args(argv)
    out, folder = Path(args.out), REPO / "reports" / cfg["report"]
    report = [sys.executable, "-m", "maskcheck", "report", str(folder / "data"), "-o", str(folder / "index.html")]
    cmd = sweep_command(cfg, out, args.device, args.jobs, args.data_dir)
    print("command:", shlex.join(cmd), flush=True)
    if args.dry_run:
        print("then: copy the JSON files to", folder / "data", "and", shlex.join(report))
        return 0
    start = time.perf_counter()
    code = subprocess.call(cmd, cwd=REPO)
    if code == 0:
        copy_json(out, folder / "data")
        print("command:", shlex.join(report), flush=True)
        code = subprocess.call(report, cwd=REPO)
    print(f"{cfg['name']}: finished with exit code {code} in {time.perf_counter() - start:.0f} s; report: {folder / 'index.html'}")
    return code


def copy_json(sweep: Path, dest: Path) -> None:
    """The sweep's JSON (manifest, run records, audits) without the weights: what the report reads.

    Committed under reports/, so the sample report and its write-up can be checked against the data.
    """
    if dest.exists():
        shutil.rmtree(dest)
    for src in [sweep / "sweep.json", *sorted(sweep.glob("runs/*/run.json")), *sorted(sweep.glob("runs/*/audit.json"))]:
        target = dest / src.relative_to(sweep)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)

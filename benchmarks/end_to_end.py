"""End to end: the README's main job on digits, timed against the 5-minute goal and against its own training.

    PYTHONPATH=. python benchmarks/end_to_end.py [--device auto] [--temps 1,2,5,10,15,20] [--jobs 2] [--keep DIR]

Runs `maskcheck train-sweep --temps T --dataset digits --jobs 2` (the README's quick start, default
audit settings) into a temporary --out folder (or --keep DIR, to profile it afterwards with
benchmarks/profile_sweep.py): it trains natural, dd (teacher + student per T), trades and ltd per T,
audits every model and renders the report. Checks that every run but the dd teachers
(intermediates the sweep does not audit) has its audit.json and that report.html exists, then
prints the wall time, the training stage's wall time from the same run (the sweep's own "where the
time went" lines), their ratio, and the wall time's ratio to 300 s (goal <= 1.0). About 5-15 min
on 2 idle cores. Fewer --temps run a part of the job.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, print_table, verdict  # noqa: E402

GOAL_SECONDS = 300.0
REPO = Path(__file__).resolve().parent.parent


def stage_seconds(log: str, stage: str) -> float | None:
    """`  training 86 s (...)` / `  audits 4.2 min (...)` from the sweep's closing lines, in seconds."""
    m = re.search(rf"^\s+{stage} ([0-9.]+) (s|min)\b", log, re.M)
    if m is None:
        return None
    return float(m.group(1)) * (60.0 if m.group(2) == "min" else 1.0)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--temps", default="1,2,5,10,15,20")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--keep", type=Path, default=None, help="write the sweep here (must not exist) and keep it")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="maskcheck-e2e-") as tmp:
        out = args.keep or Path(tmp) / "sweep"
        if args.keep is not None and out.exists():
            sys.exit(f"end_to_end: --keep {out} exists; give a new folder (a finished sweep would be skipped, not timed)")
        cmd = [sys.executable, "-m", "maskcheck", "train-sweep", "--temps", args.temps, "--dataset", "digits",
               "--jobs", str(args.jobs), "--device", args.device, "--out", str(out), "--no-progress"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        print("$ maskcheck " + " ".join(cmd[3:]), flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"end_to_end: train-sweep exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        log = proc.stderr
        runs = sorted(d for d in (out / "runs").iterdir() if d.is_dir())
        deployed = [d for d in runs if not d.name.startswith("dd-teacher")]
        audited = sum((d / "audit.json").is_file() for d in deployed)
        report = (out / "report.html").is_file()
        if args.keep is None:
            shutil.rmtree(out, ignore_errors=True)
    if audited < len(deployed) or not report:
        sys.exit(f"end_to_end: incomplete output: {audited}/{len(deployed)} models audited, report {'found' if report else 'missing'}")
    closing = log[log.rfind("where the time went"):] if "where the time went" in log else ""
    print(closing.rstrip())
    train, audits = stage_seconds(closing, "training"), stage_seconds(closing, "audits")
    print_table(("temps", "trained", "audited", "seconds", "training s", "audits s", "wall / training"),
                [(args.temps, len(runs), audited, f"{wall:.0f}", f"{train:.0f}" if train else "?", f"{audits:.0f}" if audits else "?",
                  f"{wall / train:.2f}" if train else "?")])
    ratio = wall / GOAL_SECONDS
    print(f"end-to-end ratio to the 5-minute goal: {ratio:.2f} (goal <= 1.0: {verdict(ratio, 1.0)})")


if __name__ == "__main__":
    main()

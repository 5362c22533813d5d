"""End to end: the README's main command on digits, timed against the 5-minute goal.

    PYTHONPATH=. python benchmarks/end_to_end.py [--device auto] [--temps 1,2,5,10,15,20] [--jobs 2]

Runs `maskcheck train-sweep --temps T --dataset digits --jobs 2` into a temporary --out folder:
it trains natural, dd (teacher + student per T), trades and ltd per T, audits every model and
renders the report. Checks that every run but the dd teachers (intermediates the sweep does not
audit) has its audit.json and that report.html exists, then
prints the wall time and its ratio to 300 s (goal <= 1.0). Fewer --temps run a part of the job.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, print_table, verdict  # noqa: E402

GOAL_SECONDS = 300.0
REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--temps", default="1,2,5,10,15,20")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="maskcheck-e2e-") as tmp:
        out = Path(tmp) / "sweep"
        cmd = [sys.executable, "-m", "maskcheck", "train-sweep", "--temps", args.temps, "--dataset", "digits",
               "--jobs", str(args.jobs), "--device", args.device, "--out", str(out), "--no-progress"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        print("$ maskcheck " + " ".join(cmd[3:]), flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        runs = sorted(d for d in (out / "runs").iterdir() if d.is_dir())
        deployed = [d for d in runs if not d.name.startswith("dd-teacher")]
        audited = sum((d / "audit.json").is_file() for d in deployed)
        report = (out / "report.html").is_file()
    if audited < len(deployed) or not report:
        sys.exit(f"end_to_end: incomplete output: {audited}/{len(deployed)} models audited, report {'found' if report else 'missing'}")
    print_table(("temps", "trained", "audited", "report", "seconds"), [(args.temps, len(runs), audited, "yes", f"{wall:.0f}")])
    ratio = wall / GOAL_SECONDS
    print(f"end-to-end ratio to the 5-minute goal: {ratio:.2f} (goal <= 1.0: {verdict(ratio, 1.0)})")


if __name__ == "__main__":
    main()

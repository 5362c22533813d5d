"""The project's own masking-regression stage (run by .ci/run after the unit tests).

    python experiments/masking-regression/run.py [--out DIR] [--write-baseline]

With fixed seeds on `digits` it trains the audit controls (an honest natural model and six
masked wrappers of it, maskcheck.controls) and a mini sweep (dd at T in {1, 20, 100}, trades,
ltd at T in {1, 5}), audits every model with the CLI, and compares each check's flag with the
committed baseline (`baseline.json` beside this file) using `maskcheck regress`. Exit codes are
those of `maskcheck regress`: 0 no change, 1 a flag changed (the diff is printed), 2 bad input.

`--write-baseline` records the current flags as the new baseline: do that deliberately, after
reading the diff, and commit the file with a message that says why the flags moved.
Everything goes through the same commands a user runs, so the stage also tests the CLI.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from maskcheck.checkpoint import load_run  # noqa: E402
from maskcheck.cli import main as maskcheck  # noqa: E402
from maskcheck.controls import CONTROLS, make_control  # noqa: E402

SEED = 0
AUDIT_N = 200
SWEEPS = {  # folder -> (methods, temperatures): two sweeps, since dd and ltd use different T here
    "sweep-dd": ("dd,trades", "1,20,100"),
    "sweep-ltd": ("ltd", "1,5"),
}
SWEEP_MODELS = {"sweep-dd": ["natural", "dd-T1", "dd-T20", "dd-T100", "trades"], "sweep-ltd": ["ltd-T1", "ltd-T5"]}


def cli(*args: str) -> int:
    """Run one maskcheck command in this process and return its exit code."""
    print("$ maskcheck", " ".join(args), flush=True)
    try:
        maskcheck(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def export_controls(natural_run: Path, folder: Path) -> list[Path]:
    """TorchScript archives of the masked wrappers (maskcheck.controls.CONTROLS) around the honest natural model."""
    honest = load_run(natural_run).model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in CONTROLS:
        path = folder / f"control-{name}.pt"
        with warnings.catch_warnings():  # torch.jit.script/save are deprecated but still the portable format
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(make_control(name, honest)), str(path))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "masking-regression"))
    parser.add_argument("--baseline", default=str(HERE / "baseline.json"))
    parser.add_argument("--write-baseline", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    start = time.perf_counter()

    for folder, (methods, temps) in SWEEPS.items():
        code = cli("train-sweep", "--dataset", "digits", "--methods", methods, "--temps", temps, "--seed", str(SEED),
                   "--out", str(out / folder), "--no-audit", "--no-report", "--no-progress")
        if code:
            return code
    audits = out / "audits"
    targets = [(out / folder / "runs" / name, name) for folder, names in SWEEP_MODELS.items() for name in names]
    targets += [(path, path.stem) for path in export_controls(out / "sweep-dd" / "runs" / "natural", out / "controls")]
    for model, name in targets:
        # the controls are TorchScript archives this script just wrote: trusted code by construction
        dataset = [] if model.is_dir() else ["--dataset", "digits", "--trust-code"]
        code = cli("audit", str(model), *dataset, "--n", str(AUDIT_N), "--seed", str(SEED),
                   "--out", str(audits / f"{name}.json"), "--quiet")
        if code not in (0, 1):
            return code
    files = [str(audits / f"{name}.json") for _, name in targets]
    regress = ["regress", *files, "--baseline", args.baseline] + (["--write-baseline"] if args.write_baseline else [])
    code = cli(*regress)
    print(f"masking-regression: {len(targets)} models in {time.perf_counter() - start:.0f} s; exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())

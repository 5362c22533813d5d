"""experiments/cifar10-paper: the full command is valid, and the smoke run goes end to end (issue 13)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from maskcheck import cli

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "cifar10-paper" / "run.py"


def _module(path: Path, name: str):  # noqa: ANN202 - a script loaded as a module
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_full_command_parses_with_the_real_cli(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 13, item 4: the script passed --download, which train-sweep does not have."""
    assert subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, cwd=REPO).returncode == 0
    out = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--compile"], capture_output=True, text=True,
                         cwd=REPO).stdout
    command = next(line for line in out.splitlines() if line.startswith("command: "))
    argv = command.split()[4:]  # drop "command:", python, -m, maskcheck
    assert argv[0] == "train-sweep" and "--download" not in argv
    # every option is one train-sweep knows: parse it with --help appended (typer exits 0 on --help only if all parse)
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--help"])
    assert exc.value.code == 0, capsys.readouterr().err


def test_gpu_hours_come_from_measured_speeds() -> None:
    mod = _module(SCRIPT, "cifar10_paper")
    cfg = json.loads((SCRIPT.parent / "config.json").read_text())
    rates = {k: 1000.0 for k in mod.KINDS}
    rows = dict(mod.full_protocol_hours(cfg, 120, rates, {}))
    ltd = next(h for label, h in rows.items() if label.startswith("train ltd"))
    assert ltd == pytest.approx(len(cfg["temps"]) * 120 * 50_000 / 1000 / 3600)
    slower = dict(mod.full_protocol_hours(cfg, 120, {**rates, "ltd": 500.0}, {}))
    assert next(h for label, h in slower.items() if label.startswith("train ltd")) == pytest.approx(2 * ltd)


@pytest.mark.slow
def test_smoke_runs_the_whole_protocol_on_cpu(tmp_path: Path) -> None:
    fake = _module(REPO / "benchmarks" / "make_fake_cifar10.py", "make_fake_cifar10")
    fake.write_fake_cifar10(tmp_path / "data", 300, 50)
    out = tmp_path / "smoke"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--tiny", "--device", "cpu", "--smoke-steps", "1",
                           "--audit-n", "5", "--square-queries", "10", "--data-dir", str(tmp_path / "data"),
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads((out / "measured.json").read_text())
    assert set(measured["train_images_per_s"]) == {"natural", "dd-teacher", "dd", "trades", "ltd"}
    assert set(measured["audit_seconds_per_point"]) == {"natural", "dd", "trades", "ltd"}
    assert measured["gpu_hours_total"] > 0 and "GPU-hours" in proc.stdout
    assert (out / "report.html").is_file()
    assert len(list(out.glob("runs/*/audit.json"))) == 6  # natural, dd x2, trades, ltd x2 (teachers not audited)

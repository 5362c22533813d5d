"""LTD's two-step temperature search (paper Sec. 4.2) through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maskcheck import cli

TINY = ["--epochs", "1", "--max-train", "96", "--device", "cpu", "--dataset", "digits"]


def _run(args: list[str]) -> int:
    try:
        cli.main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_select_temperature_saves_curve_and_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sel"
    assert _run(["select-temperature", "--temps", "1,50", "--min-acc", "0", "--out", str(out), *TINY]) == 0
    result = json.loads((out / "temperature.json").read_text())
    assert [r["temperature"] for r in result["step1"]] == [1.0, 50.0]
    assert result["upper_bound"] == 50.0 and [r["temperature"] for r in result["step2"]] == [1.0, 50.0]
    best = min(result["step2"], key=lambda r: r["ltd_objective"])
    assert result["chosen_temperature"] == best["temperature"]
    printed = capsys.readouterr().out
    assert "chosen T =" in printed and "step 1" in printed and "step 2" in printed
    # an impossible threshold is a user error: one line, exit 2, probes reused (no retraining)
    mtime = (out / "step1" / "substitute-T1" / "run.json").stat().st_mtime_ns
    assert _run(["select-temperature", "--temps", "1,50", "--min-acc", "1.0", "--out", str(out), *TINY]) == 2
    assert "lower --min-acc" in capsys.readouterr().err
    assert (out / "step1" / "substitute-T1" / "run.json").stat().st_mtime_ns == mtime

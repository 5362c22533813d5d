"""The masking-flag regression: a broken threshold is caught and named; the baseline agrees with the science."""

from __future__ import annotations

import json
from pathlib import Path

from controls import digits, honest_cnn

from maskcheck.auditing import run_audit
from maskcheck.controls import CONTROLS, EXPECTED
from maskcheck.regress import compare, format_diff, load_baseline, write_baseline

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "experiments" / "masking-regression" / "baseline.json"
FAST = dict(n=100, seed=0, progress=False, square_queries=300, apgd_iters=20, eps=0.2)
CHECKS = ["gradient-health", "logit-magnitude", "loss-disagreement"]


def _audit(**overrides):
    return {"honest": run_audit(honest_cnn(), digits(), checks=CHECKS, overrides=overrides or None, **FAST)}


def test_broken_threshold_fails_the_regression_and_restoring_it_passes(tmp_path: Path) -> None:
    base = tmp_path / "baseline.json"
    write_baseline(base, _audit())
    assert compare(load_baseline(base), _audit()) == []

    # Break the saturation threshold: any logit margin above 1e-3 now counts as float32 saturation.
    broken = _audit(**{"logit-magnitude": {"saturation_margin": 1e-3, "softmax_margin": 1e-3}})
    changes = compare(load_baseline(base), broken)
    assert [(c.model, c.check) for c in changes] == [("honest", "logit-magnitude")]
    diff = format_diff(changes)
    assert "logit-magnitude" in diff and "clean (ok) -> FLAGGED (fail)" in diff

    assert compare(load_baseline(base), _audit()) == []  # threshold restored


def test_committed_baseline_agrees_with_the_science() -> None:
    """dd at T=100 and every masked control flagged; natural, trades, ltd at T=5 and the randomised-but-not-masking
    Gaussian-noise control not."""
    models = json.loads(BASELINE.read_text())["models"]
    flagged = {name: m["verdict_flagged"] for name, m in models.items()}
    assert flagged["dd-T100"] and flagged["dd-T20"]
    assert not flagged["natural"] and not flagged["trades"] and not flagged["ltd-T5"]
    for control in CONTROLS:
        assert flagged[f"control-{control}"] is (control in EXPECTED), control


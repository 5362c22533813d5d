"""Issue 17's report: seeds (mean, spread, the real-difference rule), T-curves with the paper's series, relative paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from maskcheck.report import load_inputs, matrix_table, render_report
from maskcheck.report.plots import PAPER_TABLE_IV
from maskcheck.report.seeds import exceeds_spread, group_name, seed_summary
from test_report import make_audit, make_run

# worst-case accuracy per (group, seed): ltd-T1 clearly above trades, ltd-T5 inside trades' range
WORST = {"trades": [0.50, 0.54, 0.52], "ltd-T1": [0.60, 0.62, 0.61], "ltd-T5": [0.49, 0.55, 0.53], "ltd-T20": [0.01, 0.02, 0.00]}
PHASE = {"trades": 0.7, "ltd-T1": 0.72, "ltd-T5": 0.75, "ltd-T20": 0.99}


def _sweep(root: Path) -> Path:
    jobs = []
    for seed in range(3):
        for group, worst in [("natural", None), *((g, w[seed]) for g, w in WORST.items())]:
            method = group.split("-")[0]
            t = float(group.split("-T")[1]) if "-T" in group else None
            name, run_dir = f"{group}-s{seed}", root / "runs" / f"s{seed}" / group
            run_dir.mkdir(parents=True)
            run = make_run(name, method, t)
            if group in PHASE:
                run["metrics"]["history"] = [{"epoch": 1, "train_acc": 0.9, "clean_acc": 0.9, "pgd_acc": 0.5,
                                              "train_robust_acc": PHASE[group] + seed / 100, "inner_success": 0.3}]
            (run_dir / "run.json").write_text(json.dumps(run))
            audit = make_audit(name, method, t, flagged=group == "ltd-T20", extra_check=False).to_dict()
            if worst is not None:
                audit["robust_acc"]["worst-case"] = worst
            (run_dir / "audit.json").write_text(json.dumps(audit))
            jobs.append({"name": name, "method": method, "temperature": t, "teacher": f"natural-s{seed}" if method == "ltd" else None,
                         "run_dir": f"runs/s{seed}/{group}", "seed": seed, "group": group, "variant": None})
    sweep = {"schema_version": 1, "kind": "sweep", "dataset": "digits", "arch": "small-cnn", "temps": [1, 5, 20],
             "methods": ["trades", "ltd"], "seed": 0, "seeds": [0, 1, 2], "eps": 0.3, "norm": "linf", "jobs": jobs,
             "teachers": {f"natural-s{s}": {"epochs": 7, "train_acc": 0.996, "train_acc_measure": "eval", "converged": True,
                                            "clean_acc": 0.97, "target": 0.995} for s in range(3)},
             "selected_temperature": {"temperature": 5.0, "upper_bound": 20.0, "threshold": 0.9,
                                      "file": "select-temperature/temperature.json"}}
    (root / "sweep.json").write_text(json.dumps(sweep))
    return root


def test_exceeds_spread_rule() -> None:
    assert exceeds_spread([0.60, 0.62], [0.50, 0.54]) is True
    assert exceeds_spread([0.49, 0.55], [0.50, 0.54]) is False  # overlapping ranges: not a finding
    assert exceeds_spread([0.6], [0.5, 0.54]) is None  # one seed: no spread to compare against
    assert group_name("ltd-T5-s2", 2.0) == "ltd-T5" and group_name("trades", math.nan) == "trades"


def test_seed_summary_means_ranges_and_verdicts(tmp_path: Path) -> None:
    summary = seed_summary(matrix_table(load_inputs([_sweep(tmp_path)]).entries)).set_index("group")
    for group, worst in WORST.items():
        row = summary.loc[group]
        assert row["seeds"] == 3
        assert row["worst-case"] == pytest.approx(sum(worst) / 3)
        assert (row["worst-case min"], row["worst-case max"]) == (min(worst), max(worst))
    assert summary.loc["ltd-T1", "real difference"] == "yes"
    assert summary.loc["ltd-T5", "real difference"].startswith("no")
    assert summary.loc["ltd-T20", "masked"] == "3/3"
    assert summary.loc["ltd-T20", "train_phase_acc"] == pytest.approx(0.99 + 0.01)
    assert math.isnan(summary.loc["natural", "train_phase_acc"])


def test_report_shows_seeds_curves_paper_and_relative_paths(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path / "sweep")
    out = render_report([sweep.resolve()], tmp_path / "report" / "index.html")
    page = out.read_text()
    assert "Seeds: mean and spread" in page and "no (within seed spread)" in page
    assert "LTD paper Table IV (CIFAR-10, WRN-34-10, AutoAttack)" in page
    assert "Searched temperature:</strong> T = 5" in page
    assert f"{PAPER_TABLE_IV[12.0][1]:.2f}%" in page  # the paper's T = 12 row, 43.85%
    assert "worst case 61.0% (60.0%-62.0%) over 3 seeds" in page  # the matrix cell of ltd-T1
    assert str(tmp_path) not in page and "../sweep/runs/s0/ltd-T5" in page
    seeds_md = out.with_suffix(".seeds.md").read_text()
    assert "ltd-T1" in seeds_md and "yes" in seeds_md
    assert page.count('<img src="data:image/png;base64,') == 1 + 1 + 15 * 6  # overview, T-curves, 6 per model


def test_single_seed_report_has_no_seed_section(tmp_path: Path) -> None:
    from test_report import make_sweep

    out = render_report([make_sweep(tmp_path / "s")], tmp_path / "r.html")
    assert "Seeds: mean and spread" not in out.read_text() and not out.with_suffix(".seeds.md").exists()

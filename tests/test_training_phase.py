"""training-phase-gap: the pure decision on (history, worst case, n), the run-folder entry point, the thin Check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maskcheck.checks.training_phase import FAIL, OK, SKIP, WARN, evaluate_run_folder, training_phase_gap
from maskcheck.errors import InputError


def _history(train_robust: float | None, heldout_pgd: float, epochs: int = 3) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "train_acc": 0.9, "clean_acc": 0.9, "pgd_acc": heldout_pgd}
        if train_robust is not None:
            row.update(train_robust_acc=train_robust, inner_success=1 - train_robust)
        rows.append(row)
    return rows


def test_paper_signature_fails() -> None:
    # LTD Table IV at T >= 15: ~100% in the training phase, 0% under AutoAttack; the held-out PGD of
    # the training loop shares the masked gradient and agrees with the training phase
    d = training_phase_gap(_history(0.99, 0.95), worst_case_acc=0.0, n=200)
    assert d["decision"] == FAIL and d["p_value"] < 1e-6 and d["gap"] == pytest.approx(0.99)


def test_sound_adversarial_training_gap_passes() -> None:
    # trades on digits: training-phase robust accuracy above the held-out worst case by ordinary generalisation
    assert training_phase_gap(_history(0.70, 0.62), worst_case_acc=0.55, n=359)["decision"] == OK


def test_robust_overfitting_is_a_warning_not_masking() -> None:
    # a huge gap, but held-out PGD is low too: the model overfits, the attack still works
    d = training_phase_gap(_history(0.95, 0.45), worst_case_acc=0.40, n=500)
    assert d["decision"] == WARN


def test_inner_attack_still_working_is_at_most_a_warning() -> None:
    assert training_phase_gap(_history(0.85, 0.85), worst_case_acc=0.30, n=500)["decision"] == WARN


def test_small_samples_do_not_flag() -> None:
    # gap above 30 pp on 10 points is not significant at alpha 0.01
    d = training_phase_gap(_history(0.95, 0.95), worst_case_acc=0.5, n=10)
    assert d["gap"] > 0.3 and d["p_value"] > 0.01 and d["decision"] == OK


def test_gap_rule_is_monotone_in_the_worst_case() -> None:
    decisions = [training_phase_gap(_history(0.98, 0.97), worst_case_acc=w / 100, n=400)["decision"] for w in range(0, 101, 5)]
    first_ok = decisions.index(OK)
    assert set(decisions[:first_ok]) == {FAIL} and set(decisions[first_ok:]) == {OK}


def test_methods_without_inner_attack_are_skipped() -> None:
    assert training_phase_gap(_history(None, 0.0), worst_case_acc=0.0, n=100)["decision"] == SKIP


def test_bad_input_is_an_input_error() -> None:
    with pytest.raises(InputError, match="n > 0"):
        training_phase_gap(_history(0.9, 0.9), worst_case_acc=0.1, n=0)


def test_run_folder(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"name": "ltd-T20", "metrics": {"history": _history(0.99, 0.97)}}))
    with pytest.raises(InputError, match="audit.json"):
        evaluate_run_folder(tmp_path)
    (tmp_path / "audit.json").write_text(json.dumps({"n": 300, "robust_acc": {"worst-case": 0.02}}))
    d = evaluate_run_folder(tmp_path)
    assert d["run"] == "ltd-T20" and d["decision"] == FAIL

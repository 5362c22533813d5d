"""run_audit: JSON contract, reproducibility, bad input, EOT."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from controls import MASKED, digits, honest_cnn
from maskcheck import attacks
from maskcheck.auditing import audit_config, run_audit
from maskcheck.config import AuditConfig
from maskcheck.errors import InputError
from maskcheck.results import SCHEMA_VERSION, AuditResult

SMALL = dict(n=100, seed=0, progress=False, square_queries=200, apgd_iters=20, autoattack_standard=False)


@pytest.fixture(scope="module")
def audit_eps01():
    """eps 0.1 leaves points standing, so Square and noise sampling really run."""
    return run_audit(honest_cnn(), digits(), eps=0.1, **SMALL)


def _stable(d: dict) -> dict:
    """The JSON minus what may differ between runs: creation time and durations."""
    d = {k: v for k, v in d.items() if k not in ("created", "timings")}
    d["checks"] = [{k: v for k, v in c.items() if k != "duration_s"} for c in d["checks"]]
    return d


def test_json_has_schema_version_and_round_trips(audit_eps01, tmp_path) -> None:
    path = audit_eps01.save(tmp_path / "audit.json")
    back = AuditResult.load(path)
    assert back.to_dict() == audit_eps01.to_dict()
    d = audit_eps01.to_dict()
    assert d["schema_version"] == SCHEMA_VERSION and d["seed"] == 0 and d["torch_version"]
    assert {"pgd-ce", "white-box", "square", "worst-case", "apgd-ce", "apgd-dlr", "apgd-t", "fgsm"} <= set(d["robust_acc"])
    assert AuditConfig.from_dict(d["config"]) == audit_config(eps=0.1, **{k: v for k, v in SMALL.items() if k != "progress"})
    assert "total" in d["timings"] and any(k.startswith("attack:square") for k in d["timings"])


def test_worst_case_is_the_per_example_minimum(audit_eps01) -> None:
    acc = audit_eps01.robust_acc
    assert acc["worst-case"] <= min(acc["white-box"], acc["square"], acc["pgd-ce"])
    assert acc["white-box"] <= min(acc["apgd-t"], acc["fgsm"], acc["pgd-margin"])
    assert 0 < acc["pgd-ce"] <= audit_eps01.clean_acc  # points stand at eps 0.1: Square really ran


def test_verdict_never_says_robust(audit_eps01) -> None:
    assert not audit_eps01.verdict.flagged, audit_eps01.verdict.text  # honest CNN with points standing
    assert "robust" not in audit_eps01.verdict.text
    assert audit_eps01.verdict.text.startswith(("no masking detected by", "masked", "attack-sensitive"))


def test_same_seed_gives_identical_json(audit_eps01) -> None:
    again = run_audit(honest_cnn(), digits(), eps=0.1, **SMALL)
    assert _stable(again.to_dict()) == _stable(audit_eps01.to_dict())


def test_same_seed_reproduces_a_randomised_model() -> None:
    noisy = MASKED["noisy"][0](honest_cnn())
    a, b = (run_audit(noisy, digits(), eps=0.1, checks=["autoattack-flags", "random-sampling"], **SMALL) for _ in range(2))
    assert _stable(a.to_dict()) == _stable(b.to_dict())


def test_eot_runs_gradient_attacks_over_k_draws() -> None:
    noisy = MASKED["noisy"][0](honest_cnn())
    result = run_audit(noisy, digits(), eps=0.3, eot=3, checks=["autoattack-flags"], **SMALL)
    assert result.check("autoattack-flags").evidence["eot_draws"] == 3
    assert result.check("autoattack-flags").flagged


def test_a_randomised_model_gets_eot_automatically_and_the_verdict_says_so() -> None:
    noisy = MASKED["noisy"][0](honest_cnn())
    result = run_audit(noisy, digits(), eps=0.3, checks=["autoattack-flags"], **SMALL)
    assert result.check("autoattack-flags").evidence["eot_draws"] == 20
    assert "EOT over 20 draws (the model is randomised)" in result.verdict.text and result.verdict.notes
    det = run_audit(honest_cnn(), digits(), eps=0.3, checks=["autoattack-flags"], **SMALL)
    assert det.check("autoattack-flags").evidence["eot_draws"] == 1 and not det.verdict.notes


def test_majority_scoring_over_draws() -> None:
    """A model right on 2 of 3 draws counts as correct; right on 1 of 3 as broken."""
    from maskcheck.auditing import AuditContext

    class Flip(nn.Module):
        def __init__(self, right: int) -> None:
            super().__init__()
            self.right, self.calls = right, 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            good = (self.calls - 1) % 3 < self.right
            return torch.eye(2)[[0 if good else 1] * len(x)]

    x, y = torch.zeros(4, 1), torch.zeros(4, dtype=torch.long)
    for right, expect in ((2, True), (1, False)):
        ctx = AuditContext(Flip(right), x, y, num_classes=2, config=audit_config(eps=0.1, eot=3), progress=False)
        assert ctx.score(x, y).tolist() == [expect] * 4


def test_a_check_defined_here_joins_the_audit_the_json_and_the_report(monkeypatch, tmp_path) -> None:
    """Adding a check touches no other file: registering it is enough for audit, JSON and report."""
    from dataclasses import dataclass

    from maskcheck.checks.base import REGISTRY, Check
    from maskcheck.report import render_report
    from maskcheck.results import Severity

    @dataclass(frozen=True)
    class CleanAccuracyFloor(Check):
        """Flags when clean accuracy is below `floor` (a toy check defined in a test).

        Why: only a demonstration. Reference: none (ours).
        """

        floor: float = 2.0

        name = "clean-floor"
        mechanism = "toy mechanism"

        def needs(self, cfg, bat):
            return (bat.fgsm,)

        def evaluate(self, ctx):
            acc = float(ctx.correct(ctx.battery.fgsm).float().mean())
            return self.result(ctx, severity=Severity.FAIL, evidence={"fgsm_acc": acc}, summary="always below the floor.")

    monkeypatch.setitem(REGISTRY, "clean-floor", CleanAccuracyFloor)
    result = run_audit(honest_cnn(), digits(), eps=0.3, checks="clean-floor,logit-magnitude", **SMALL)
    assert [c.check for c in result.checks] == ["logit-magnitude", "clean-floor"]
    assert result.verdict.flagged and "toy mechanism" in result.verdict.text and "fgsm" in result.robust_acc
    path = result.save(tmp_path / "audit.json")
    assert AuditResult.load(path).check("clean-floor").doc.startswith("Flags when clean accuracy")
    page = render_report([path], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "clean-floor" in page and "a toy check defined in a test" in page and "toy mechanism" in page


class _Const(nn.Module):
    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out.expand(len(x), -1) + self.w


def _one_line_error(match: str, *args, **kwargs) -> None:
    with pytest.raises(InputError, match=match) as info:
        run_audit(*args, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad,match", [
    (dict(eps=0.0), "eps must lie in"), (dict(eps=1.5), "eps must lie in"), (dict(eps=math.nan), "eps must lie in"),
    (dict(n=0), "--n must be a positive"), (dict(checks="logit-magnitude,nope"), "unknown check 'nope'"),
    (dict(norm="l3"), "--norm must be"), (dict(eot=0), "--eot must be"),
    (dict(overrides={"nope": {}}), "unknown check"),
])
def test_bad_arguments_are_one_line_errors(bad: dict, match: str) -> None:
    kwargs = {**SMALL, "eps": 0.3, **bad}
    _one_line_error(match, honest_cnn(), digits(), **kwargs)


def test_wrong_number_of_classes_is_a_user_error() -> None:
    _one_line_error("outputs 3 classes but the dataset has 10", _Const(torch.zeros(1, 3)), digits(), eps=0.3, **SMALL)


def test_nan_logits_are_a_user_error() -> None:
    _one_line_error("NaN or Inf logits", _Const(torch.full((1, 10), math.nan)), digits(), eps=0.3, **SMALL)


def test_inputs_outside_unit_box_are_a_user_error() -> None:
    x, y = digits().heldout_tensors(50)
    _one_line_error(r"inputs must lie in \[0, 1\]", honest_cnn(), (x * 16, y), eps=0.3, num_classes=10, **{**SMALL, "n": 50})


@settings(max_examples=15, deadline=None)
@given(eps=st.floats(0.01, 1.0), norm=st.sampled_from(["linf", "l2"]), steps=st.integers(0, 5))
def test_early_stopping_pgd_stays_in_the_ball_and_the_box(eps: float, norm: str, steps: int) -> None:
    """The audit's PGD (stop_when_broken) keeps the attack invariants and never raises accuracy."""
    x, y = digits().heldout_tensors(32)
    model = honest_cnn()
    r = attacks.pgd(model, x, y, eps=eps, norm=norm, steps=steps, stop_when_broken=True, record=True,
                    generator=torch.Generator().manual_seed(0))
    delta = (r.x_adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all() and r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        assert torch.equal(model(r.x_adv).argmax(1) == y, r.correct) and not (r.correct & ~clean).any()
    assert r.loss_history.shape == (steps + 1, 32)


@pytest.mark.slow
def test_autoattack_standard_figure_matches_pyautoattack() -> None:
    """robust_acc["autoattack-standard"] vs pyautoattack's own standard evaluation: within one point."""
    from pyautoattack import AutoAttack

    n = 30
    model = honest_cnn()
    result = run_audit(model, digits(), eps=0.1, n=n, seed=0, progress=False, checks=["black-box-gap"],
                       autoattack_standard=True)
    x, y = digits().heldout_tensors(n)
    adversary = AutoAttack(model, norm="Linf", eps=0.1, version="standard", seed=0, device="cpu")
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=n)  # returns (x_adv, y_adv)
    with torch.no_grad():
        theirs = float((model(x_adv).argmax(1) == y).float().mean())
    assert 0 < theirs < float((model(x).argmax(1) == y).float().mean())  # points stand and fall: not a trivial 0 == 0
    assert abs(result.robust_acc["autoattack-standard"] - theirs) <= 1 / n + 1e-9, (result.robust_acc, theirs)

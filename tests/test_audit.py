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
from maskcheck.audit import run_audit
from maskcheck.errors import InputError
from maskcheck.results import SCHEMA_VERSION, AuditResult

SMALL = dict(n=100, seed=0, progress=False, square_queries=200, apgd_iters=20)


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
    assert {"pgd-ce", "white-box", "square", "worst-case", "apgd-ce", "apgd-t", "fgsm"} <= set(d["robust_acc"])
    assert "total" in d["timings"] and any(k.startswith("attack:square") for k in d["timings"])


def test_worst_case_is_the_per_example_minimum(audit_eps01) -> None:
    acc = audit_eps01.robust_acc
    assert acc["worst-case"] <= min(acc["white-box"], acc["square"], acc["pgd-ce"])
    assert acc["white-box"] <= min(acc["apgd-t"], acc["fgsm"], acc["pgd-margin"])
    assert 0 < acc["pgd-ce"] <= audit_eps01.clean_acc  # points stand at eps 0.1: Square really ran


def test_verdict_never_says_robust(audit_eps01) -> None:
    assert not audit_eps01.verdict.flagged, audit_eps01.verdict.text  # honest CNN with points standing
    assert "robust" not in audit_eps01.verdict.text
    assert audit_eps01.verdict.text.startswith(("no masking detected by", "masking suspected"))


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
    assert result.check("autoattack-flags").params["eot"] == 3
    assert result.check("autoattack-flags").flagged


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

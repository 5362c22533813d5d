"""Every check against controls: an honest CNN passes, each masked model is flagged by its mechanism's check."""

from __future__ import annotations

import pytest
import torch

from controls import MASKED, digits, honest_cnn
from maskcheck.audit import run_audit
from maskcheck.checks import REGISTRY, make_check
from maskcheck.checks.base import extra_breaks
from maskcheck.errors import InputError
from maskcheck.results import CheckResult, Severity

FAST = dict(n=100, seed=0, progress=False, square_queries=300, apgd_iters=20)
NAMES = ["one-step-vs-iterative", "black-box-gap", "loss-disagreement", "unbounded-attack", "random-sampling",
         "distortion-sweep", "gradient-health", "logit-magnitude", "attack-convergence", "autoattack-flags",
         "training-phase-gap"]


@pytest.fixture(scope="module")
def honest_audit():
    return run_audit(honest_cnn(), digits(), eps=0.3, n=200, seed=0, progress=False, square_queries=1000)


def test_registry_names_are_the_documented_ones() -> None:
    assert list(REGISTRY) == NAMES


def test_honest_cnn_is_not_flagged_by_any_check(honest_audit) -> None:
    flagged = [(c.check, c.summary) for c in honest_audit.checks if c.flagged]
    assert flagged == []
    assert honest_audit.verdict.text == "no masking detected by 10 checks"
    assert honest_audit.clean_acc > 0.9


def test_every_check_returns_a_complete_typed_result(honest_audit) -> None:
    assert [c.check for c in honest_audit.checks] == NAMES
    for c in honest_audit.checks:
        # training-phase-gap reads a maskcheck run's training history; honest_cnn is a bare module without one
        assert isinstance(c, CheckResult) and (c.severity is not Severity.SKIPPED) == (c.check != "training-phase-gap")
        assert c.summary and "\n" not in c.summary
        assert c.params["seed"] == 0 and c.params["eps"] == 0.3
        assert c.duration_s >= 0


def test_plot_data_is_present_for_the_figures(honest_audit) -> None:
    kinds = {c.check: [p.kind for p in c.plots] for c in honest_audit.checks}
    assert kinds["gradient-health"] == ["histogram"]
    assert kinds["logit-magnitude"] == ["histogram", "histogram"]
    assert kinds["attack-convergence"] == ["curve"]
    assert kinds["distortion-sweep"] == ["curve"]
    assert kinds["black-box-gap"] == ["bars"]
    curve = honest_audit.check("attack-convergence").plots[0]
    assert {"ce mean", "ce q10", "ce q90", "margin mean"} <= set(curve.series)


@pytest.mark.parametrize("control", list(MASKED))
def test_masked_control_is_flagged_by_its_mechanism(control: str) -> None:
    wrapper, check, mechanism = MASKED[control]
    result = run_audit(wrapper(honest_cnn()), digits(), eps=0.3, checks=[check], **FAST)
    c = result.check(check)
    assert c.flagged, c.summary
    assert c.severity is Severity.FAIL and c.mechanism == mechanism and c.remedy
    assert mechanism in result.verdict.text


def test_scaled_logits_are_caught_by_the_loss_disagreement() -> None:
    result = run_audit(MASKED["scaled"][0](honest_cnn()), digits(), eps=0.3, checks=["loss-disagreement"], **FAST)
    c = result.check("loss-disagreement")
    assert c.flagged and c.evidence["margin_only_breaks"] > 50


def test_dd_like_high_temperature_model_is_flagged() -> None:
    """Training through logits / 100 and deploying without it: defensive distillation's failure."""
    result = run_audit(honest_cnn(temperature=100.0), digits(), eps=0.3, checks=["logit-magnitude", "loss-disagreement"], **FAST)
    assert result.check("logit-magnitude").flagged
    assert "saturated logits" in result.verdict.mechanisms


def test_gradients_unavailable_is_a_finding_not_a_crash() -> None:
    result = run_audit(MASKED["detached"][0](honest_cnn()), digits(), eps=0.3, **FAST)
    assert result.check("gradient-health").mechanism == "gradients unavailable"
    assert "BPDA" in result.check("gradient-health").summary
    assert result.check("black-box-gap").flagged  # Square still runs and breaks it
    assert result.robust_acc["square"] < result.robust_acc["white-box"]


def test_threshold_override_changes_the_outcome() -> None:
    model = MASKED["scaled"][0](honest_cnn())
    result = run_audit(model, digits(), eps=0.3, checks=["logit-magnitude"],
                       overrides={"logit-magnitude": {"saturation_margin": 1e9}}, **FAST)
    assert not result.check("logit-magnitude").flagged
    assert result.check("logit-magnitude").params["saturation_margin"] == 1e9


def test_unknown_override_field_is_a_user_error() -> None:
    with pytest.raises(InputError, match="no parameter"):
        make_check("logit-magnitude", {"nope": 1})


def test_one_stray_example_at_n200_is_not_significant() -> None:
    ref = torch.ones(200, dtype=torch.bool)
    one = ref.clone()
    one[3] = False
    assert not extra_breaks(one, ref, 200, 0.002).significant(0.002, 0.01)
    many = ref.clone()
    many[:10] = False
    e = extra_breaks(many, ref, 200, 0.002)
    assert e.significant(0.002, 0.01) and e.examples == list(range(10))

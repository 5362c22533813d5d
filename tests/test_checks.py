"""Every check against controls: an honest CNN passes, each masked model is flagged by its mechanism's check."""

from __future__ import annotations

import pytest
import torch

from controls import MASKED, digits, honest_cnn
from maskcheck.controls import CONTROLS
from maskcheck.auditing import run_audit
from maskcheck.checks import REGISTRY, make_check
from maskcheck.checks.base import extra_breaks
from maskcheck.errors import InputError
from maskcheck.results import CheckResult, Severity

FAST = dict(n=100, seed=0, progress=False, square_queries=300, apgd_iters=20, autoattack_standard=False)


@pytest.fixture(scope="module")
def honest_audit():
    return run_audit(honest_cnn(), digits(), eps=0.3, n=200, seed=0, progress=False, square_queries=1000,
                     autoattack_standard=False)


def test_honest_cnn_is_not_flagged_by_any_check(honest_audit) -> None:
    flagged = [(c.check, c.summary) for c in honest_audit.checks if c.flagged]
    assert flagged == []
    ran = [c for c in honest_audit.checks if c.severity is not Severity.SKIPPED]  # training-phase-gap needs a run's history
    assert honest_audit.verdict.text == f"no masking detected by {len(ran)} checks"
    assert honest_audit.verdict.grade == "no masking detected"
    assert honest_audit.clean_acc > 0.9


def test_every_check_returns_a_complete_typed_result(honest_audit) -> None:
    assert [c.check for c in honest_audit.checks] == list(REGISTRY)
    for c in honest_audit.checks:
        # training-phase-gap reads a maskcheck run's training history; honest_cnn is a bare module without one
        assert isinstance(c, CheckResult) and (c.severity is not Severity.SKIPPED) == (c.check != "training-phase-gap")
        assert c.summary and "\n" not in c.summary
        assert c.params["seed"] == 0 and c.params["eps"] == 0.3
        assert c.duration_s >= 0
        assert c.doc == REGISTRY[c.check].doc() and "Reference" in c.doc  # one source: the class docstring


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
    assert c.mechanism == "saturated softmax" and c.evidence["saturation_evidence_fraction"] >= 0.5
    assert result.verdict.grade == "masked"


def test_a_large_logit_offset_is_caught_by_float32_resolution() -> None:
    from maskcheck.controls import OffsetLogits

    result = run_audit(OffsetLogits(honest_cnn()).eval(), digits(), eps=0.3, checks=["logit-magnitude"], **FAST)
    c = result.check("logit-magnitude")
    assert c.flagged and c.mechanism == "logit offset (float32 resolution)", c.summary
    assert c.evidence["median_ulp_at_max_abs_logit"] > 1e-3 * c.evidence["median_margin"]


def test_flat_softmax_is_attack_sensitive_not_masked() -> None:
    """Logits x 0.01: CE is a weak surrogate on a flat softmax; sharpening the logits closes the gap."""
    from maskcheck.attacks import Rescaled

    result = run_audit(Rescaled(honest_cnn(), 0.01).eval(), digits(), eps=0.3, checks=["loss-disagreement", "logit-magnitude"],
                       **FAST)
    c = result.check("loss-disagreement")
    assert not result.verdict.flagged, result.verdict.text
    if c.severity is Severity.WARN:  # a gap was measured: it must be explained by a flat softmax
        assert c.mechanism == "flat softmax" and result.verdict.grade == "attack-sensitive"


def test_gradient_health_alone_runs_no_attack() -> None:
    """--checks gradient-health runs only its own gradient probe: no Square, no PGD."""
    result = run_audit(honest_cnn(), digits(), eps=0.3, checks=["gradient-health"], **FAST)
    assert not any(k.startswith("attack:") and k not in ("attack:clean", "attack:gradients") for k in result.timings), result.timings
    assert "square" not in result.robust_acc


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
    # the checks that read gradient attacks are skipped with one reason, not run on attacks that could not move
    needing = [c for c in result.checks if REGISTRY[c.check].needs_gradients]
    assert needing and all(c.severity is Severity.SKIPPED and "no gradient path" in c.summary for c in needing)


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


@pytest.mark.parametrize("extra, severity", [(0, Severity.OK), (7, Severity.WARN), (40, Severity.FAIL)])
def test_black_box_gap_fails_only_on_a_large_gap(extra: int, severity: Severity) -> None:
    """Square breaking a few points (7 of 500: 1.4 pp, as on a sound MNIST LTD model) is attack-sensitive; tens of pp is masking."""
    from types import SimpleNamespace

    import torch

    from maskcheck.checks.black_box import BlackBoxGap

    n = 500
    white_box = torch.ones(n, dtype=torch.bool)
    white_box[:200] = False  # 200 points broken by the white-box attacks
    square = white_box.clone()
    square[200:200 + extra] = False  # and `extra` more only Square breaks
    bat = SimpleNamespace(square="square", apgd_ce="apgd-ce", pgd_ce="pgd-ce")
    outcomes = {"square": square, "apgd-ce": white_box, "pgd-ce": white_box}
    ctx = SimpleNamespace(battery=bat, correct=outcomes.__getitem__, white_box=white_box, n=n, square_queries=5000,
                          eps=0.3, norm="linf", seed=0, eot=1, config=None)
    result = BlackBoxGap().evaluate(ctx)
    assert result.severity is severity, result.summary
    assert result.flagged == (severity is Severity.FAIL)


def test_a_dead_network_is_degenerate_not_masked() -> None:
    """A collapsed model (a PGD-AT seed of the calibration suite): every ReLU dead, the output is the
    last bias for every input. Its gradients are zero and no attack breaks it because it is a
    constant function, not because gradients are hidden; it has nothing to mask."""
    import copy

    dead = copy.deepcopy(honest_cnn())
    last = [m for m in dead.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
    result = run_audit(dead, digits(), eps=0.3, **FAST)
    assert result.verdict.grade == "inconclusive", result.verdict.text  # issue 22: was 'no masking detected'
    assert "degenerate model" in result.verdict.text
    assert result.check("gradient-health").severity is Severity.SKIPPED
    assert result.check("unbounded-attack").severity is Severity.SKIPPED
    assert result.robust_acc["worst-case"] == pytest.approx(result.clean_acc)


def test_a_collapsed_network_predicting_one_class_is_not_masked() -> None:
    """MNIST PGD-AT at seeds 1-2 of the calibration suite: one class wins on every input by a tiny
    margin (gradients non-zero), so even an unbounded attack cannot break its correct points. That
    is a collapsed model at chance, not masking; a healthy model stays checked as before."""
    class Collapsed(torch.nn.Module):
        def forward(self, x):
            z = 1e-3 * torch.tanh(x.flatten(1)[:, :10])  # input-dependent, never large enough to flip the argmax
            return z + torch.nn.functional.one_hot(torch.tensor(3), 10).float()

    result = run_audit(Collapsed(), digits(), eps=0.3, **FAST)
    assert result.verdict.grade == "inconclusive", result.verdict.text
    assert "degenerate model" in result.verdict.text
    assert result.check("unbounded-attack").severity is Severity.SKIPPED
    assert result.check("gradient-health").severity is Severity.SKIPPED


@pytest.mark.parametrize("incomplete, rising, n, warns", [
    (1 / 3, 1, 359, False),   # a natural model: 1 of 3 standing points still rising
    (0.5, 2, 359, False),     # dd at low T: 2 of 4
    (0.13, 23, 359, True),    # a robust model: 23 of 180 standing points (6% of n)
    (0.05, 10, 359, False),   # below IoAF's fraction
])
def test_attack_convergence_warns_only_on_enough_rising_points(incomplete, rising, n, warns) -> None:
    assert make_check("attack-convergence").warns(incomplete, rising, n) is warns


@pytest.mark.parametrize("seed", [0, 1])
def test_an_unbounded_attack_breaks_a_noisy_model(seed: int) -> None:
    """A randomised model (Gaussian input noise, scored by majority over EOT draws) is breakable
    with the whole input box: unbounded-attack must not call it masked. PGD used to drop a point at
    its first misclassification, on the decision boundary, where the majority vote is a coin flip."""
    noisy = CONTROLS["noisy"](honest_cnn())
    result = run_audit(noisy, digits(), eps=0.3, checks=["unbounded-attack"], **{**FAST, "n": 60, "seed": seed})
    check = result.check("unbounded-attack")
    assert "EOT over 20 draws" in result.verdict.text and not check.flagged, check.summary
    assert check.evidence["unbroken_after_pgd"] == 0, check.evidence


def test_loss_disagreement_closes_only_within_the_binomial_tolerance() -> None:
    """Issue 22: "closes" accepted a residual of half the gap. 40 of 200 points broken by the margin side
    only, 15 of them (7.5 pp, significant) left by CE at every rescaling, confident softmax, no
    saturation: a gap that survives every rescaling, FAIL (it was a WARN: 15 <= 40 / 2 "closed")."""
    from types import SimpleNamespace

    from maskcheck.attacks import Battery

    n, bat = 200, Battery.standard(20)
    ce = torch.ones(n, dtype=torch.bool)
    margin = ce.clone()
    margin[:40] = False
    rerun = torch.ones(n, dtype=torch.bool)
    rerun[15:40] = False  # CE on rescaled logits finds 25 of the 40, leaves 15
    table = {bat.pgd_ce: ce, bat.apgd_ce: ce, bat.pgd_margin: margin, bat.apgd_dlr: margin}

    def correct(spec):
        return table.get(spec, rerun)

    x = torch.rand(n, 4)
    lin = torch.nn.Linear(4, 3)
    logits = torch.tensor([[4.0, 0.0, 0.0]]).repeat(n, 1)  # top-1 probability 0.96, margin 4 < 17
    ctx = SimpleNamespace(battery=bat, n=n, correct=correct, outcome=lambda spec, points=None: SimpleNamespace(correct=rerun),
                          clean_logits=logits, attack_model=lin, x=x, y=torch.zeros(n, dtype=torch.long), batch_size=500,
                          device=torch.device("cpu"), eps=0.1, norm="linf", seed=0, eot=1)
    check = make_check("loss-disagreement")
    assert len(check.follow_up(ctx)) == 2 * len(check.scales)  # the reruns are declared
    res = check.evaluate(ctx)
    assert res.severity is Severity.FAIL and res.mechanism == check.mechanism
    # within tolerance: CE leaves 4 of 200 (2 pp): closes under x10 -> flat softmax WARN
    rerun[4:40] = False
    assert make_check("loss-disagreement").evaluate(ctx).severity is Severity.WARN


def test_distortion_sweep_has_its_own_verdict_below_the_audit_eps() -> None:
    """Issue 22: masking confined beyond a small radius: PGD at eps/4 breaks 30 of 100 points, at the audit
    eps and above only 5 (then all at the largest, so 'above chance' cannot fire): named as such."""
    from types import SimpleNamespace

    from maskcheck.attacks import Battery

    n, eps, bat = 100, 0.1, Battery.standard(20)
    check = make_check("distortion-sweep")
    grid = check._grid(eps, "linf")
    table = {}
    for e in grid:
        c = torch.ones(n, dtype=torch.bool)
        c[: 30 if e < eps / 2 else 100 if e >= 0.5 else 5] = False
        table[check._spec(bat, e, eps)] = c
    ctx = SimpleNamespace(battery=bat, n=n, eps=eps, norm="linf", num_classes=10, seed=0, eot=1,
                          correct=lambda spec: table[spec])
    res = check.evaluate(ctx)
    assert res.severity is Severity.FAIL and res.mechanism == "masking beyond a small radius"
    assert res.evidence["below_eps_rise_between"] == [grid[0], eps]
    for e in grid:  # a falling curve: nothing to name
        table[check._spec(bat, e, eps)] = torch.arange(n) >= min(100, int(1000 * e))
    assert check.evaluate(ctx).severity is Severity.OK


def test_autoattack_flags_says_when_eot_had_not_converged() -> None:
    """Issue 22: EOT was a fixed 20 draws with no convergence test. PGD-CE with 4K draws breaking 30 of 200
    points that every white-box attack with K draws missed: named 'EOT not converged'; 1 extra break is attack
    noise. 4K draws that only help PGD-CE catch up with what APGD broke with K draws are no evidence (failed
    before: the zoo's noisy TRADES was `masked` by it at default settings, seed 0)."""
    from types import SimpleNamespace

    from maskcheck.attacks import Battery

    n, bat = 200, Battery.standard(20)
    white_box = torch.ones(n, dtype=torch.bool)
    more = white_box.clone()
    more[:30] = False
    check = make_check("autoattack-flags")
    probe = {"correct_per_pass": [n] * 5, "max_normalized_output_diff": 0.0, "randomized": False,
             "correct_per_grad_pass": [n, n - 3, n, n - 1, n], "max_normalized_output_diff_grad": 0.3, "randomized_grad": True,
             "inference_grad_output_diff": 0.3, "grad_mismatch": False, "first_output": torch.randn(n, 10)}
    ctx = SimpleNamespace(battery=bat, n=n, eot=20, grad_ok=True, randomness=probe, x=torch.zeros(n, 4), model=torch.nn.Identity(),
                          eps=0.1, norm="linf", seed=0, white_box=white_box)
    ctx.correct = lambda spec: more if spec == check._eot_spec(ctx) else white_box
    assert check.follow_up(ctx) == (check._eot_spec(ctx),) and check._eot_spec(ctx).eot == 80
    assert check._eot_spec(ctx).after == bat.white_box  # only the points every K-draw white-box attack left standing
    res = check.evaluate(ctx)
    assert res.flagged and "EOT not converged" in res.mechanism and "randomness (gradient mode only)" in res.mechanism
    assert res.evidence["eot_extra_breaks"] == 30
    more[1:30] = True
    assert "EOT not converged" not in check.evaluate(ctx).mechanism
    # a weak K-draw PGD-CE (60 more points standing than the white-box battery): 4K draws breaking 30 of those is catch-up
    weak_pgd = white_box.clone()
    ctx.white_box = white_box.clone()
    ctx.white_box[:60] = False
    more[:] = ctx.white_box
    ctx.correct = lambda spec: more if spec == check._eot_spec(ctx) else weak_pgd
    assert "EOT not converged" not in check.evaluate(ctx).mechanism


def test_random_sampling_draws_are_sized_by_tolerance_and_alpha() -> None:
    """Issue 23: draws per point from the binomial miss probability, not a fixed 1,000: a point with
    `tolerance` of its ball misclassified survives R draws with probability (1 - tolerance)^R <= alpha."""
    check = make_check("random-sampling")
    r = check.draws
    assert (1 - check.tolerance) ** r <= check.alpha < (1 - check.tolerance) ** (r - 1)  # the fewest draws that do it
    assert r == 459
    assert make_check("random-sampling", {"tolerance": 0.0046}).draws >= 999  # the former fixed 1,000
    assert make_check("random-sampling", {"repeats": 100}).draws == 100  # explicit draws win (calibration's quick audit)
    for bad in ({"tolerance": 0.0}, {"tolerance": 1.0}, {"alpha": 0.0}, {"repeats": 0}):
        with pytest.raises(InputError):
            make_check("random-sampling", bad)

"""run_audit: JSON contract, reproducibility, bad input, EOT."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from controls import MASKED, digits, honest_cnn
from maskcheck.controls import CONTROLS, RandomGradientTrap
from maskcheck.results import Severity
from maskcheck import attacks
from maskcheck.auditing import audit_config, audit_points, run_audit
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
    # "robust" only ever names a metric ("worst-case robust accuracy" to quote), never the model
    assert "robust" not in audit_eps01.verdict.text.replace("robust accuracy", "")
    assert audit_eps01.verdict.text.startswith(("no masking detected by", "masked", "attack-sensitive"))


def test_same_seed_gives_identical_json(audit_eps01) -> None:
    again = run_audit(honest_cnn(), digits(), eps=0.1, **SMALL)
    assert _stable(again.to_dict()) == _stable(audit_eps01.to_dict())


def test_same_seed_reproduces_a_randomised_model() -> None:
    noisy = CONTROLS["noisy"](honest_cnn())
    a, b = (run_audit(noisy, digits(), eps=0.1, checks=["autoattack-flags", "random-sampling"], **SMALL) for _ in range(2))
    assert _stable(a.to_dict()) == _stable(b.to_dict())


def test_eot_runs_gradient_attacks_over_k_draws() -> None:
    """--eot K: the gradient attacks average K draws, the convergence rerun uses 4K, and its breaks count in the
    worst case. (Whether the trap is flagged at K = 3 is not asserted: 3 draws leave most of its +-50 term, so
    single draw and EOT are alike, and 4K adds 5 of 100 points, below the binomial test's reach at n = 100.)"""
    trap = RandomGradientTrap(honest_cnn()).eval()
    result = run_audit(trap, digits(), eps=0.3, eot=3, checks=["autoattack-flags"], **SMALL)
    flags = result.check("autoattack-flags")
    assert flags.evidence["eot_draws"] == 3 and flags.evidence["eot_draws_check"] == 12
    assert result.robust_acc["worst-case"] <= flags.evidence["acc_pgd_ce_eot_check"] + 1e-9


def test_a_randomised_model_gets_eot_automatically_and_the_verdict_says_so() -> None:
    noisy = CONTROLS["noisy"](honest_cnn())
    result = run_audit(noisy, digits(), eps=0.3, checks=["autoattack-flags"], **SMALL)
    assert result.check("autoattack-flags").evidence["eot_draws"] == 20
    assert "EOT over 20 draws (the model is randomised)" in result.verdict.text and result.verdict.notes
    det = run_audit(honest_cnn(), digits(), eps=0.3, checks=["autoattack-flags"], **SMALL)
    assert det.check("autoattack-flags").evidence["eot_draws"] == 1 and not det.verdict.notes


@pytest.mark.parametrize("seed", [0, 1])
def test_randomness_is_flagged_only_when_it_misleads_a_single_draw_attack(seed: int) -> None:
    """Issue 22: inference randomness is graded by its effect on the attack. Gaussian input noise on a natural
    model (sigma 0.01 and 0.1), where single-draw attacks break what EOT breaks, is recorded, attacked with EOT
    and not flagged; a random gradient term on the same natural model misleads the 20-step PGD-CE with one draw
    by >= 5 pp, so it is at least a WARN naming randomness (APGD with one draw breaks a natural model anyway).
    Failed before: any randomness was a FAIL; then the single-draw PGD stopped at its first (lucky) break and
    was judged by the majority vote, which left boundary points standing and flagged the sigma 0.1 noise."""
    base = honest_cnn()
    settings = {**SMALL, "seed": seed}
    for sigma in (0.01, 0.1):
        benign = run_audit(CONTROLS["noisy"](base, sigma=sigma), digits(), eps=0.3, checks=["autoattack-flags"], **settings)
        c = benign.check("autoattack-flags")
        assert c.evidence["randomized"] and c.evidence["eot_draws"] == 20 and not c.flagged, (sigma, c.summary)
        assert c.evidence["single_draw_p_value"] > 0.01 and "does not mislead" in c.summary
        assert benign.verdict.notes and not benign.verdict.flagged
    trap = run_audit(RandomGradientTrap(base).eval(), digits(), eps=0.3, checks=["autoattack-flags"], **settings)
    t = trap.check("autoattack-flags")
    assert t.severity in (Severity.WARN, Severity.FAIL) and t.mechanism.startswith("randomness"), t.summary
    assert t.evidence["acc_pgd_ce_single_draw"] - t.evidence["acc_pgd_ce_eot"] >= 0.05, t.evidence


def test_noise_that_slows_a_weak_attack_is_not_masking_a_random_gradient_is() -> None:
    """Issue 22 (a false alarm): sigma 0.05 input noise on a TRADES model (zoo member trades-noise, sound: the
    audit's quote equals its ground truth) leaves the 20-step PGD-CE with one draw 7 pp above its EOT twin, while
    APGD-CE with one draw is as strong as with EOT: a weak attack slowed by noise, graded WARN
    ("randomness (slows single-draw PGD)"), never `masked`. The random gradient term on the same TRADES model
    misleads PGD-CE and APGD-CE with one draw alike: FAIL "randomness". Failed before: the rule compared PGD-CE
    alone and graded the noisy TRADES `masked: randomness` (single draw 17% vs EOT 10% at seed 0)."""
    from maskcheck import zoo

    splits = digits()
    noisy = run_audit(zoo.build_member("trades-noise", "digits", splits, 0, 0.3), splits, eps=0.3,
                      checks=["autoattack-flags"], **SMALL)
    c = noisy.check("autoattack-flags")
    assert c.severity == Severity.WARN and c.mechanism == "randomness (slows single-draw PGD)", c.summary
    assert c.evidence["acc_pgd_ce_single_draw"] - c.evidence["acc_pgd_ce_eot"] >= 0.05, c.evidence
    assert noisy.verdict.grade != "masked", noisy.verdict.text
    base = zoo.base_model("trades", "digits", splits, 0)
    trap = run_audit(RandomGradientTrap(base).eval(), splits, eps=0.3, checks=["autoattack-flags"], **SMALL)
    t = trap.check("autoattack-flags")
    assert t.flagged and "randomness" in t.mechanism.split(", "), t.summary
    assert t.evidence["single_draw_p_value"] < 0.01, t.evidence


def test_majority_scoring_over_draws() -> None:
    """A model right on 2 of 3 draws counts as correct; right on 1 of 3 as broken."""
    from maskcheck.auditing import AuditRunner

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
        runner = AuditRunner(Flip(right), x, y, num_classes=2, config=audit_config(eps=0.1, eot=3), progress=False)
        assert runner.score(x, y).tolist() == [expect] * 4


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
    x, y, _ = audit_points(digits(), n, 0)  # the audit's own points: a seeded sample of the split, not its first n
    adversary = AutoAttack(model, norm="Linf", eps=0.1, version="standard", seed=0, device="cpu")
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=n)  # returns (x_adv, y_adv)
    with torch.no_grad():
        theirs = float((model(x_adv).argmax(1) == y).float().mean())
    assert 0 < theirs < float((model(x).argmax(1) == y).float().mean())  # points stand and fall: not a trivial 0 == 0
    assert abs(result.robust_acc["autoattack-standard"] - theirs) <= 1 / n + 1e-9, (result.robust_acc, theirs)


# ---------------------------------------------------------------------- issue 22: the runner's scoring, points, grades


class Levels(nn.Module):
    """Three classes of constant images at grey levels 0.1, 0.5, 0.9: the nearest level wins, so every
    point is truly robust at eps 0.05 (the boundaries lie 0.2 away). `grad_mode` says what the forward
    does only when gradients are enabled: "noise" (large random logits, a TRADES-like model noisy only
    when differentiated), "roll" (a deterministic different function), None (nothing)."""

    levels = torch.tensor([0.1, 0.5, 0.9])

    def __init__(self, grad_mode: str | None = None) -> None:
        super().__init__()
        self.grad_mode = grad_mode
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = -100.0 * self.w * (x.flatten(1).mean(1, keepdim=True) - self.levels) ** 2
        if torch.is_grad_enabled() and self.grad_mode == "noise":
            z = z + 50.0 * torch.randn_like(z)
        if torch.is_grad_enabled() and self.grad_mode == "roll":
            z = z.roll(1, dims=1)
        return z


def _levels_points(per_class: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(3).repeat_interleave(per_class)
    return Levels.levels[y].view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone(), y


@pytest.mark.parametrize("grad_mode, mechanism", [("noise", "randomness (gradient mode only)"),
                                                  ("roll", "inference/gradient forward mismatch")])
def test_accuracy_is_scored_by_the_inference_forward_not_the_gradient_mode_one(grad_mode: str, mechanism: str) -> None:
    """Issue 22: a model noisy only under grad was graded 'no masking detected' with every robust accuracy
    at 0% (true robust 55%): PGD's own verdict came from its gradient-mode forward. Every point here is
    truly robust, so every robust accuracy must be 100%, and the forward mismatch is flagged."""
    x, y = _levels_points()
    result = run_audit(Levels(grad_mode), (x, y), eps=0.05, n=30, num_classes=3, checks="autoattack-flags,loss-disagreement",
                       seed=0, progress=False, apgd_iters=10)
    assert result.clean_acc == 1.0
    assert result.robust_acc["pgd-ce"] == 1.0 and result.robust_acc["worst-case"] == 1.0
    flags = result.check("autoattack-flags")
    assert flags.flagged and mechanism in flags.mechanism
    if grad_mode == "noise":  # random under grad: EOT on, and its convergence rerun with 4x the draws ran
        assert "EOT over 20 draws" in result.verdict.text
        assert flags.evidence["eot_draws_check"] == 80 and flags.evidence["eot_extra_breaks"] == 0


def test_a_deterministic_model_is_not_flagged_by_the_gradient_mode_probe() -> None:
    x, y = _levels_points()
    result = run_audit(Levels(None), (x, y), eps=0.05, n=30, num_classes=3, checks="autoattack-flags", seed=0, progress=False)
    flags = result.check("autoattack-flags")
    assert not flags.flagged and not flags.evidence["randomized_grad"]


class TwoClasses(nn.Module):
    """Predicts class 0 or 1 only (by the image's mean), whatever the label: a nearly collapsed network."""

    def __init__(self, k: int = 10) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True)
        z = torch.full((len(x), self.k), -10.0)
        return torch.cat([10 * (0.5 - m), 10 * (m - 0.5), z[:, 2:]], 1)


def test_a_two_class_collapsed_model_is_inconclusive_and_fail_on_warn_fails_it() -> None:
    """Issue 22: a one-class model switched two checks off and passed; a two-class one was outside the rule."""
    from maskcheck.results import GRADES, INCONCLUSIVE

    x, y = digits().heldout_tensors(60)
    result = run_audit(TwoClasses(), (x, y), eps=0.1, n=60, num_classes=10, checks="logit-magnitude", seed=0, progress=False)
    assert result.verdict.grade == INCONCLUSIVE and not result.verdict.flagged
    assert "degenerate" in result.verdict.text
    assert GRADES.index(INCONCLUSIVE) < GRADES.index("no masking detected")  # --fail-on warn fails it (cli: grade != no masking)
    assert AuditResult.from_dict(result.to_dict()).verdict.grade == INCONCLUSIVE


def test_audit_points_are_a_seeded_random_sample_recorded_in_the_json() -> None:
    """Issue 22: the first n held-out points let a model behave specially on them."""
    from maskcheck.auditing import audit_points as _points

    splits = digits()
    x0, y0, p0 = _points(splits, 50, seed=0)
    _, _, again = _points(splits, 50, seed=0)
    _, _, p1 = _points(splits, 50, seed=1)
    assert p0 == again and p0["indices"] != p1["indices"]
    assert p0["indices"] != list(range(50)) and p0["selection"] == "seeded random sample" and len(set(p0["indices"])) == 50
    xh, yh = splits.heldout_tensors()
    assert torch.equal(x0, xh[p0["indices"]]) and torch.equal(y0, yh[p0["indices"]])
    assert _points(splits, 10**6, seed=0)[2]["selection"] == "all"
    assert _points((xh, yh), 5, seed=0)[2]["indices"] == list(range(5))  # the caller's own points: as given


def test_reading_an_undeclared_attack_is_an_error() -> None:
    """Issue 25: every attack a check uses is declared (needs or follow_up), none run ad hoc from evaluate."""
    from maskcheck.auditing import AuditContext, AuditRunner

    x, y = _levels_points(2)
    runner = AuditRunner(Levels(), x, y, num_classes=3, config=audit_config(eps=0.05), progress=False)
    with pytest.raises(RuntimeError, match="declare it"):
        AuditContext(runner).correct(runner.battery.fgsm)

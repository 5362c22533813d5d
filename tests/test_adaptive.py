"""The adaptive attacks (maskcheck.adaptive) and their checks: transfer-attack, binarization-test, --bpda.

Controls: a natural digits model behind a non-differentiable input quantisation (torch.round, zero
gradient almost everywhere) is nearly not robust at all, but PGD-CE sees most points stand; transfer
and BPDA must find that truth and the new checks must fail it. The plain natural model and a TRADES
model must pass both checks.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn

from controls import digits, honest_cnn
from maskcheck import adaptive, attacks
from maskcheck.attacks import AttackEnv, AttackSpec
from maskcheck.auditing import run_audit
from maskcheck.config import AuditConfig, ThreatModel
from maskcheck.errors import InputError
from maskcheck.results import Severity

EPS = 0.2  # digits' default budget
FAST = dict(square_queries=100, apgd_iters=10, autoattack_standard=False, progress=False)
NEW = "transfer-attack,binarization-test"


class Quantise(nn.Module):
    """Rounds the input to `levels` + 1 grey levels (a submodule, so --bpda identity:0 can name it)."""

    def __init__(self, levels: int = 4) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * self.levels) / self.levels


def quantised() -> nn.Module:
    return nn.Sequential(Quantise(), honest_cnn()).eval()


@functools.lru_cache(maxsize=None)
def points(n: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    return digits().heldout_tensors(n)


def _env(seed: int = 0) -> AttackEnv:
    return AttackEnv(EPS, "linf", 10, seed, 1, 100, torch.device("cpu"))


@pytest.mark.parametrize("kind,loss", [("transfer", "margin"), ("bpda", "user")])
def test_adaptive_attacks_stay_in_the_ball_and_repeat(kind: str, loss: str) -> None:
    x, y = points(40)
    model = quantised()
    spec = AttackSpec(kind, loss, 10)
    runs = [attacks.run_spec(spec, model, x, y, _env(), torch.Generator().manual_seed(3)) for _ in range(2)]
    for r in runs:
        assert (r.x_adv - x).abs().max() <= EPS + 1e-6
        assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert torch.equal(runs[0].x_adv, runs[1].x_adv) and torch.equal(runs[0].correct, runs[1].correct)
    with torch.no_grad():  # the reported outcome is the inference forward's
        assert torch.equal(runs[0].correct, model(runs[0].x_adv).argmax(1) == y)


def test_straight_through_has_the_targets_value_and_the_surrogates_gradient() -> None:
    x, y = points(8)
    target, sur = quantised(), nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    st = adaptive.StraightThrough(target, sur)
    xg = x.clone().requires_grad_(True)
    out = st(xg)
    assert torch.allclose(out, target(x))
    (g,) = torch.autograd.grad(out.sum(), xg)
    xs = x.clone().requires_grad_(True)
    (gs,) = torch.autograd.grad(sur(xs).sum(), xs)
    assert torch.allclose(g, gs) and g.abs().sum() > 0


def test_identity_backward_restores_the_module() -> None:
    model = quantised()
    original = model[0]
    x, y = points(8)
    with adaptive.identity_backward(model, "0"):
        assert isinstance(model[0], adaptive.IdentityBackward)
        _, g = attacks.input_grad(model, x, y, attacks.margin_loss)
        assert g.abs().sum() > 0  # round's zero gradient replaced by the identity
    assert model[0] is original


@pytest.mark.parametrize("bad", ["", "identity", "identity:", "jacobian", "surrogate:x"])
def test_bad_bpda_values_are_usage_errors(bad: str) -> None:
    with pytest.raises(InputError, match="--bpda"):
        AuditConfig(ThreatModel(EPS, "linf"), bpda=bad)


def test_bpda_identity_path_must_exist() -> None:
    with pytest.raises(InputError, match="no submodule 'nope'"):
        adaptive.validate_bpda("identity:nope", quantised())
    adaptive.validate_bpda("identity:0", quantised())
    adaptive.validate_bpda("identity:0", nn.Sequential(quantised()))  # found behind a wrapper (the load guard)
    with pytest.raises(InputError, match="TorchScript"):
        adaptive.validate_bpda("identity:0", torch.jit.script(quantised()))


def test_surrogate_is_trained_once_per_audit_and_deterministic() -> None:
    x, y = points(60)
    model = honest_cnn()
    a = adaptive.distil_surrogate(model, x, eps=EPS, norm="linf", num_classes=10, seed=1)
    b = adaptive.distil_surrogate(model, x, eps=EPS, norm="linf", num_classes=10, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    agree = (attacks.predict(a, x).argmax(1) == attacks.predict(model, x).argmax(1)).float().mean()
    assert agree > 0.9  # a surrogate that disagrees with its target transfers nothing


def _by_name(result):
    return {c.check: c for c in result.checks}


def test_quantised_model_is_broken_by_transfer_and_bpda_and_flagged() -> None:
    """PGD-CE overstates the quantised model (most points stand); transfer/BPDA find ~0 and both checks fail."""
    x, y = points(60)
    r = run_audit(quantised(), (x, y), eps=EPS, n=len(y), checks=NEW, num_classes=10, bpda="identity:0", **FAST)
    checks = _by_name(r)
    assert r.robust_acc["pgd-ce"] > 0.5
    assert r.robust_acc["worst-case"] < 0.1 and r.robust_acc["transfer"] < 0.15 and r.robust_acc["bpda"] < 0.1
    assert checks["transfer-attack"].severity is Severity.FAIL and checks["transfer-attack"].mechanism
    assert checks["transfer-attack"].evidence["bpda_auto_ran"] is True
    assert checks["binarization-test"].severity is Severity.FAIL
    assert checks["binarization-test"].mechanism == "attack failure (binarization test)"


def test_natural_model_is_not_flagged_by_the_new_checks() -> None:
    x, y = points()
    r = run_audit(honest_cnn(), (x, y), eps=EPS, n=len(y), checks=NEW, num_classes=10, **FAST)
    checks = _by_name(r)
    assert checks["transfer-attack"].severity is Severity.OK
    assert checks["transfer-attack"].evidence["bpda_auto_ran"] is False
    assert checks["binarization-test"].severity is Severity.OK and checks["binarization-test"].evidence["tested"] >= 50


@functools.lru_cache(maxsize=None)
def trades() -> nn.Module:
    from maskcheck.models import build_model
    from maskcheck.training import fit, make_config

    torch.manual_seed(0)
    splits = digits()
    xt, yt = splits.train.tensors
    cfg = make_config("trades", "digits", epochs=8, batch_size=64, lr=3e-3, optimizer="adam", milestones=(), seed=0)
    return fit(build_model("small-cnn", splits.info), xt, yt, cfg).eval()


@pytest.mark.slow  # trains TRADES (12 min on the shared 2-core machine, a minute or two idle)
def test_trades_model_is_not_flagged_by_the_new_checks() -> None:
    x, y = points()
    r = run_audit(trades(), (x, y), eps=EPS, n=len(y), checks=NEW, num_classes=10, **FAST)
    checks = _by_name(r)
    assert r.robust_acc["white-box"] > 0.2  # the control is a robust model, not a broken one
    assert checks["transfer-attack"].severity is not Severity.FAIL
    assert checks["binarization-test"].severity is Severity.OK


class GradModeOnlyNoise(nn.Module):
    """Input noise only while autograd records: every gradient is of a noisier model than the one that predicts."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x + 0.5 * torch.randn_like(x)).clamp(0, 1) if torch.is_grad_enabled() else x)


def test_a_forward_that_changes_under_autograd_triggers_automatic_bpda() -> None:
    """Issue 22: a model noisy only when gradients are on is attacked through the surrogate (BPDA) too, since its
    own gradients are of another function; a deterministic natural model does not trigger it. Failed before:
    the trigger read only zero or missing gradients."""
    x, y = points(60)
    r = run_audit(GradModeOnlyNoise(honest_cnn()).eval(), (x, y), eps=EPS, n=len(y), checks=NEW, num_classes=10,
                  **FAST)
    assert _by_name(r)["transfer-attack"].evidence["bpda_auto_ran"] is True
    assert r.verdict.notes and "gradients are enabled" in r.verdict.notes[0]


def test_inference_gradient_is_the_gradient_of_the_forward_that_predicts() -> None:
    """Issue 22: on a model noisy only while autograd records, InferenceGradient (forward-mode AD under no_grad)
    gives exactly the gradient of the noise-free inference forward, which the model's own backward never does."""
    base = honest_cnn()
    noisy = GradModeOnlyNoise(base).eval()
    x, y = points(8)
    _, g_base = attacks.input_grad(base, x, y, attacks.margin_loss)
    _, g_exact = attacks.input_grad(adaptive.InferenceGradient(noisy), x, y, attacks.margin_loss)
    _, g_own = attacks.input_grad(noisy, x, y, attacks.margin_loss)
    assert torch.allclose(g_exact, g_base, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(g_own, g_base, atol=1e-3)  # the control: the model's own gradient is of another function
    with torch.no_grad():
        assert torch.equal(adaptive.InferenceGradient(noisy)(x), base(x).float())


def test_inference_gradient_declines_large_inputs_and_forward_ad_gaps() -> None:
    x, _ = points(4)
    assert adaptive.inference_gradient_model(honest_cnn(), x) is not None
    big = torch.rand(2, 3, 32, 32)  # 3,072 values: one forward per value per gradient is too dear
    assert adaptive.inference_gradient_model(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)), big) is None

    class NoForwardAD(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):  # type: ignore[no-untyped-def, override]
            return t * 2

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def, override]
            return g * 2

    class Custom(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return honest_cnn()(NoForwardAD.apply(t))

    assert adaptive.inference_gradient_model(Custom(), x) is None


@pytest.mark.slow  # two audits with the surrogate (about 3 min on the loaded 2-core machine)
def test_bpda_attacks_the_inference_forward_when_the_forward_changes_under_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22: on a model noisy only under autograd the automatic BPDA also runs the audit's APGD-CE through
    InferenceGradient on the points still standing; on a plain model it never builds one."""
    x, y = points(60)
    seen: list[int] = []
    run_spec = attacks.run_spec

    def spy(spec, model, xs, *rest, **kw):  # type: ignore[no-untyped-def]
        if isinstance(model, adaptive.InferenceGradient):
            seen.append(len(xs))
        return run_spec(spec, model, xs, *rest, **kw)

    monkeypatch.setattr(attacks, "run_spec", spy)
    small = dict(FAST, square_queries=50, apgd_iters=5)
    run_audit(GradModeOnlyNoise(honest_cnn()).eval(), (x, y), eps=0.03, n=len(y), checks="transfer-attack", num_classes=10, **small)
    assert seen and seen[0] > 0  # eps 0.03: most points stand after the margin PGD, APGD-CE attacks them
    seen.clear()
    run_audit(honest_cnn(), (x, y), eps=0.03, n=len(y), checks="transfer-attack", num_classes=10, **small)
    assert not seen

"""Every training loss is a finite scalar with a gradient for every parameter; AWP restores weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maskcheck.data import get_info, load_dataset
from maskcheck.methods import AWP, METHODS, StepContext, awp_methods, build_method
from maskcheck.methods.base import kl_from_probs, kl_per_example
from maskcheck.models import build_model

INFO = get_info("digits")


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_dataset("digits").train.tensors
    return x[:16], y[:16]


def _ctx(teacher: bool) -> StepContext:
    torch.manual_seed(1)
    t = build_model("small-cnn", INFO).eval() if teacher else None
    return StepContext(eps=0.2, attack_steps=2, teacher=t, generator=torch.Generator().manual_seed(0))


CASES = [(name, teacher) for name in METHODS for teacher in ((False, True) if name == "dd" else (METHODS[name].needs_teacher,))]


@pytest.mark.parametrize("name, teacher", CASES, ids=[f"{n}{'-student' if t and n == 'dd' else ''}" for n, t in CASES])
def test_loss_is_a_finite_scalar_with_grads_for_all_params(name: str, teacher: bool, batch: tuple) -> None:
    torch.manual_seed(0)
    model = build_model("small-cnn", INFO, temperature=2.0 if name == "ltd" else 1.0).train()
    method = build_method(name, temperature=5.0)
    ctx = _ctx(teacher)
    prepared = method.prepare(model, *batch, ctx)
    assert model.training, "prepare must leave the model in train mode"
    if method.adversarial:
        delta = prepared.x_adv - prepared.x
        assert delta.abs().max() <= 0.2 + 1e-6 and prepared.x_adv.min() >= 0 and prepared.x_adv.max() <= 1
    loss, logits = method.objective(model, prepared, ctx)
    assert loss.ndim == 0 and torch.isfinite(loss) and logits.shape == (16, 10)
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for (n, _), g in zip(model.named_parameters(), grads):
        assert g is not None and torch.isfinite(g).all(), n
    assert any(g.abs().sum() > 0 for g in grads)


def test_kl_helpers_match_torch_and_direction() -> None:
    p, q = torch.randn(5, 10), torch.randn(5, 10)
    ref = F.kl_div(F.log_softmax(q, 1), F.log_softmax(p, 1), log_target=True, reduction="none").sum(1)  # KL(p || q)
    torch.testing.assert_close(kl_per_example(p, q), ref)
    torch.testing.assert_close(kl_from_probs(p.softmax(1), q), ref)
    assert kl_per_example(p, p).abs().max() < 1e-6


def test_trades_target_is_not_detached(batch: tuple) -> None:
    """Reference TRADES back-propagates through softmax(f(x)) in the KL (methods.md pitfall 5)."""
    torch.manual_seed(0)
    model = build_model("small-cnn", INFO)
    x = batch[0][:4]
    clean = model(x)
    adv = model(x + 0.05).detach()
    kl = kl_per_example(clean, adv).sum()
    assert kl.requires_grad and kl.grad_fn is not None


def test_dd_teacher_phase_uses_hard_labels_at_temperature(batch: tuple) -> None:
    torch.manual_seed(0)
    model = build_model("small-cnn", INFO)
    method = build_method("dd", temperature=20.0)
    loss, logits = method.objective(model, method.prepare(model, *batch, _ctx(False)), _ctx(False))
    torch.testing.assert_close(loss, F.cross_entropy(logits / 20.0, batch[1]))


def test_build_method_rejects_unknown_names() -> None:
    from maskcheck.errors import InputError

    with pytest.raises(InputError, match="valid: natural"):
        build_method("fgsm-at")


@pytest.mark.parametrize("name", awp_methods())
def test_awp_perturbs_only_weights_and_restores_them(name: str, batch: tuple) -> None:
    torch.manual_seed(0)
    model = build_model("small-cnn", INFO).train()
    method = build_method(name, temperature=5.0)
    ctx = _ctx(method.needs_teacher)
    prepared = method.prepare(model, *batch, ctx)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    awp = AWP(gamma=0.01)
    diff = awp.perturbation(model, method, prepared, ctx)
    assert diff and all(model.get_parameter(n).ndim > 1 and "weight" in n for n in diff)
    for n, d in diff.items():  # layer-wise normalised: ||diff|| = ||w||
        torch.testing.assert_close(d.norm(), model.get_parameter(n).detach().norm(), rtol=1e-4, atol=1e-6)
    awp.apply(model, diff, +1.0)
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved == set(diff)
    loss_perturbed, _ = method.objective(model, prepared, ctx)
    awp.apply(model, diff, -1.0)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert torch.isfinite(loss_perturbed)

"""Attack invariants, as properties: stay in the eps-ball and in [0, 1], never beat the clean point."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from maskcheck.attacks import LOSSES, accuracy, fgsm, margin_loss, pgd, predict, project, random_start

SHAPE = (1, 4, 4)
eps_st = st.floats(min_value=1e-3, max_value=1.0)
norm_st = st.sampled_from(["linf", "l2"])
seed_st = st.integers(0, 2**31 - 1)
props = settings(max_examples=30, deadline=None)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).eval()


MODEL = _model()


def _batch(seed: int, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *SHAPE, generator=g)
    x[0] = 0.0  # corners of the box make the [0, 1] clamp matter
    x[1] = 1.0
    return x, torch.randint(0, 3, (n,), generator=g)


def _assert_in_ball_and_box(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> None:
    assert x_adv.shape == x.shape
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = (x_adv - x).flatten(1)
    if norm == "linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert (delta.norm(dim=1) <= eps * (1 + 1e-5) + 1e-6).all()


@props
@given(seed_st, eps_st, norm_st, st.floats(0.1, 100.0))
def test_project_lands_in_ball_and_box(seed: int, eps: float, norm: str, scale: float) -> None:
    x, _ = _batch(seed)
    g = torch.Generator().manual_seed(seed + 1)
    wild = x + scale * torch.randn(x.shape, generator=g)  # far outside both the ball and the box
    p = project(wild, x, eps, norm)
    _assert_in_ball_and_box(p, x, eps, norm)
    assert torch.allclose(project(p, x, eps, norm), p, atol=1e-6)  # a projection is idempotent


@props
@given(seed_st, eps_st, norm_st)
def test_random_start_in_ball_and_box_and_seeded(seed: int, eps: float, norm: str) -> None:
    x, _ = _batch(seed)
    a = random_start(x, eps, norm, torch.Generator().manual_seed(seed))
    b = random_start(x, eps, norm, torch.Generator().manual_seed(seed))
    _assert_in_ball_and_box(a, x, eps, norm)
    assert torch.equal(a, b)
    assert not torch.equal(a, x)  # it moved


@props
@given(seed_st, eps_st, norm_st, st.integers(1, 5), st.sampled_from(["uniform", "gaussian", "none"]),
       st.integers(1, 2), st.sampled_from(sorted(LOSSES)))
def test_pgd_invariants(seed: int, eps: float, norm: str, steps: int, start: str, restarts: int, loss: str) -> None:
    x, y = _batch(seed)
    kw = dict(eps=eps, norm=norm, steps=steps, start=start, restarts=restarts, loss=loss)
    res = pgd(MODEL, x, y, generator=torch.Generator().manual_seed(seed), record=True, **kw)
    _assert_in_ball_and_box(res.x_adv, x, eps, norm)
    with torch.no_grad():
        clean_correct = MODEL(x).argmax(1) == y
        adv_logits = MODEL(res.x_adv)
    assert torch.equal(res.correct, adv_logits.argmax(1) == y)  # the reported outcome is real
    assert not (res.correct & ~clean_correct).any()  # never does worse than the clean point
    assert res.loss_history.shape == (steps + 1, len(y))
    again = pgd(MODEL, x, y, generator=torch.Generator().manual_seed(seed), record=True, **kw)
    assert torch.equal(again.x_adv, res.x_adv)  # same seed, same result
    if start == "none":  # the clean point is the first iterate, so the kept point's loss is no lower
        fn = LOSSES[loss]
        with torch.no_grad():
            same = res.correct == clean_correct
            assert (fn(adv_logits, y)[same] >= fn(MODEL(x), y)[same] - 1e-5).all()


@props
@given(seed_st, eps_st, norm_st)
def test_fgsm_in_ball_and_box(seed: int, eps: float, norm: str) -> None:
    x, y = _batch(seed)
    res = fgsm(MODEL, x, y, eps=eps, norm=norm)
    _assert_in_ball_and_box(res.x_adv, x, eps, norm)
    assert accuracy(MODEL, res.x_adv, y) <= accuracy(MODEL, x, y)


def test_pgd_breaks_a_linear_model_that_a_large_eps_can_flip() -> None:
    """Control for the invariants above: PGD is not a no-op. eps=1 can move any image anywhere in the box."""
    x, y = _batch(0, n=32)
    y = MODEL(x).argmax(1)  # all clean points correct
    res = pgd(MODEL, x, y, eps=1.0, steps=20, step_size=0.1, loss="margin")
    assert accuracy(MODEL, res.x_adv, y) < 1.0


def test_loss_shapes_and_signs() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    for name, fn in LOSSES.items():
        assert fn(logits, y).shape == (8,), name
    assert (LOSSES["ce"](logits, y) >= 0).all()
    wrong = logits.argmax(1) != y
    assert torch.equal(margin_loss(logits, y) > 0, wrong)
    assert torch.allclose(margin_loss(3 * logits, y), 3 * margin_loss(logits, y), atol=1e-5)  # scale-equivariant


def test_predict_batches_match_one_pass() -> None:
    x, _ = _batch(1, n=11)
    with torch.no_grad():
        assert torch.allclose(predict(MODEL, x, batch_size=4), MODEL(x))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_on_a_registry_model(norm: str) -> None:
    """The attack runs on a real maskcheck Classifier (normalisation inside) and respects the ball."""
    from maskcheck.data import get_info
    from maskcheck.models import build_model

    torch.manual_seed(0)
    model = build_model("small-cnn", get_info("digits")).eval()
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    res = pgd(model, x, y, eps=0.3 if norm == "linf" else 1.0, norm=norm, steps=3)
    _assert_in_ball_and_box(res.x_adv, x, 0.3 if norm == "linf" else 1.0, norm)


def _channels_last_model_and_batch():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 8 * 8, 10)).eval().to(memory_format=torch.channels_last)
    x = torch.rand(6, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = net(x).argmax(1)  # every point correct, so every attack really runs
    return net, x, y


def test_pyautoattack_fails_on_channels_last_gradients_without_the_adapter() -> None:
    """The bug of issue 13 item 2, reproduced on CPU: APGD-T's check_zero_gradients calls grad.view."""
    from maskcheck.attacks import ADAPTERS, AttackEnv, AttackSpec

    net, x, y = _channels_last_model_and_batch()
    env = AttackEnv(0.1, "linf", 10, 0, 1, 50, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        ADAPTERS["apgd-t"](AttackSpec("apgd-t", "dlr", 3, targeted=True), net, x, y, env, torch.Generator())


@pytest.mark.parametrize("kind", ["pgd", "fgsm", "apgd", "apgd-t", "fab-t", "square", "noise", "fmn"])
def test_every_attack_runs_on_a_channels_last_model(kind: str) -> None:
    from maskcheck.attacks import AttackEnv, AttackSpec, run_spec

    net, x, y = _channels_last_model_and_batch()
    env = AttackEnv(0.1, "linf", 10, 0, 1, 50, torch.device("cpu"))
    spec = AttackSpec(kind, "dlr" if kind in ("apgd", "apgd-t") else "ce", 3, targeted=kind.endswith("-t"), queries=20)
    r = run_spec(spec, net, x, y, env, torch.Generator().manual_seed(0))
    assert r.correct.shape == (6,) and r.correct.dtype == torch.bool


def test_an_attack_registers_its_facts_with_the_adapter() -> None:
    """Issue 25: whether an attack uses gradients, handles EOT itself and what it costs live on its
    registration (no GRADIENT_KINDS / OWN_KINDS lists, no cost dict); `@adapter("x")` alone gets defaults."""
    from maskcheck.attacks import ADAPTERS, AttackSpec, adapter

    try:
        adapter("toy")(lambda spec, model, x, y, env, gen: None)
        adapter("toy-free", uses_gradients=False, own_eot=True, cost=lambda s: 7.0)(lambda *a: None)
        toy, free = ADAPTERS["toy"], ADAPTERS["toy-free"]
        assert toy.uses_gradients and not toy.own_eot and toy.rescored
        assert AttackSpec("toy", steps=5, restarts=2).cost == 10 and AttackSpec("toy-free").cost == 7.0
        assert not free.uses_gradients and free.own_eot
    finally:
        ADAPTERS.pop("toy", None), ADAPTERS.pop("toy-free", None)
    assert not ADAPTERS["square"].uses_gradients and ADAPTERS["apgd"].own_eot and not ADAPTERS["pgd"].own_eot
    assert not ADAPTERS["noise"].rescored  # noise returns no point: foolbox's no-grad verdict stands


def _square_case():
    """A random linear classifier on 8x8 one-channel inputs (digits' shape) at an eps where Square
    breaks some points early, some late and leaves the rest standing."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = net(x).argmax(1)
    return net, x, y


def test_square_stops_once_stalled_and_keeps_every_break_so_far() -> None:
    """Issue 23: the stalled run is the full run's prefix (same seed, same schedule): it returns
    exactly what a run of the queries it spent returns, its breaks included. (A shorter patience than
    the audit's, SQUARE_STALL_SWEEPS * h * w from the 1-pixel stage, to keep the test quick; how
    long a patience loses nothing is measured, benchmarks/square_trace.md.)"""
    from pyautoattack.square import SquareAttack

    from maskcheck.attacks import _stalling_square

    net, x, y = _square_case()
    common = dict(norm="Linf", eps=0.05, p_init=0.8, n_restarts=1, seed=3, device=torch.device("cpu"), resc_schedule=False)
    stalled = _stalling_square(SquareAttack)(net, n_queries=1500, patience_from=201, patience=200, **common)
    with torch.no_grad():
        adv = stalled.perturb(x, y)
        spent = stalled.queries_spent
        assert 201 + 200 <= spent < 1500
        prefix = SquareAttack(net, n_queries=spent - 1, **common).perturb(x, y)  # the queries completed before the stop
        full = SquareAttack(net, n_queries=1500, **common).perturb(x, y)
        broken, broken_full = ((net(a).argmax(1) != y) for a in (adv, full))
    assert torch.equal(adv, prefix)
    assert 0 < int(broken.sum()) < int(broken_full.sum())  # this short patience did stop while breaks were still to come
    assert not (broken & ~broken_full).any()


def test_square_stall_starts_at_the_finest_window_of_the_input() -> None:
    """8x8 digits reach 1-pixel windows at query 1001; CIFAR-10 and MNIST only at 8001, past
    AutoAttack's 5000, so their Square runs as AutoAttack's, never stopped early."""
    from maskcheck.attacks import _square_min_side_query

    assert _square_min_side_query(8, 8, 1, "linf", 0.8) == 1001
    assert _square_min_side_query(32, 32, 3, "linf", 0.8) == _square_min_side_query(28, 28, 1, "linf", 0.8) == 8001

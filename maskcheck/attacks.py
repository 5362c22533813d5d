"""Attacks over (model, x, y), inputs and outputs in [0, 1], and the `AttackSpec` that names each run.

The gradient attacks (PGD, FGSM) are written out because the checks need their internals (the
per-iteration loss, per-example outcomes); AutoAttack's APGD/FAB/Square and foolbox's noise and
FMN attacks are used through adapters (`ADAPTERS`, keyed by `AttackSpec.kind`). The audit runs
each `AttackSpec` at most once (maskcheck.auditing); adding an attack is an adapter here plus its test.

Losses are per-example (shape (B,)) and are *maximised* by the attacker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import DEFAULT_APGD_ITERS, DEFAULT_SQUARE_QUERIES, derived_seed, seed_everything

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y) -> (B,)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin: max_{j != y} z_j - z_y (> 0 means misclassified). Scale-equivariant."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.max(1).values - true


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "margin": margin_loss}


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project x_adv onto the eps-ball around x, then onto the [0, 1] box."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        flat = delta.flatten(1)
        factor = (eps / flat.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
        delta = (flat * factor[:, None]).view_as(delta)
    return (x + delta).clamp(0.0, 1.0)


def random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform draw in the Linf ball, or a uniform-direction draw inside the L2 ball."""
    if norm == "linf":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        return project(x + eps * noise, x, eps, norm)
    d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype).flatten(1)
    d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
    r = torch.rand(x.shape[0], 1, generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d.shape[1])
    return project(x + (eps * r * d).view_as(x), x, eps, norm)


def _step(grad: torch.Tensor, step_size: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return step_size * grad.sign()
    flat = grad.flatten(1)
    return (step_size * flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(grad)


@dataclass
class AttackResult:
    """Per-example outcome of an attack. `x_adv` is the worst point found for each example."""

    x_adv: torch.Tensor
    correct: torch.Tensor  # bool (B,): still classified correctly at x_adv
    loss_history: torch.Tensor | None = None  # (steps + 1, B) attack loss per iteration, last restart


def input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-example loss, gradient of its sum w.r.t. x). Raises RuntimeError if x has no grad path."""
    x = x.detach().clone().requires_grad_(True)
    loss = loss_fn(model(x), y)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad.detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    loss: str | LossFn = "ce",
    start: Literal["uniform", "gaussian", "none"] = "uniform",
    restarts: int = 1,
    generator: torch.Generator | None = None,
    record: bool = False,
    stop_when_broken: bool = False,
) -> AttackResult:
    """Projected gradient ascent on `loss` (Madry et al. 2018), keeping each example's best point.

    step_size defaults to 2.5 * eps / steps (Madry et al.). `start='gaussian'` is TRADES'
    x + 0.001 * N(0, 1). With `record`, the loss per iteration and the start-point gradient
    norms of the last restart are returned for the convergence and gradient-health checks.
    With `stop_when_broken`, an example leaves the batch once misclassified (the audit attacks
    only what still stands; recorded losses are NaN after that). The model is used as given
    (call `model.eval()` first for evaluation).
    """
    loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    n = x.shape[0]
    with torch.no_grad():
        best = x.clone()
        best_correct = model(x).argmax(1) == y
        best_loss = torch.full((n,), float("-inf"), device=x.device)
    history: list[torch.Tensor] = []
    for _ in range(max(restarts, 1)):
        if start == "uniform":
            x_adv = random_start(x, eps, norm, generator)
        elif start == "gaussian":
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_adv = project(x + 0.001 * noise, x, eps, norm)
        else:
            x_adv = x.clone()
        idx = best_correct.nonzero().flatten() if stop_when_broken else torch.arange(n, device=x.device)
        history = []
        for i in range(steps + 1):
            if len(idx) == 0:
                break
            xa = x_adv[idx].detach().requires_grad_(True)
            ya = y[idx]
            logits = model(xa)
            per_ex = loss_fn(logits, ya)
            with torch.no_grad():
                correct = logits.argmax(1) == ya
                # keep the best point: first any misclassified point, else the highest loss
                bc = best_correct[idx]
                better = (~correct & bc) | ((correct == bc) & (per_ex > best_loss[idx]))
                sel = idx[better]
                best[sel] = xa.detach()[better]
                best_loss[sel] = per_ex.detach()[better]
                best_correct[sel] = correct[better]
                if record:
                    h = torch.full((n,), float("nan"), device=x.device)
                    h[idx] = per_ex.detach()
                    history.append(h)
            if i == steps:
                break
            (grad,) = torch.autograd.grad(per_ex.sum(), xa)
            with torch.no_grad():
                x_adv[idx] = project(xa.detach() + _step(grad, step_size, norm), x[idx], eps, norm)
                if stop_when_broken:
                    idx = idx[best_correct[idx]]
        if record:  # pad an early-stopped run to steps + 1 rows
            history += [torch.full((n,), float("nan"), device=x.device)] * (steps + 1 - len(history))
    return AttackResult(
        x_adv=best.detach(),
        correct=best_correct,
        loss_history=torch.stack(history) if record and history else None,
    )


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf", loss: str | LossFn = "ce") -> AttackResult:
    """One gradient step of size eps from the clean point (Goodfellow et al. 2015)."""
    return pgd(model, x, y, eps=eps, norm=norm, steps=1, step_size=eps, loss=loss, start="none")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Logits for x in batches, on the model's device."""
    device = next((p.device for p in model.parameters()), x.device)
    return torch.cat([model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    return (predict(model, x, batch_size).argmax(1) == y.cpu()).float().mean().item() if len(y) else float("nan")


# ---------------------------------------------------------------------- model wrappers


class EOT(nn.Module):
    """Expectation over Transformation (Athalye et al. 2018): average the logits of K forward passes.

    Its gradient is the average over the K draws, as in foolbox's ExpectationOverTransformationWrapper.
    """

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.model(x) for _ in range(self.k)]).mean(0)


class Rescaled(nn.Module):
    """Logits multiplied by `scale`: the same classifier, a sharper (scale > 1) or flatter softmax."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward returns a contiguous gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd API
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return grad.contiguous()


class ContiguousGrad(nn.Module):
    """Hands attacks contiguous input gradients from a channels_last model.

    pyautoattack's APGD-T calls `grad.view(...)` in check_zero_gradients, which fails on the
    channels_last gradient a channels_last network returns (issue 13 item 2).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_ContiguousGrad.apply(x))


# ---------------------------------------------------------------------- attack specs and adapters


@dataclass(frozen=True)
class AttackSpec:
    """One attack run of an audit, by value: two equal specs are the same run, done once.

    kind: an `ADAPTERS` key. eps None = the audit's eps. `after`: the run attacks only the
    points still standing after all of these runs (AutoAttack's cascade), so its outcome is
    cumulative: correct = correct after `after` and after this attack. `label`: its key in the
    audit's `robust_acc` ("" = not reported there). `logit_scale`: the attack sees logits x scale.
    """

    kind: str
    loss: str = "ce"
    steps: int = 20
    eps: float | None = None
    restarts: int = 1
    targeted: bool = False
    after: tuple["AttackSpec", ...] = ()
    label: str = ""
    logit_scale: float = 1.0
    record: bool = False  # own PGD: keep the loss per iteration (convergence check)
    queries: int = 0  # Square: queries (0 = the audit's --square-queries); noise: draws per point
    max_points: int | None = None  # attack at most this many standing points (noise sampling)
    white_box: bool = True  # counts in the audit's "white-box" figure (at the audit's eps)
    eot: int | None = None  # draws per gradient and per prediction (None = the audit's)
    points: tuple[int, ...] | None = None  # attack exactly these audited points (a rerun on a subset), not `after`'s survivors

    @property
    def depth(self) -> int:
        return 1 + max((a.depth for a in self.after), default=0)

    @property
    def cost(self) -> float:
        """A rough relative cost (forward-backward passes per point) for ordering the plan: the adapter's own."""
        return ADAPTERS[self.kind].cost(self) if self.kind in ADAPTERS else float(self.steps * self.restarts)


@dataclass(frozen=True)
class AttackEnv:
    """What every adapter needs besides the spec: the threat model, seeds and the model's class count."""

    eps: float
    norm: str
    num_classes: int
    seed: int
    eot: int
    square_queries: int
    device: torch.device
    context: Any = None  # the AuditContext (adaptive attacks cache their surrogate on it); None in direct calls
    # draws the result is scored with afterwards (a majority vote when > 1): the audit's EOT even for a spec that
    # attacks with fewer draws (the single-draw follow-up); None = `eot`
    scored_draws: int | None = None

    @property
    def single_draw_scoring(self) -> bool:
        """The result is judged by one forward pass, so an attack may drop a point once it is broken. Under a
        majority vote it must not: its first break may be a lucky draw on the decision boundary (see `_pgd`)."""
        return (self.scored_draws or self.eot) == 1


AdapterFn = Callable[[AttackSpec, nn.Module, torch.Tensor, torch.Tensor, AttackEnv, torch.Generator], AttackResult]


def _default_cost(spec: AttackSpec) -> float:
    return float(spec.steps * spec.restarts)


@dataclass(frozen=True)
class Adapter:
    """A registered attack and the facts the audit runner needs about it (issue 25: facts on the class that owns them).

    uses_gradients: it differentiates the model, so it cannot run (and its checks skip) when the
    input has no gradient path. own_eot: it handles randomness itself (pyautoattack's `eot_iter`,
    or a gradient-free attack) and gets the bare model; else it differentiates the EOT-averaged
    model when the audit uses EOT. rescored: its `x_adv` is the point it found, and the runner
    scores it with the one inference forward every accuracy uses (eval mode, no gradients);
    False only for an attack that returns no point (noise: `x_adv` is x, success is foolbox's
    no-grad verdict). cost: forward-backward passes per point, for ordering the plan.
    """

    kind: str
    fn: AdapterFn
    uses_gradients: bool = True
    own_eot: bool = False
    rescored: bool = True
    cost: Callable[[AttackSpec], float] = _default_cost

    def __call__(self, spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: AttackEnv,
                 gen: torch.Generator) -> AttackResult:
        return self.fn(spec, model, x, y, env, gen)


ADAPTERS: dict[str, Adapter] = {}


def adapter(kind: str, *, uses_gradients: bool = True, own_eot: bool = False, rescored: bool = True,
            cost: Callable[[AttackSpec], float] = _default_cost) -> Callable[[AdapterFn], AdapterFn]:
    """Register an attack under `kind` with its facts (defaults: a gradient attack the audit wraps in EOT,
    costing steps x restarts passes per point). Returns the function unchanged."""
    def register(fn: AdapterFn) -> AdapterFn:
        ADAPTERS[kind] = Adapter(kind, fn, uses_gradients, own_eot, rescored, cost)
        return fn
    return register


def _aa_norm(norm: str) -> str:
    return {"linf": "Linf", "l2": "L2"}[norm]


def _aa_logger():  # noqa: ANN202
    """pyautoattack logs its zero-gradient warning per batch; gradient-health reports it instead."""
    import logging

    log = logging.getLogger("maskcheck.pyautoattack")
    if not log.handlers:
        log.addHandler(logging.NullHandler())
        log.propagate = False
    return log


def _scored(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> AttackResult:
    with torch.no_grad():
        return AttackResult(x_adv=x_adv, correct=model(x_adv).argmax(1) == y)


@adapter("pgd")
def _pgd(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: AttackEnv, gen: torch.Generator) -> AttackResult:
    """PGD that drops a point once broken, except on a randomised model (scored by a majority over draws).

    There the point is scored afterwards by a majority over fresh draws: a point dropped at the first
    step where the EOT-averaged logits misclassify it sits on the decision boundary, where that vote
    is a coin flip, so early stopping left points "unbroken" by chance (an unbounded attack that
    seemed to fail on a noisy model). Without it PGD keeps raising the loss of broken points too
    (keeping the highest-loss misclassified point), as EOT attacks do (Athalye et al. 2018).
    """
    return pgd(model, x, y, eps=spec.eps or env.eps, norm=env.norm, steps=spec.steps, loss=spec.loss, restarts=spec.restarts,
               generator=gen, record=spec.record, stop_when_broken=env.single_draw_scoring)


@adapter("fgsm", cost=lambda s: 1.0)
def _fgsm(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: AttackEnv, gen: torch.Generator) -> AttackResult:
    return fgsm(model, x, y, eps=spec.eps or env.eps, norm=env.norm, loss=spec.loss)


@adapter("apgd", own_eot=True)
def _apgd(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: AttackEnv, gen: torch.Generator) -> AttackResult:
    """pyautoattack's untargeted APGD with loss 'ce' or 'dlr' (Croce & Hein 2020)."""
    from pyautoattack.autopgd_base import APGDAttack

    a = APGDAttack(model, n_iter=spec.steps, norm=_aa_norm(env.norm), n_restarts=spec.restarts, eps=spec.eps or env.eps,
                   loss=spec.loss, seed=derived_seed(env.seed, "apgd-ce" if spec.loss == "ce" else f"apgd-{spec.loss}"),
                   eot_iter=env.eot, device=env.device, logger=_aa_logger())
    return _scored(model, a.perturb(x, y), y)


@adapter("apgd-t", own_eot=True, cost=lambda s: 9.0 * s.steps * s.restarts)
def _apgd_t(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: AttackEnv, gen: torch.Generator) -> AttackResult:
    """Targeted APGD-DLR, 9 target classes as AutoAttack standard (needs > 3 classes)."""
    from pyautoattack.autopgd_base import APGDAttack_targeted

    if env.num_classes < 4:
        return _scored(model, x, y)
    a = APGDAttack_targeted(model, n_iter=spec.steps, norm=_aa_norm(env.norm), n_restarts=spec.restarts, eps=spec.eps or env.eps,
                            seed=derived_seed(env.seed, "apgd-t"), eot_iter=env.eot, device=env.device,
                            n_target_classes=min(9, env.num_classes - 1), logger=_aa_logger())
    return _scored(model, a.perturb(x, y), y)


@adapter("fab-t", own_eot=True, cost=lambda s: 18.0 * s.steps * s.restarts)
def _fab_t(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: AttackEnv, gen: torch.Generator) -> AttackResult:
    """Targeted FAB with AutoAttack standard's settings (autoattack.py: n_target_classes 9, 100 it., 1 restart)."""
    from pyautoattack.fab_pt import FABAttack_PT

    if env.num_classes < 3:
        return _scored(model, x, y)
    a = FABAttack_PT(model, norm=_aa_norm(env.norm), n_restarts=spec.restarts, n_iter=spec.steps, eps=spec.eps or env.eps,
                     seed=derived_seed(env.seed, "fab-t"), targeted=True, n_target_classes=min(9, env.num_classes - 1),
                     device=env.device)
    return _scored(model, a.perturb(x, y), y)


# Square's budget on small inputs (issue 23). AutoAttack runs Square with a fixed schedule
# (resc_schedule=False): the window's share p of the image halves at queries 10, 50, 200, 500, 1000,
# 2000, 4000, ... (Andriushchenko et al. 2020, Sec. 3 and App. D; pyautoattack square.p_selection),
# and the window side is round(sqrt(p * h * w)). AutoAttack's 5000 queries were set for 3x32x32
# inputs, where the side never falls below 3 pixels within the budget (nor on MNIST's 28x28). On
# 8x8 digits it reaches 1 pixel at query 1000, after which there is no finer stage: the attack is
# random search over single pixels, h * w windows. Once there, the run stops when it has broken no
# new point for SQUARE_STALL_SWEEPS sweeps over those h * w positions. Measured on a TRADES
# and an LTD T=1 digits model (benchmarks/square_trace.md: 5000 queries on PGD-CE's survivors),
# Square's 15 and 18 breaks fell by queries 1506 and 1303, none in the 3,500 queries after; the
# longest run without a break inside the 1-pixel stage was 333 queries (5.2 sweeps). 8 sweeps is
# ours, with margin over that: the stop came at 2018 / 1815 queries and lost no break. A budget
# linear in the dimension (5000 x 64 / 3072 = 104) would have lost most of them (the schedule is
# fixed in queries); the stall stop scales with the input through h * w and the stage it waits for.
SQUARE_STALL_SWEEPS = 8


class _SquareStalled(Exception):
    """Raised inside SquareAttack's query loop to end it early; the best points so far are kept."""


def _square_min_side_query(h: int, w: int, c: int, norm: str, p_init: float) -> int | None:
    """The first query at which Square's window reaches its smallest side (1 px Linf, 3 px L2), or None
    when the schedule never gets there (its last stage starts at query 8000)."""
    from pyautoattack.square import SquareAttack

    smallest = 1 if norm == "linf" else 3
    probe = SquareAttack(None, p_init=p_init, resc_schedule=False)
    for start in (0, 11, 51, 201, 501, 1001, 2001, 4001, 6001, 8001):
        if max(int(round(math.sqrt(probe.p_selection(start) * h * w))), 1) <= smallest:
            return start
    return None


def _stalling_square(base: type) -> type:
    """pyautoattack's SquareAttack that stops once its window is at its smallest and no point has been
    broken for `patience` queries (SQUARE_STALL_SWEEPS sweeps over the image's positions).

    It hooks `margin_and_loss`, called once per query on the points still standing. The first call
    of a run receives the run's `x_best`, which the attack then updates in place; stopping returns it,
    so the points broken so far stay broken (every point is rescored by the model afterwards).
    """

    class StallingSquare(base):
        def __init__(self, *args, patience_from: int | None, patience: int, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.patience_from, self.patience = patience_from, patience
            self.queries_spent = 0

        def attack_single_run(self, x, y):  # noqa: ANN001, ANN202 - pyautoattack's API
            self._query, self._last_success, self._x_best = 0, 0, None
            try:
                return super().attack_single_run(x, y)
            except _SquareStalled:
                return None, self._x_best
            finally:
                self.queries_spent = max(self.queries_spent, self._query)

        def margin_and_loss(self, x, y):  # noqa: ANN001, ANN202
            margin, loss = super().margin_and_loss(x, y)
            if self._x_best is None:
                self._x_best = x
                return margin, loss
            self._query += 1
            if bool((margin <= 0).any()):
                self._last_success = self._query
            elif (self.patience_from is not None and self._query >= self.patience_from
                  and self._query - max(self._last_success, self.patience_from) >= self.patience):
                raise _SquareStalled
            return margin, loss

    return StallingSquare


@adapter("square", uses_gradients=False, own_eot=True, cost=lambda s: float(s.queries or DEFAULT_SQUARE_QUERIES) * s.restarts)
def _square(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: AttackEnv, gen: torch.Generator) -> AttackResult:
    """Square (black-box, Andriushchenko et al. 2020) with AutoAttack standard's p_init 0.8 and schedule,
    at most `queries`, stopped early once it stalls at its finest window (SQUARE_STALL_SWEEPS)."""
    from pyautoattack.square import SquareAttack

    c, h, w = x.shape[1:] if x.ndim == 4 else (1, 1, x[0].numel())
    sq = _stalling_square(SquareAttack)(
        model, norm=_aa_norm(env.norm), n_queries=spec.queries or env.square_queries, eps=spec.eps or env.eps, p_init=0.8,
        n_restarts=1, seed=derived_seed(env.seed, "square"), device=env.device, resc_schedule=False,
        patience_from=_square_min_side_query(h, w, c, env.norm, 0.8), patience=SQUARE_STALL_SWEEPS * h * w)
    with torch.no_grad():
        return _scored(model, sq.perturb(x, y), y)


NOISE_TILE = 10  # noise draws per point per forward pass (fewer, larger batches for foolbox)


@adapter("noise", uses_gradients=False, own_eot=True, rescored=False, cost=lambda s: s.queries / 10 * s.restarts)
def _noise(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: AttackEnv, gen: torch.Generator) -> AttackResult:
    """foolbox's repeated additive uniform noise, `spec.queries` draws per point (batched `NOISE_TILE` at a time)."""
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=env.device)
    cls = fb.attacks.LinfRepeatedAdditiveUniformNoiseAttack if env.norm == "linf" else fb.attacks.L2RepeatedAdditiveUniformNoiseAttack
    tile = min(NOISE_TILE, spec.queries)
    attack = cls(repeats=math.ceil(spec.queries / tile), check_trivial=True)
    seed_everything(derived_seed(env.seed, f"noise-{spec.queries}"))  # foolbox draws from torch's global RNG
    _, _, success = attack(fmodel, x.repeat(tile, *[1] * (x.ndim - 1)), y.repeat(tile), epsilons=spec.eps or env.eps)
    return AttackResult(x_adv=x, correct=~success.view(tile, -1).any(0))


@adapter("fmn")
def _fmn(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: AttackEnv, gen: torch.Generator) -> AttackResult:
    """foolbox FMN (Pintor et al. 2021), epsilons=None: unbounded minimal-norm."""
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=env.device)
    attack = (fb.attacks.LInfFMNAttack if env.norm == "linf" else fb.attacks.L2FMNAttack)(steps=spec.steps)
    _, adv, success = attack(fmodel, x, y, epsilons=None)
    return AttackResult(x_adv=adv, correct=~success)


def run_spec(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: AttackEnv, gen: torch.Generator) -> AttackResult:
    """Run one spec on a batch: the model gets the spec's logit scale and contiguous input gradients."""
    if spec.logit_scale != 1.0:
        model = Rescaled(model, spec.logit_scale)
    return ADAPTERS[spec.kind](spec, ContiguousGrad(model).eval(), x.contiguous(), y, env, gen)


PGD_STEPS = 20  # the audit's own PGD (CE and margin: a matched pair)


@dataclass(frozen=True)
class Battery:
    """The audit's standard attacks as specs; checks name what they need from here.

    Matched pairs for the loss comparison: PGD-CE / PGD-margin (same steps, step size, start),
    APGD-CE / untargeted APGD-DLR (same iterations and restarts). APGD-T and FAB-T serve the
    worst case and the AutoAttack-standard figure only.
    """

    pgd_ce: AttackSpec
    pgd_margin: AttackSpec
    fgsm: AttackSpec
    apgd_ce: AttackSpec
    apgd_dlr: AttackSpec
    apgd_t: AttackSpec
    fab_t: AttackSpec
    square: AttackSpec

    @classmethod
    def standard(cls, apgd_iters: int = DEFAULT_APGD_ITERS) -> "Battery":
        pgd_ce = AttackSpec("pgd", "ce", PGD_STEPS, label="pgd-ce", record=True)
        pgd_margin = AttackSpec("pgd", "margin", PGD_STEPS, label="pgd-margin", record=True)
        apgd_ce = AttackSpec("apgd", "ce", apgd_iters, after=(pgd_ce,), label="apgd-ce")
        apgd_t = AttackSpec("apgd-t", "dlr", apgd_iters, targeted=True, after=(apgd_ce,), label="apgd-t")
        return cls(
            pgd_ce=pgd_ce, pgd_margin=pgd_margin, fgsm=AttackSpec("fgsm", "ce", 1, label="fgsm"), apgd_ce=apgd_ce,
            apgd_dlr=AttackSpec("apgd", "dlr", apgd_iters, after=(pgd_margin,), label="apgd-dlr"), apgd_t=apgd_t,
            fab_t=AttackSpec("fab-t", "fab", apgd_iters, targeted=True, after=(apgd_t,), label="fab-t"),
            square=AttackSpec("square", "margin", 1, after=(pgd_ce,), label="square", white_box=False),
        )

    @property
    def white_box(self) -> tuple[AttackSpec, ...]:
        """Every white-box attack at the audit's eps except FAB-T (which runs only beside Square)."""
        return (self.pgd_ce, self.pgd_margin, self.fgsm, self.apgd_ce, self.apgd_dlr, self.apgd_t)

    @property
    def autoattack_standard(self) -> tuple[AttackSpec, ...]:
        """AutoAttack version='standard': APGD-CE, APGD-T, FAB-T, Square (autoattack.py _set_version)."""
        return (self.apgd_ce, self.apgd_t, self.fab_t, self.square)

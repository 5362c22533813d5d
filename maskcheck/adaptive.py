"""Adaptive attacks that need no knowledge of the defense: transfer from a distilled surrogate, BPDA, and the
binarization test's attack on a per-point binary classifier.

The audit's white-box battery trusts the model's own gradients. The defenses that fooled the field
(Athalye et al. 2018; Tramer et al. 2020) gave gradients that were zero, missing or non-zero but
useless, and were broken by attacks that replace those gradients:

- transfer (IoAF "transfer failure", Pintor et al. 2022): a smooth surrogate is distilled from the
  audited model's own outputs (inference queries only, no gradient of the target), attacked, and
  its adversarial points are scored on the target by an inference forward;
- BPDA (Athalye et al. 2018): the target's forward with another backward: the identity for a named
  submodule (`--bpda identity:PATH`, the user knows the non-differentiable step) or the surrogate's
  gradient (`--bpda surrogate`, and automatically when the cheap gradient probe finds the
  gradients exactly zero, non-finite or absent, or the forward changes under autograd; in that last case
  BPDA also follows the inference forward's own gradient, by forward-mode AD under no_grad:
  `InferenceGradient`);
- the binarization test (Zimmermann et al. 2022): a binary classifier built on the model's logits
  around one point with an adversarial example known to lie in the ball; an attack that misses it
  cannot be trusted on that point (checks/binarization.py).

The surrogate is trained once per audit on all audited points and cached on the `AuditContext`
(`surrogate_for`); the adapters `transfer` and `bpda` read it through `AttackEnv.context`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import attacks
from .attacks import AttackEnv, AttackResult, AttackSpec, adapter
from .config import parse_bpda
from .errors import InputError

if TYPE_CHECKING:
    from .auditing import AuditContext

# Registration facts: neither attack needs the target's own gradients (transfer: none; bpda: the surrogate's or
# the identity's), so both run on a model without a gradient path. bpda attacks the EOT-averaged model on a
# randomised one (own_eot False); transfer queries the plain model and the audit scores its points by majority
# over draws (own_eot True, rescored).


TRANSFER_STEPS = 50  # PGD steps on the surrogate (ours: transfer needs a converged surrogate attack, cheap there)
TRANSFER_SCORE_EVERY = 5  # iterates scored on the target (one inference forward each; ours)
BPDA_STEPS = 50  # Athalye et al. 2018 broke thermometer encoding with BPDA-PGD of 40+ steps; ours: 50
SURROGATE_HIDDEN = 256  # ours: a two-hidden-layer GELU MLP fits digits/MNIST outputs in a few seconds on one core
SURROGATE_EPOCHS = 15
SURROGATE_BATCH = 512  # ours: few, large steps (Adam, lr 3e-3): the cost is per step on a loaded CPU
BALL_QUERIES = 8  # queries per audited point inside its eps-ball (4 uniform, 4 at vertices; ours)
ZERO_GRAD_TRIGGER = 0.01  # share of exactly-zero/non-finite margin gradients that triggers automatic BPDA (= gradient-health's fail_fraction)


# ---------------------------------------------------------------------- the surrogate


class Surrogate(nn.Module):
    """A smooth classifier (GELU MLP on the flattened input): its gradients exist everywhere and are informative."""

    def __init__(self, d: int, k: int, hidden: int = SURROGATE_HIDDEN) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _vertex(x: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """A random point on the ball's boundary (a Linf vertex, or an L2 sphere point), in [0, 1]."""
    d = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    if norm == "linf":
        return attacks.project(x + eps * d.sign(), x, eps, norm)
    flat = d.flatten(1)
    return attacks.project(x + (eps * flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(x), x, eps, norm)


def surrogate_queries(x: torch.Tensor, eps: float, norm: str, gen: torch.Generator, per_point: int = BALL_QUERIES) -> torch.Tensor:
    """The clean points, then `per_point` points in each eps-ball (half uniform, half on the boundary) and as many
    at twice the radius, so the surrogate sees the target where attacks go (ours)."""
    parts = [x]
    for radius in (eps, 2 * eps):
        for i in range(per_point):
            parts.append(attacks.random_start(x, radius, norm, gen) if i % 2 == 0 else _vertex(x, radius, norm, gen))
    return torch.cat(parts)


@torch.no_grad()
def _soft_targets(model: nn.Module, q: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The target's logits on the queries, rescaled so their median per-row spread is 2: a flat or saturated
    softmax (logit scaling) is distilled as a usable one (ours)."""
    z = torch.cat([model(q[i:i + batch_size]).float() for i in range(0, len(q), batch_size)])
    z = torch.nan_to_num(z, nan=0.0, posinf=1e4, neginf=-1e4)
    spread = z.std(1).median().clamp_min(1e-6)
    return z * (2.0 / spread)


def distil_surrogate(model: nn.Module, x: torch.Tensor, *, eps: float, norm: str, num_classes: int, seed: int,
                     batch_size: int = 500, epochs: int = SURROGATE_EPOCHS, lr: float = 3e-3) -> Surrogate:
    """Train a `Surrogate` to match the target's outputs on queries around `x` (KL to the target's softmax).

    Queries only: the target runs under no_grad in eval mode. Deterministic for a seed. Cost: 17 queries per
    point and `epochs` passes over them (seconds for a few hundred digits points on one core).
    """
    from .config import generator_for

    gen = generator_for(seed, "surrogate", x.device)
    q = surrogate_queries(x, eps, norm, gen)
    t = F.softmax(_soft_targets(model, q, batch_size), 1)
    with torch.random.fork_rng(devices=[]):  # the surrogate's initialisation, without moving the global RNG
        torch.manual_seed(seed)
        s = Surrogate(q[0].numel(), num_classes).to(x.device)
    opt = torch.optim.Adam(s.parameters(), lr=lr)
    bs = SURROGATE_BATCH
    with torch.enable_grad():
        for epoch in range(epochs):
            perm = torch.randperm(len(q), generator=gen, device=x.device)
            for i in range(0, len(q), bs):
                b = perm[i:i + bs]
                loss = F.kl_div(F.log_softmax(s(q[b]), 1), t[b], reduction="batchmean")
                opt.zero_grad()
                loss.backward()
                opt.step()
    return s.eval().requires_grad_(False)


def surrogate_for(ctx: "AuditContext | None", model: nn.Module, x: torch.Tensor, env: AttackEnv) -> nn.Module:
    """The audit's surrogate (trained once on every audited point and cached on the context, timed as
    'surrogate'); without a context (a direct adapter call) one trained on this batch."""
    if ctx is None:
        return distil_surrogate(model, x, eps=env.eps, norm=env.norm, num_classes=env.num_classes, seed=env.seed)
    cached = ctx.__dict__.get("_surrogate")
    if cached is None:
        with ctx.timed("surrogate"):
            cached = distil_surrogate(ctx.model, ctx.x, eps=ctx.eps, norm=ctx.norm, num_classes=ctx.num_classes,
                                      seed=ctx.seed, batch_size=ctx.batch_size)
        ctx.__dict__["_surrogate"] = cached
    return cached


# ---------------------------------------------------------------------- transfer


def transfer_attack(target: nn.Module, surrogate: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                    steps: int = TRANSFER_STEPS, gen: torch.Generator | None = None,
                    score_every: int = TRANSFER_SCORE_EVERY) -> AttackResult:
    """PGD-margin on the surrogate; every `score_every`-th iterate (and the last) is scored on the target with an
    inference forward, keeping each point's first iterate that the target misclassifies."""
    step_size = 2.5 * eps / max(steps, 1)
    x_adv = attacks.random_start(x, eps, norm, gen)
    best = x.clone()
    with torch.no_grad():
        correct = target(x).argmax(1) == y
    for i in range(1, steps + 1):
        xa = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = attacks.margin_loss(surrogate(xa), y)
            (g,) = torch.autograd.grad(loss.sum(), xa)
        x_adv = attacks.project(xa.detach() + attacks._step(g, step_size, norm), x, eps, norm)
        if i % score_every == 0 or i == steps:
            with torch.no_grad():
                broken = correct & (target(x_adv).argmax(1) != y)
            best[broken] = x_adv[broken]
            correct &= ~broken
    return AttackResult(x_adv=best, correct=correct)


# ---------------------------------------------------------------------- the inference forward's own gradient


INFERENCE_JACOBIAN_MAX_DIM = 1024  # ours: digits (64) and MNIST (784) inputs; one forward-mode pass per input value
INFERENCE_JACOBIAN_ROWS = 4096  # rows per forward-mode batch (memory bound; ours)


def inference_jacobian(model: nn.Module, x: torch.Tensor, rows: int = INFERENCE_JACOBIAN_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, Jacobian (B, K, D)) of the model's *inference* forward: forward-mode AD under no_grad, one tangent per
    input value. The model runs with autograd off (torch.is_grad_enabled() is False, no input requires grad), so a
    model that behaves differently while gradients are recorded takes its inference path, the one that predicts."""
    import torch.autograd.forward_ad as fwAD

    b, shape = len(x), x.shape[1:]
    d = x[0].numel()
    eye = torch.eye(d, device=x.device, dtype=x.dtype).view(d, *shape)
    per = max(1, rows // max(b, 1))  # tangents per batch
    parts = []
    with torch.no_grad():
        logits = model(x).float()
        with fwAD.dual_level():
            for j in range(0, d, per):
                t = eye[j:j + per]
                m = len(t)
                xr = x.repeat(m, *([1] * len(shape)))  # (m * b): tangent-major
                tr = t.repeat_interleave(b, dim=0)
                tangent = fwAD.unpack_dual(model(fwAD.make_dual(xr, tr))).tangent
                parts.append(tangent.float().view(m, b, -1))
    return logits, torch.cat(parts).permute(1, 2, 0)


class InferenceGradient(nn.Module):
    """The target's inference forward, differentiated exactly by forward-mode AD (issue 22): for a model whose forward
    changes while autograd records (noise, another branch), the gradient of the function that predicts. Costs one
    forward per input value (D) per gradient, hence only for inputs up to `INFERENCE_JACOBIAN_MAX_DIM` values."""

    def __init__(self, target: nn.Module) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, jac = inference_jacobian(self.target, x.detach())
        # value: the logits; gradient: J^T g (x - x.detach() is zero, its derivative the identity)
        return logits + torch.einsum("bkd,bd->bk", jac, (x - x.detach()).flatten(1).float())


def inference_gradient_model(target: nn.Module, x: torch.Tensor) -> InferenceGradient | None:
    """`InferenceGradient(target)` when the input is small enough and the target supports forward-mode AD, else None."""
    if x[0].numel() > INFERENCE_JACOBIAN_MAX_DIM:
        return None
    try:
        inference_jacobian(target, x[:1])
    except (RuntimeError, NotImplementedError):  # an operation without a forward-mode formula
        return None
    return InferenceGradient(target).eval()


# ---------------------------------------------------------------------- BPDA


class StraightThrough(nn.Module):
    """BPDA through a surrogate: the target's forward (inference, no graph), the surrogate's backward.

    out = s(x) + (t(x) - s(x)).detach(): its value is the target's logits, its gradient the surrogate's.
    """

    def __init__(self, target: nn.Module, surrogate: nn.Module) -> None:
        super().__init__()
        self.target, self.surrogate = target, surrogate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = self.target(x).float()
        s = self.surrogate(x)
        return s + (t - s.detach())


class IdentityBackward(nn.Module):
    """BPDA with the identity (Athalye et al. 2018): `module`'s forward, the identity's backward."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.module(x)
        if out.shape != x.shape:
            raise InputError(f"--bpda identity: the submodule's output has shape {tuple(out.shape)}, its input "
                             f"{tuple(x.shape)}; the identity backward needs equal shapes. Use --bpda surrogate.")
        return x + (out - x).detach()


def resolve_submodule(model: nn.Module, path: str) -> str:
    """The full name of the submodule `path` names: itself, else the shortest name ending in '.PATH' (the audit may
    hold the user's model behind wrappers: the load guard, --normalize). InputError when there is none, or when it
    lives in TorchScript, whose submodules cannot be replaced."""
    names = [n for n, _ in model.named_modules() if n]
    hits = [path] if path in names else sorted((n for n in names if n.endswith("." + path)), key=len)
    if not hits:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise InputError(f"--bpda identity:{path}: the model has no submodule {path!r}; its submodules: {shown or 'none'}.")
    full = hits[0]
    parent_path = full.rpartition(".")[0]
    if isinstance(model.get_submodule(parent_path) if parent_path else model, torch.jit.ScriptModule):
        raise InputError(f"--bpda identity:{path}: the submodule is inside TorchScript, whose submodules cannot be "
                         "replaced; audit the eager model (a run folder or a state dict with --arch), or use --bpda surrogate.")
    return full


def validate_bpda(value: str | None, model: nn.Module) -> None:
    """Fail before any attack runs when `identity:PATH` names no replaceable submodule of the model."""
    parsed = parse_bpda(value)
    if parsed and parsed[0] == "identity":
        resolve_submodule(model, parsed[1])


@contextmanager
def identity_backward(model: nn.Module, path: str) -> Iterator[None]:
    """Within the block, the submodule at `path` of `model` runs with an identity backward (restored after)."""
    parent_path, _, leaf = resolve_submodule(model, path).rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    original = getattr(parent, leaf) if not leaf.isdigit() else parent[int(leaf)]
    wrapped = IdentityBackward(original)
    _set_child(parent, leaf, wrapped)
    try:
        yield
    finally:
        _set_child(parent, leaf, original)


def _set_child(parent: nn.Module, leaf: str, module: nn.Module) -> None:
    if leaf.isdigit() and isinstance(parent, (nn.Sequential, nn.ModuleList)):
        parent[int(leaf)] = module
    else:
        setattr(parent, leaf, module)


@torch.no_grad()
def gradient_probe(ctx: "AuditContext") -> dict[str, Any]:
    """Cheap probe for automatic BPDA: share of clean points whose margin-loss input gradient is exactly zero or
    non-finite (one backward per point), no gradient path at all, or a forward that differs with gradients
    enabled (random only there, or deterministic but different). Cached on the context."""
    cached = ctx.__dict__.get("_gradient_probe")
    if cached is not None:
        return cached
    if not ctx.grad_ok:
        out = {"no_gradient_path": True, "zero_or_nonfinite_fraction": 1.0, "triggered": True}
    else:
        bad = 0
        with ctx.timed("gradient-probe"), torch.enable_grad():
            for i in range(0, ctx.n, ctx.batch_size):
                xb, yb = ctx.x[i:i + ctx.batch_size], ctx.y[i:i + ctx.batch_size]
                _, g = attacks.input_grad(ctx.attack_model, xb, yb, attacks.margin_loss)
                norm = g.flatten(1).abs().sum(1)
                bad += int(((norm == 0) | ~torch.isfinite(norm)).sum())
        frac = bad / max(ctx.n, 1)
        # a forward that changes under autograd: every gradient is of another function than the one that predicts
        probe = ctx.randomness
        other = bool(probe["randomized_grad"] and not probe["randomized"]) or bool(probe["grad_mismatch"])
        out = {"no_gradient_path": False, "zero_or_nonfinite_fraction": frac, "gradient_mode_differs": other,
               "triggered": frac >= ZERO_GRAD_TRIGGER or other}
    ctx.__dict__["_gradient_probe"] = out
    return out


def bpda_mode(spec: AttackSpec, ctx: "AuditContext | None") -> tuple[str, str] | None:
    """What a bpda spec runs: its loss field names the source ('user': the audit's --bpda; 'auto': the surrogate
    when the gradient probe triggers, else nothing)."""
    if spec.loss == "auto":
        return ("surrogate", "") if ctx is None or gradient_probe(ctx)["triggered"] else None
    return parse_bpda(getattr(ctx.config, "bpda", None)) if ctx is not None else ("surrogate", "")


# ---------------------------------------------------------------------- adapters


@adapter("transfer", uses_gradients=False, own_eot=True, cost=lambda s: float(s.steps + 5 * SURROGATE_EPOCHS))
def _transfer(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: AttackEnv, gen: torch.Generator) -> AttackResult:
    """Transfer from the audit's distilled surrogate (PGD-margin, `spec.steps` steps), scored on the target."""
    ctx = getattr(env, "context", None)
    s = surrogate_for(ctx, model, x, env)
    return transfer_attack(model, s, x, y, eps=spec.eps or env.eps, norm=env.norm, steps=spec.steps, gen=gen)


@adapter("bpda", uses_gradients=False)
def _bpda(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: AttackEnv, gen: torch.Generator) -> AttackResult:
    """BPDA-PGD (margin loss, `spec.steps` steps): identity backward through a named submodule, or the surrogate's
    backward (straight-through); a no-op (points scored as they are) when the automatic trigger did not fire."""
    ctx = getattr(env, "context", None)
    mode = bpda_mode(spec, ctx)
    eps = spec.eps or env.eps
    if mode is None:
        return attacks._scored(model, x, y)
    if mode[0] == "surrogate":
        wrapped = StraightThrough(model, surrogate_for(ctx, model, x, env))
        r = attacks.pgd(wrapped, x, y, eps=eps, norm=env.norm, steps=spec.steps, loss="margin", generator=gen,
                        stop_when_broken=env.single_draw_scoring)
        out = attacks._scored(model, r.x_adv, y)
        exact = inference_gradient_model(ctx.model, x) if ctx is not None and gradient_probe(ctx).get("gradient_mode_differs") else None
        if exact is not None:  # the forward differs under autograd: also follow the predicting forward's own gradient
            r = attacks.pgd(exact, x, y, eps=eps, norm=env.norm, steps=spec.steps, loss="margin", generator=gen,
                            stop_when_broken=env.single_draw_scoring)
            out = _stronger(out, attacks._scored(model, r.x_adv, y), x)
            # then the audit's APGD-CE (its iterations) on what still stands, one draw: the gradient is deterministic
            left = out.correct.nonzero().flatten()
            if len(left):
                apgd = AttackSpec("apgd", "ce", ctx.config.apgd_iters, eps=eps)
                r = attacks.run_spec(apgd, exact, x[left], y[left], replace(env, eot=1), gen)
                x_adv = out.x_adv.clone()
                x_adv[left] = r.x_adv
                out = _stronger(out, attacks._scored(model, x_adv, y), x)
        return out
    root = ctx.model if ctx is not None else model
    with identity_backward(root, mode[1]):
        r = attacks.pgd(model, x, y, eps=eps, norm=env.norm, steps=spec.steps, loss="margin", generator=gen,
                        stop_when_broken=env.single_draw_scoring)
    return attacks._scored(model, r.x_adv, y)


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _stronger(a: AttackResult, b: AttackResult, x: torch.Tensor) -> AttackResult:
    """Per point, the result that broke it (b where a did not)."""
    return AttackResult(x_adv=torch.where(_rows(a.correct, x), b.x_adv, a.x_adv), correct=a.correct & b.correct)


def transfer_spec(after: tuple[AttackSpec, ...]) -> AttackSpec:
    """The audit's transfer run: on the points the white-box battery left standing."""
    return AttackSpec("transfer", "margin", TRANSFER_STEPS, after=after, label="transfer", white_box=False)


def bpda_specs(cfg: Any, after: tuple[AttackSpec, ...]) -> tuple[AttackSpec, ...]:
    """The automatic BPDA-surrogate run (a no-op unless the gradient probe fires) and the user's --bpda run
    (which replaces the automatic one when it is the same attack: --bpda surrogate)."""
    user = getattr(cfg, "bpda", None)
    specs = [] if user == "surrogate" else [AttackSpec("bpda", "auto", BPDA_STEPS, after=after, white_box=False)]
    if user:
        specs.append(AttackSpec("bpda", "user", BPDA_STEPS, after=after, label="bpda", white_box=False))
    return tuple(specs)


# ---------------------------------------------------------------------- binarization test


class Binarized(nn.Module):
    """A binary classifier on a model's logits: class 1 when w . z(x) + b > 0 (Zimmermann et al. 2022)."""

    def __init__(self, model: nn.Module, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.model, self.w, self.b = model, w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (self.model(x).float() * self.w[: len(x)]).sum(1) + self.b[: len(x)]
        return torch.stack([torch.zeros_like(s), s], 1)


def binarization_test(model: nn.Module, x: torch.Tensor, *, eps: float, norm: str, gen: torch.Generator,
                      inner: int = 16, steps: int = attacks.PGD_STEPS, score: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Per point: `inner` random points in the ball and the clean point are class 0, one random boundary point x*
    (a known adversarial example) class 1; the readout is the difference of class-0 mean and x* in logit space,
    its bias halfway between x* and the closest class-0 sample (ours). PGD (the audit's, CE, uniform start) then
    attacks the binarized model from x with label 0.

    Returns bool tensors `valid` (the readout separates x* from every class-0 sample) and `found` (the attack
    reached class 1). An attack that misses a class-1 region known to be there failed on that point.
    """
    with torch.no_grad():
        b = len(x)
        x_star = _vertex(x, eps, norm, gen)
        samples = torch.cat([x] + [attacks.random_start(x, eps, norm, gen) for _ in range(inner)])
        z0 = model(samples).float().view(inner + 1, b, -1)
        z1 = model(x_star).float()
        w = z1 - z0.mean(0)
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        s1 = (z1 * w).sum(1)
        s0 = (z0 * w).sum(2).max(0).values
        valid = torch.isfinite(s1) & torch.isfinite(s0) & (s1 > s0)
        bias = -(s1 + s0) / 2
    binm = Binarized(model, w, bias).eval()
    zeros = torch.zeros(b, dtype=torch.long, device=x.device)
    r = attacks.pgd(binm, x, zeros, eps=eps, norm=norm, steps=steps, loss="ce", generator=gen)
    with torch.no_grad():
        found = Binarized(score or model, w, bias)(r.x_adv).argmax(1) == 1
    return {"valid": valid.cpu(), "found": found.cpu()}

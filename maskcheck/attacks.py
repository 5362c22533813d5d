"""Attacks as plain functions over (model, x, y). Inputs and outputs live in [0, 1].

The gradient attacks here are written out because the checks need their internals (the
per-iteration loss, start-point gradients, per-example outcomes); AutoAttack's APGD and Square
and foolbox's attacks are used through adapters where their strength matters.

Losses are per-example (shape (B,)) and are *maximised* by the attacker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y) -> (B,)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin: max_{j != y} z_j - z_y (> 0 means misclassified). Scale-equivariant."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.max(1).values - true


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, Eq. 6): margin / (z_pi1 - z_pi3). Scale-invariant."""
    sorted_logits = logits.sort(1, descending=True).values
    denom = sorted_logits[:, 0] - sorted_logits[:, 2] + 1e-12
    return margin_loss(logits, y) / denom


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "margin": margin_loss, "dlr": dlr_loss}


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
    start_grad_norm: torch.Tensor | None = None  # (B,) L1 norm of the loss gradient at the start point


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
    start_norm = None
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
            if i == 0 and record:
                start_norm = torch.zeros(n, device=x.device)
                start_norm[idx] = grad.flatten(1).abs().sum(1)
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
        start_grad_norm=start_norm,
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

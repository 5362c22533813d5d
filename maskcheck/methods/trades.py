"""TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(f(x) || f(x')).

Reference: `yaodongyu/TRADES/trades.py::trades_loss`; methods.md section 4.
* inner max: model in eval mode, start x + 0.001 * N(0, 1), PGD on sum_i KL(f(x_i) || f(x'_i)),
  sign steps, projected to the eps-ball and [0, 1] (maskcheck.attacks.pgd with start="gaussian");
* `inner="ce"` (ablation, issue 17): PGD-CE on the hard label instead, with the same start and
  steps -- LTD's inner attack, to separate the effect of the attack loss from that of the labels;
* `ctx.inner_start` (issue 24 ablation): "uniform" (PGD-AT's) or "none" in place of the Gaussian start;
* loss: KL with batchmean reduction (`KLDivLoss(size_average=False) / batch_size`), beta 6, and the
  clean target is *not* detached: gradients flow through both arguments (methods.md pitfall 5).
maskcheck.attacks.pgd returns each example's strongest point (not the last iterate); with sign
steps on a monotone KL ascent the two rarely differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attacks import pgd
from .base import (ADV_LOGITS, Batch, Method, StepContext, attack_passes, autocast_ctx, eval_mode, kl_from_probs, kl_per_example,
                   probed, split_views)


def ce_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """x' maximising CE(f(x'), y) on the hard label (LTD's inner attack): eval mode, Gaussian start."""
    with eval_mode(model), autocast_ctx(ctx):
        return pgd(probed(model, ctx), x, y, eps=ctx.eps, norm=ctx.norm, steps=ctx.attack_steps, step_size=ctx.attack_step_size,
                   loss="ce", start=ctx.inner_start, generator=ctx.generator).x_adv


def clean_target(model: nn.Module, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """softmax(f(x)) in eval mode: the fixed target of the KL inner attack.

    In eval mode model(x) is constant during the attack, so computing it once is exact.
    """
    with torch.no_grad(), eval_mode(model), autocast_ctx(ctx):
        return F.softmax(model(x).float(), dim=1)


def inner_attack(inner: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """The inner maximisation by loss name: "kl" (TRADES) or "ce" (LTD as the paper describes it)."""
    if inner == "kl":
        return kl_attack(model, x, y, clean_target(model, x, ctx), ctx)
    if inner == "ce":
        return ce_attack(model, x, y, ctx)
    raise ValueError(f"unknown inner attack loss {inner!r}; valid: ce, kl")


def kl_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """x' maximising KL(target || softmax(f(x'))), TRADES-style (eval mode, Gaussian start)."""
    with eval_mode(model), autocast_ctx(ctx):
        result = pgd(
            probed(model, ctx), x, y, eps=ctx.eps, norm=ctx.norm, steps=ctx.attack_steps, step_size=ctx.attack_step_size,
            loss=lambda logits, _y: kl_from_probs(target, logits), start=ctx.inner_start, generator=ctx.generator,
        )
    return result.x_adv


@dataclass
class Trades(Method):
    name: ClassVar[str] = "trades"
    adversarial: ClassVar[bool] = True
    supports_awp: ClassVar[bool] = True
    beta: float = 6.0  # TRADES README / train_trades_cifar10.py default (MNIST script: 1.0)
    inner: str | None = None  # None = "kl", the reference's attack; "ce" = ablation

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> Batch:
        return Batch(x, y, x_adv=inner_attack(self.inner or "kl", model, x, y, ctx))

    def objective(self, model: nn.Module, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        clean, adv = split_views(model(torch.cat([batch.x, batch.x_adv])), 2)
        batch.extra[ADV_LOGITS] = adv.detach()
        loss = F.cross_entropy(clean.float(), batch.y) + self.beta * kl_per_example(clean, adv).mean()
        return loss, clean

    def passes(self, ctx: StepContext) -> float:
        # target forward (KL attack only) + the attack + one forward/backward of the 2-view batch
        return attack_passes(ctx.attack_steps) + (1 / 3 if (self.inner or "kl") == "kl" else 0) + 2

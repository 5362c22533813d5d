"""RSLAD (Zi et al. 2021): robust soft labels from a robust teacher, no hard-label term.

Reference: `zibojia/RSLAD/rslad_loss.py`; methods.md section 6.

    L = (1/C) * [5/6 * KL(t(x) || f(x')) + 1/6 * KL(t(x) || f(x))]

`torch.mean` over all B x C elements in the reference = batchmean / C (pitfall 3), kept here.
The teacher (e.g. the sweep's TRADES model) sees clean x only, at temperature 1; the inner max
is PGD on sum KL(t(x) || f(x')), eval mode, 0.001 Gaussian start. The reference's
`b * log(b + 1e-5)` differs from the exact KL used here by < 1e-5 per term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ADV_LOGITS, Batch, Method, StepContext, attack_passes, autocast_ctx, kl_from_probs, split_views
from .trades import kl_attack


@dataclass
class RSLAD(Method):
    name: ClassVar[str] = "rslad"
    needs_teacher: ClassVar[bool] = True
    adversarial: ClassVar[bool] = True
    sweep_teacher: ClassVar[str | None] = "trades"  # a robust teacher (Zi et al. 2021)
    adv_weight: float = 5 / 6

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> Batch:
        if ctx.teacher is None:
            raise ValueError("rslad needs a robust teacher (ctx.teacher)")
        with torch.no_grad(), autocast_ctx(ctx):
            soft = F.softmax(ctx.teacher(x).float(), dim=1)
        return Batch(x, y, x_adv=kl_attack(model, x, y, soft, ctx), soft=soft)

    def objective(self, model: nn.Module, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        clean, adv = split_views(model(torch.cat([batch.x, batch.x_adv])), 2)
        batch.extra[ADV_LOGITS] = adv.detach()
        num_classes = clean.shape[1]
        loss = (self.adv_weight * kl_from_probs(batch.soft, adv).mean()
                + (1 - self.adv_weight) * kl_from_probs(batch.soft, clean).mean()) / num_classes
        return loss, clean

    def passes(self, ctx: StepContext) -> float:
        return attack_passes(ctx.attack_steps) + 1 / 3 + 2

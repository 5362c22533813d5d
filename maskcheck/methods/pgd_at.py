"""PGD adversarial training (Madry et al. 2018): CE(f(x'), y) on PGD examples only.

Reference: `MadryLab/cifar10_challenge` (`train.py`, `config.json`) and the PyTorch port in
`csdongxian/AWP/AT_AWP/train_cifar10.py`; methods.md section 3. Uniform random start in the
eps-ball; the reference crafts x' with BatchNorm in *train* mode (pitfall 1), kept as
`attack_train_mode=True` (set False for eval-mode crafting).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attacks import pgd
from .base import ADV_LOGITS, Batch, Method, StepContext, attack_passes, autocast_ctx, eval_mode, probed


@dataclass
class PGDAT(Method):
    name: ClassVar[str] = "pgd-at"
    adversarial: ClassVar[bool] = True
    supports_awp: ClassVar[bool] = True
    attack_train_mode: bool = True

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> Batch:
        def attack() -> torch.Tensor:
            with autocast_ctx(ctx):
                return pgd(probed(model, ctx), x, y, eps=ctx.eps, norm=ctx.norm, steps=ctx.attack_steps, step_size=ctx.attack_step_size,
                           loss="ce", start="uniform", generator=ctx.generator).x_adv

        if self.attack_train_mode:
            return Batch(x, y, x_adv=attack())
        with eval_mode(model):
            return Batch(x, y, x_adv=attack())

    def objective(self, model: nn.Module, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch.x_adv)
        batch.extra[ADV_LOGITS] = logits.detach()
        return F.cross_entropy(logits.float(), batch.y), logits

    def passes(self, ctx: StepContext) -> float:
        return attack_passes(ctx.attack_steps) + 1

"""Defensive distillation (Papernot et al. 2016, as re-implemented by Carlini & Wagner).

Reference: `carlini/nn_robust_attacks/train_models.py` (`train`, `train_distillation`);
methods.md section 2. The temperature T is applied *only inside the training loss*: the model
outputs raw logits z and is deployed at temperature 1, so at test time its logits are T times
the scale it was trained at. That saturates softmax and zeroes cross-entropy input gradients:
the known gradient masking this method exists in maskcheck to reproduce.

* teacher phase (no teacher given): CE(y, softmax(z / T)) on hard labels;
* student phase: CE(softmax(teacher(x) / T), softmax(z / T)) on the teacher's soft labels.
  Carlini & Wagner compute the soft labels once offline; computing them on the fly from the same
  batch is identical without augmentation and correct with it (one extra teacher forward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import format_temperature
from .base import Batch, Method, StepContext, autocast_ctx, soft_cross_entropy


@dataclass
class DefensiveDistillation(Method):
    name: ClassVar[str] = "dd"
    has_temperature: ClassVar[bool] = True
    takes_soft_labels: ClassVar[bool] = True
    temperature: float = 100.0  # C&W default train_temp=100

    @classmethod
    def sweep_jobs(cls, temps: Sequence[float]) -> list[tuple[str, float | None, str | None]]:
        """Per T a teacher trained on logits / T and a student on its soft labels (deployed with raw logits)."""
        jobs: list[tuple[str, float | None, str | None]] = []
        for t in temps:
            tag = format_temperature(t)
            jobs += [(f"dd-teacher-T{tag}", t, None), (f"dd-T{tag}", t, f"dd-teacher-T{tag}")]
        return jobs

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> Batch:
        if ctx.teacher is None:
            return Batch(x, y)
        with torch.no_grad(), autocast_ctx(ctx):
            soft = F.softmax(ctx.teacher(x).float() / self.temperature, dim=1)
        return Batch(x, y, soft=soft)

    def objective(self, model: nn.Module, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch.x)
        scaled = logits.float() / self.temperature
        if batch.soft is None:
            return F.cross_entropy(scaled, batch.y), logits
        return soft_cross_entropy(batch.soft, scaled).mean(), logits

    def passes(self, ctx: StepContext) -> float:
        return 1.0 + (1 / 3 if ctx.teacher is not None else 0.0)

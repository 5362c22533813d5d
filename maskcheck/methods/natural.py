"""Natural training: cross-entropy on clean inputs. Also the teacher of LTD.

Reference: TRADES README, "Natural training" (`F.cross_entropy(model(data), target)`);
methods.md section 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Batch, Method, StepContext


@dataclass
class Natural(Method):
    name: ClassVar[str] = "natural"
    takes_soft_labels: ClassVar[bool] = True

    def objective(self, model: nn.Module, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch.x)
        # given target probabilities (soft labels), cross_entropy computes -sum p log softmax(logits)
        target = batch.soft if batch.soft is not None else batch.y
        return F.cross_entropy(logits.float(), target), logits

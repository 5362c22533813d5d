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

    def objective(self, model: nn.Module, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch.x)
        return F.cross_entropy(logits.float(), batch.y), logits

"""Adversarial Weight Perturbation (Wu et al. 2020), a wrapper around any method's objective.

Reference: `csdongxian/AWP/utils_awp.py` (`AdvWeightPerturb`), methods.md section 5 and pitfall 13.
Per step: a proxy copy of the model (reloaded from it, in train mode, so the model's BatchNorm
statistics are never touched) takes one *ascending* gradient step on the training objective;
for every weight with ndim > 1 and 'weight' in its name, the difference is rescaled layer-wise
to ||w|| / ||diff|| * diff. The loop then perturbs w += gamma * diff, computes loss and gradient
there, calls optimizer.step(), and restores w -= gamma * diff. Because the difference is
normalised, the proxy's learning rate cancels: the direction is the objective's gradient.
Defaults: TRADES-AWP gamma 0.005 with 10 warm-up epochs; AT-AWP gamma 0.01, no warm-up.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .base import Batch, Method, StepContext, autocast_ctx

# (gamma, warmup epochs) from the reference scripts, per method.
AWP_DEFAULTS: dict[str, tuple[float, int]] = {"trades": (0.005, 10), "ltd": (0.005, 10), "pgd-at": (0.01, 0)}


def perturbed_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.ndim > 1 and "weight" in n]


@dataclass
class AWP:
    gamma: float = 0.005
    warmup: int = 0  # epochs before AWP starts (TRADES-AWP: 10)
    _proxy: nn.Module | None = field(default=None, repr=False)

    def active(self, epoch: int) -> bool:
        """`epoch` is 0-based; the reference starts perturbing at epoch >= warmup (1-based > warmup)."""
        return epoch >= self.warmup and self.gamma > 0

    def perturbation(self, model: nn.Module, method: Method, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        """The layer-wise normalised ascent direction of `method.objective` at the current weights."""
        if self._proxy is None:
            self._proxy = copy.deepcopy(model)
        proxy = self._proxy
        proxy.load_state_dict(model.state_dict())
        proxy.train()
        names = perturbed_names(proxy)
        params = dict(proxy.named_parameters())
        with autocast_ctx(ctx):
            loss, _ = method.objective(proxy, batch, ctx)
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        own = dict(model.named_parameters())
        diff: dict[str, torch.Tensor] = {}
        for name, g in zip(names, grads):
            if g is None:
                continue
            w = own[name].detach()
            diff[name] = g.float() * (w.norm() / (g.float().norm() + 1e-20))
        return diff

    @torch.no_grad()
    def apply(self, model: nn.Module, diff: dict[str, torch.Tensor], sign: float) -> None:
        """w += sign * gamma * diff for the perturbed weights (sign -1 restores)."""
        own = dict(model.named_parameters())
        for name, d in diff.items():
            own[name].add_(d.to(own[name].dtype), alpha=sign * self.gamma)

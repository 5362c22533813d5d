"""Tiny control models on digits for the audit tests: one honest CNN and known-masked variants.

Imported by the audit tests (no conftest fixtures), cached per process so each module trains once.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from maskcheck.data import load_dataset
from maskcheck.models import build_model


@functools.lru_cache(maxsize=None)
def digits():
    return load_dataset("digits")


@functools.lru_cache(maxsize=None)
def honest_cnn(temperature: float = 1.0, epochs: int = 8, seed: int = 0) -> nn.Module:
    """small-cnn trained naturally on digits (a few seconds on 2 CPU cores).

    With `temperature` T the logits are divided by T while training and not at test time,
    which scales them by about T: the defensive-distillation (dd) failure mode.
    """
    torch.manual_seed(seed)
    splits = digits()
    x, y = splits.train.tensors
    model = build_model("small-cnn", splits.info)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            b = perm[i : i + 64]
            loss = F.cross_entropy(model(x[b]) / temperature, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


class Scaled(nn.Module):
    """Logits x factor: saturates softmax in float32."""

    def __init__(self, net: nn.Module, factor: float = 1e4) -> None:
        super().__init__()
        self.net, self.factor = net, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.factor


class Quantized(nn.Module):
    """Input rounded to `levels` grey levels with torch.round: non-differentiable, zero gradients."""

    def __init__(self, net: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.net, self.levels = net, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * self.levels) / self.levels)


class Noisy(nn.Module):
    """Gaussian noise on the input at inference: a randomised defense."""

    def __init__(self, net: nn.Module, sigma: float = 0.1) -> None:
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


class _ZeroGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return torch.zeros_like(grad)


class GradientKiller(nn.Module):
    """Identity forward, zero backward (fra31/auto-attack#43)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_ZeroGrad.apply(x))


class Detached(nn.Module):
    """Preprocessing detached from the graph: the output has no gradient path to the input."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.detach())


MASKED = {
    "scaled-logits": (Scaled, "logit-magnitude", "saturated logits"),
    "rounded-input": (Quantized, "gradient-health", "vanishing gradients"),
    "noisy": (Noisy, "autoattack-flags", "randomness"),
    "gradient-killer": (GradientKiller, "gradient-health", "vanishing gradients"),
    "detached": (Detached, "gradient-health", "gradients unavailable"),
}

"""Known-masked control models: wrappers around an honest classifier that hide its gradients.

A masking check is only trusted if it flags these and leaves the honest model alone (the
"tiny masked fixtures" of ../shared/reference/diagnostics.md, section (d)). Each wrapper
reproduces one mechanism of Athalye et al. (2018) or defensive distillation, keeps the
wrapped model's predictions (except the randomised ones, by design) and is TorchScript-able, so
the CI regression stage can hand it to `maskcheck audit` as a foreign model file.

| name      | mechanism                     | how                                             |
| --------- | ----------------------------- | ----------------------------------------------- |
| scaled    | saturated logits              | logits x 1e4 (advertorch#63; C&W on distillation) |
| offset    | logit offset (float32 resolution) | 1e6 added to every logit: margins lost to rounding (advertorch#63) |
| quantised | vanishing gradients (rounding) | input rounded to a few grey levels (BPDA case)  |
| random-gradients | randomness              | per-draw random-sign gradient term, value 0: one draw misleads, EOT cancels it (EOT case) |
| noisy     | - (randomised, not masking)   | Gaussian noise on the input at inference: single-draw PGD breaks what EOT breaks, so it is not in `EXPECTED`; audited with `--eot 1` it is masked (no EOT, no figure to vouch for) |
| zero-grad | vanishing gradients           | a layer whose backward is exactly zero (auto-attack#43) |
| detached  | gradients unavailable         | the input is detached before the network        |
"""

from __future__ import annotations

import torch
from torch import nn

from .attacks import Rescaled


class ScaledLogits(Rescaled):
    """Multiplies the logits by `scale` (the audit's own `Rescaled`, at a saturating default):
    same argmax, softmax saturated in float32."""

    def __init__(self, model: nn.Module, scale: float = 1e4) -> None:
        super().__init__(model, scale)


class OffsetLogits(nn.Module):
    """Adds a large constant to every logit: same argmax and margins, float32 resolution lost (advertorch#63)."""

    def __init__(self, model: nn.Module, offset: float = 1e6) -> None:
        super().__init__()
        self.model = model
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.offset


class QuantisedInput(nn.Module):
    """Rounds the input to `levels` + 1 grey levels; torch.round has a zero gradient almost everywhere."""

    def __init__(self, model: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.model = model
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * self.levels) / self.levels)


class NoisyInput(nn.Module):
    """Adds fresh Gaussian noise to every forward pass: a randomised defense."""

    def __init__(self, model: nn.Module, sigma: float = 0.1) -> None:
        super().__init__()
        self.model = model
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x + self.sigma * torch.randn_like(x)).clamp(0.0, 1.0))


class RandomGradientTrap(nn.Module):
    """A randomised defense whose randomness misleads single-draw gradients: each forward pass adds tiny logit
    noise and a term whose value is 0 but whose input gradient is +-`scale` on the first logit, with a random
    sign per draw. One draw's gradient points nowhere; the EOT average cancels the term (the EOT case of
    Athalye et al. 2018, reduced to its signature). Same predictions as the wrapped model."""

    def __init__(self, model: nn.Module, scale: float = 50.0) -> None:
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        sign = (torch.rand(x.shape[0], 1, device=x.device) < 0.5).to(logits.dtype) * 2 - 1
        trap = self.scale * sign * (x - x.detach()).flatten(1).sum(1, keepdim=True)  # 0 forward, +-scale backward
        first = torch.zeros_like(logits)
        first[:, 0] = 1.0
        return logits + 1e-3 * torch.randn_like(logits) + trap * first


class ZeroGradient(nn.Module):
    """Forward is the identity on x; backward is exactly zero (x.detach() + 0 * x)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.detach() + 0.0 * x)


class DetachedInput(nn.Module):
    """Cuts the graph: the output has no gradient path to the input at all."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.detach())


CONTROLS: dict[str, type[nn.Module]] = {
    "scaled": ScaledLogits,
    "offset": OffsetLogits,
    "quantised": QuantisedInput,
    "noisy": NoisyInput,
    "random-gradients": RandomGradientTrap,
    "zero-grad": ZeroGradient,
    "detached": DetachedInput,
}

# The check that must flag each control, and the mechanism it must name. Rounding shows up as
# exactly-zero input gradients (gradient-health), the same signature as the zero-gradient layer.
# `noisy` is not here: Gaussian input noise does not mislead a single-draw attack that keeps pushing (measured
# 2026-12-07: single-draw and EOT PGD-CE both leave 0% on digits), so it is a randomised model, not a masked one.
EXPECTED: dict[str, tuple[str, str]] = {
    "scaled": ("logit-magnitude", "saturated logits"),
    "offset": ("logit-magnitude", "logit offset (float32 resolution)"),
    "quantised": ("gradient-health", "vanishing gradients"),
    "random-gradients": ("autoattack-flags", "randomness"),
    "zero-grad": ("gradient-health", "vanishing gradients"),
    "detached": ("gradient-health", "gradients unavailable"),
}


def make_control(name: str, model: nn.Module) -> nn.Module:
    """Wrap an honest `model` (in eval mode) in the named masking control."""
    try:
        wrapper = CONTROLS[name]
    except KeyError:
        raise ValueError(f"unknown control {name!r}; valid: {', '.join(CONTROLS)}") from None
    return wrapper(model).eval()

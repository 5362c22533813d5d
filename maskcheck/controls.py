"""Known-masked control models: wrappers around an honest classifier that hide its gradients.

A masking check is only trusted if it flags these and leaves the honest model alone (the
"tiny masked fixtures" of ../shared/reference/diagnostics.md, section (d)). Each wrapper
reproduces one mechanism of Athalye et al. (2018) or defensive distillation, keeps the
wrapped model's predictions (except `noisy`, by design) and is TorchScript-able, so the CI
regression stage can hand it to `maskcheck audit` as a foreign model file.

| name      | mechanism                     | how                                             |
| --------- | ----------------------------- | ----------------------------------------------- |
| scaled    | saturated logits              | logits x 1e4 (advertorch#63; C&W on distillation) |
| offset    | logit offset (float32 resolution) | 1e6 added to every logit: margins lost to rounding (advertorch#63) |
| quantised | vanishing gradients (rounding) | input rounded to a few grey levels (BPDA case)  |
| noisy     | randomness                    | Gaussian noise on the input at inference (EOT case) |
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
    "zero-grad": ZeroGradient,
    "detached": DetachedInput,
}

# The check that must flag each control, and the mechanism it must name. Rounding shows up as
# exactly-zero input gradients (gradient-health), the same signature as the zero-gradient layer.
EXPECTED: dict[str, tuple[str, str]] = {
    "scaled": ("logit-magnitude", "saturated logits"),
    "offset": ("logit-magnitude", "logit offset (float32 resolution)"),
    "quantised": ("gradient-health", "vanishing gradients"),
    "noisy": ("autoattack-flags", "randomness"),
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

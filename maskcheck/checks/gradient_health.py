"""Input-gradient health: exact zeros, NaN and Inf in the gradients attacks rely on."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import attacks
from ..results import CheckResult, PlotData, Severity
from .base import Check, finite_list, register


@register
@dataclass(frozen=True)
class GradientHealth(Check):
    """Flags when >= `fail_fraction` of per-example input gradients are exactly zero, NaN or Inf,
    or when the input has no gradient path at all.

    L1 norms of the CE and margin-loss gradients at the clean points and at a random start in the
    ball. Zeros under CE only mean saturated logits; zeros under the margin loss too mean the
    gradient is blocked (a non-differentiable step such as rounding, or a layer that zeroes it).
    Reference: AutoAttack checks.check_zero_gradients (exact 0 of ||g||_1); ART
    loss_gradient_check; IoAF "unavailable gradients"; thresholds from diagnostics.md row 3.
    Skipped on a model that predicts one class for every point (a dead network has zero gradients
    honestly).
    """

    fail_fraction: float = 0.01

    name = "gradient-health"
    order = 70
    mechanism = "vanishing gradients"
    skips_one_class_models = True
    remedy = "use BPDA for non-differentiable steps, a margin loss for saturation, or Square"

    def evaluate(self, ctx) -> CheckResult:
        if not ctx.grad_ok:
            return self.result(ctx, severity=Severity.FAIL, mechanism="gradients unavailable",
                               evidence={"gradient_error": ctx.gradient_error}, summary=(
                "the model output has no gradient path to the input (detached or non-differentiable preprocessing): "
                "gradient attacks cannot run; use BPDA."))
        gen = ctx.gen(self.name)
        norms: dict[str, torch.Tensor] = {}
        with ctx.timed("gradients"):
            for where in ("clean", "start"):
                for loss in ("ce", "margin"):
                    parts = []
                    for i in range(0, ctx.n, ctx.batch_size):
                        xb, yb = ctx.x[i : i + ctx.batch_size], ctx.y[i : i + ctx.batch_size]
                        if where == "start":
                            xb = attacks.random_start(xb, ctx.eps, ctx.norm, gen)
                        _, g = attacks.input_grad(ctx.attack_model, xb, yb, attacks.LOSSES[loss])
                        parts.append(g.flatten(1).abs().sum(1).cpu())
                    norms[f"{loss}@{where}"] = torch.cat(parts)
        zero = {k: float((v == 0).float().mean()) for k, v in norms.items()}
        bad = {k: float((~torch.isfinite(v)).float().mean()) for k, v in norms.items()}
        ev = {**{f"zero_fraction_{k}": v for k, v in zero.items()}, **{f"nonfinite_fraction_{k}": v for k, v in bad.items()},
              **{f"median_norm_{k}": float(v[torch.isfinite(v)].median()) if torch.isfinite(v).any() else None for k, v in norms.items()}}
        plot = PlotData("histogram", "Input-gradient L1 norms (log10; exact zeros at -30)",
                        {k: finite_list(v.clamp_min(1e-30).log10()) for k, v in norms.items()},
                        xlabel="log10 ||grad||_1", ylabel="points")
        margin_zero = max(zero["margin@clean"], zero["margin@start"])
        ce_zero = max(zero["ce@clean"], zero["ce@start"])
        nonfinite = max(bad.values())
        if nonfinite >= self.fail_fraction:
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, plots=[plot], mechanism="numerical instability",
                               summary=f"{100 * nonfinite:.0f}% of input gradients are NaN or Inf; fix the model's numerics or use Square.")
        if margin_zero >= self.fail_fraction:
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, plots=[plot], summary=(
                f"{100 * margin_zero:.0f}% of input gradients are exactly zero even for the margin loss: the gradient is "
                "blocked (non-differentiable step or zeroing layer); use BPDA, or Square."))
        if ce_zero >= self.fail_fraction:
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, plots=[plot], mechanism="saturated logits", summary=(
                f"{100 * ce_zero:.0f}% of cross-entropy input gradients are exactly zero while margin-loss gradients are not: "
                "the softmax saturates; attack with a margin or DLR loss."))
        worst = max(max(zero.values()), nonfinite)
        return self.result(ctx, severity=Severity.OK, evidence=ev, plots=[plot], summary=(
            f"input gradients are healthy ({100 * worst:.1f}% zero or non-finite, below {100 * self.fail_fraction:.0f}%)."))

"""Athalye et al. 2018, rule 3: an unbounded attack must reach 100% success."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..results import CheckResult, PlotData, Severity
from .base import Check, register


@register
@dataclass(frozen=True)
class UnboundedAttack(Check):
    """Flags when an attack with an unbounded budget leaves correctly classified points unbroken.

    PGD with the margin loss over the whole input box (Linf eps 1, L2 eps sqrt(d)); the points it
    leaves standing get foolbox's minimal-norm attack (FMN, Pintor et al. 2021, unbounded).
    Why: any classifier can be fooled by replacing the image; failure means the attack cannot
    follow the gradients. Reference: Athalye et al. 2018 rule 3; Carlini et al. 2019; IoAF
    "unconstrained attack failure" (> 0 is a failure).
    """

    max_unbroken_fraction: float = 0.0
    pgd_steps: int = 100
    fmn_steps: int = 100

    name = "unbounded-attack"
    mechanism = "vanishing gradients"
    remedy = "use BPDA for non-differentiable steps or a margin loss; check the attack follows the gradient"

    def evaluate(self, ctx) -> CheckResult:
        clean = ctx.clean_correct
        n_correct = int(clean.sum())
        if not ctx.grad_ok:
            return self.result(ctx, severity=Severity.FAIL, mechanism="gradients unavailable",
                               evidence={"correct_points": n_correct, "unbroken": n_correct, "unbroken_fraction": 1.0},
                               summary="no gradient reaches the input, so no unbounded gradient attack can run: use BPDA.")
        box = 1.0 if ctx.norm == "linf" else math.sqrt(ctx.x[0].numel())
        after_pgd = ctx.pgd_at(box, "margin", self.pgd_steps)
        after_fmn = self._fmn(ctx, after_pgd)
        unbroken = int(after_fmn.sum())
        frac = unbroken / n_correct if n_correct else 0.0
        counts = {"clean": n_correct, "after PGD (box)": int(after_pgd.sum()), "after FMN": unbroken}
        ev = {"correct_points": n_correct, "unbroken": unbroken, "unbroken_fraction": frac, "box_eps": box,
              "unbroken_after_pgd": counts["after PGD (box)"], "examples": after_fmn.nonzero().flatten().tolist()[:50]}
        plot = PlotData("bars", "Unbounded attack: points still correct", {"points": [float(v) for v in counts.values()]},
                        labels=list(counts), ylabel="points")
        if frac > self.max_unbroken_fraction:
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, plots=[plot], summary=(
                f"an unbounded attack leaves {unbroken} of {n_correct} correct points unbroken: the attack cannot "
                f"follow the gradients; {self.remedy}."))
        return self.result(ctx, severity=Severity.OK, evidence=ev, plots=[plot], summary=(
            f"the unbounded attack breaks all {n_correct} correctly classified points."))

    def _fmn(self, ctx, prior: torch.Tensor) -> torch.Tensor:
        """foolbox FMN (epsilons=None: unbounded minimal-norm) on the points PGD left standing."""
        import foolbox as fb

        fmodel = fb.PyTorchModel(ctx.attack_model, bounds=(0.0, 1.0), device=ctx.device)
        attack = (fb.attacks.LInfFMNAttack if ctx.norm == "linf" else fb.attacks.L2FMNAttack)(steps=self.fmn_steps)

        def run(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            _, _, success = attack(fmodel, xb, yb, epsilons=None)
            return ~success

        return ctx.on_points("fmn-unbounded", ctx.standing(prior), run, prior)

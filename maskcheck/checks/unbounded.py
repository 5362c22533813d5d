"""Athalye et al. 2018, rule 3: an unbounded attack must reach 100% success."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..results import CheckResult, PlotData, Severity
from .base import Check, excess, register


@register
@dataclass(frozen=True)
class UnboundedAttack(Check):
    """Flags when an attack with an unbounded budget leaves significantly many correct points unbroken.

    PGD with the margin loss over the whole input box (Linf eps 1, L2 eps sqrt(d)); the points it
    leaves standing get foolbox's minimal-norm attack (FMN, Pintor et al. 2021, unbounded).
    Flags when the unbroken fraction exceeds `null_rate` by an exact one-sided binomial test
    (p < `alpha`) and is at least `min_gap`: the same tolerance as the other checks, so one
    stubborn point out of 1,000 does not fail a model. Why: any classifier can be fooled by
    replacing the image; failure means the attack cannot follow the gradients. Reference:
    Athalye et al. 2018 rule 3; Carlini et al. 2019; IoAF "unconstrained attack failure";
    AutoAttack's 0.2 pp tolerance (checks.check_square_sr). Skipped on a model that predicts one class
    for every point (a collapsed network: where that class wins everywhere nothing can fool it, and
    there is no robustness claim to be illusory).
    """

    null_rate: float = 0.002
    min_gap: float = 0.002
    alpha: float = 0.01
    pgd_steps: int = 100
    fmn_steps: int = 100

    name = "unbounded-attack"
    order = 40
    mechanism = "vanishing gradients"
    skips_one_class_models = True
    remedy = "use BPDA for non-differentiable steps or a margin loss; check the attack follows the gradient"

    def _specs(self, x_numel: int, norm: str):
        from ..attacks import AttackSpec

        box = 1.0 if norm == "linf" else math.sqrt(x_numel)
        pgd = AttackSpec("pgd", "margin", self.pgd_steps, eps=box, white_box=False)
        return pgd, AttackSpec("fmn", "none", self.fmn_steps, eps=box, after=(pgd,), white_box=False)

    def follow_up(self, ctx):
        """The box size depends on the input shape, known once the points are: a follow-up, declared."""
        return self._specs(ctx.x[0].numel(), ctx.norm) if ctx.grad_ok else ()

    def evaluate(self, ctx) -> CheckResult:
        clean = ctx.clean_correct
        n_correct = int(clean.sum())
        if not ctx.grad_ok:
            return self.result(ctx, severity=Severity.FAIL, mechanism="gradients unavailable",
                               evidence={"correct_points": n_correct, "unbroken": n_correct, "unbroken_fraction": 1.0},
                               summary="no gradient reaches the input, so no unbounded gradient attack can run: use BPDA.")
        pgd, fmn = self._specs(ctx.x[0].numel(), ctx.norm)
        after_pgd, after_fmn = ctx.correct(pgd), ctx.correct(fmn)
        unbroken = int(after_fmn.sum())
        e = excess(unbroken, n_correct, self.null_rate, after_fmn.nonzero().flatten().tolist()[:50])
        counts = {"clean": n_correct, "after PGD (box)": int(after_pgd.sum()), "after FMN": unbroken}
        ev = {"correct_points": n_correct, "unbroken": unbroken, "unbroken_fraction": e.gap, "p_value": e.p_value,
              "box_eps": pgd.eps, "unbroken_after_pgd": counts["after PGD (box)"], "examples": e.examples}
        plot = PlotData("bars", "Unbounded attack: points still correct", {"points": [float(v) for v in counts.values()]},
                        labels=list(counts), ylabel="points")
        if e.significant(self.min_gap, self.alpha):
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, plots=[plot], summary=(
                f"an unbounded attack leaves {unbroken} of {n_correct} correct points unbroken (p={e.p_value:.2g}): the attack "
                f"cannot follow the gradients; {self.remedy}."))
        if unbroken:
            return self.result(ctx, severity=Severity.OK, evidence=ev, plots=[plot], summary=(
                f"the unbounded attack breaks all but {unbroken} of {n_correct} correct points, within tolerance (p={e.p_value:.2g})."))
        return self.result(ctx, severity=Severity.OK, evidence=ev, plots=[plot], summary=(
            f"the unbounded attack breaks all {n_correct} correctly classified points."))

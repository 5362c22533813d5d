"""Athalye et al. 2018, rule 1: a one-step attack must not beat the iterative ones."""

from __future__ import annotations

from dataclasses import dataclass

from ..results import CheckResult, PlotData, Severity
from .base import Check, extra_breaks, pp, register


@register
@dataclass(frozen=True)
class OneStepVsIterative(Check):
    """Flags when FGSM breaks significantly more points than every iterative attack left standing.

    Why: an iterative attack that starts where FGSM does should never do worse; if it does, its
    steps are misled by a shattered or noisy loss surface. Reference: Athalye, Carlini & Wagner
    2018, Sec. 3.1 rule 1; AutoAttack's 0.2 pp tolerance (checks.check_square_sr, alpha=.002).
    """

    null_rate: float = 0.002
    min_gap: float = 0.002
    alpha: float = 0.01

    name = "one-step-vs-iterative"
    order = 10
    mechanism = "shattered gradients"
    remedy = "use BPDA for non-differentiable steps and more iterations/restarts"
    needs_gradients = True

    def needs(self, cfg, bat):
        return (bat.fgsm, *self._iterative(bat))

    @staticmethod
    def _iterative(bat):
        return tuple(s for s in bat.white_box if s != bat.fgsm)

    def evaluate(self, ctx) -> CheckResult:
        fgsm, iterative = ctx.correct(ctx.battery.fgsm), ctx.prior(self._iterative(ctx.battery))
        e = extra_breaks(fgsm, iterative, ctx.n, self.null_rate)
        acc_f, acc_i = float(fgsm.float().mean()), float(iterative.float().mean())
        ev = {"fgsm_acc": acc_f, "iterative_acc": acc_i, "fgsm_only_breaks": e.count, "gap": e.gap, "p_value": e.p_value,
              "examples": e.examples, "headline": f"FGSM beats the iterative attacks by {pp(e.gap)}"}
        plot = PlotData("bars", "Robust accuracy: one step vs iterative", {"robust accuracy": [acc_f, acc_i]},
                        labels=["FGSM", "iterative (PGD, APGD)"], ylabel="accuracy")
        if e.significant(self.min_gap, self.alpha):
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, plots=[plot], summary=(
                f"FGSM breaks {e.count} points ({pp(e.gap)}) that the iterative attacks missed (p={e.p_value:.2g}): "
                f"the loss surface misleads iterative steps; {self.remedy}."))
        return self.result(ctx, severity=Severity.OK, evidence=ev, plots=[plot], summary=(
            f"FGSM breaks {e.count} point(s) the iterative attacks missed, within chance (p={e.p_value:.2g})."))

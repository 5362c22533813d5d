"""Athalye et al. 2018, rule 4: random noise must not find what gradients missed."""

from __future__ import annotations

from dataclasses import dataclass

from ..results import CheckResult, Severity
from .base import Check, extra_breaks, pp, register


@register
@dataclass(frozen=True)
class RandomSampling(Check):
    """Flags when uniform noise in the eps-ball breaks significantly more points than the white-box attacks.

    foolbox's repeated additive uniform noise (`repeats` draws per point, batched) on at most
    `max_points` white-box survivors. Why: if blind sampling beats gradient ascent, the gradient
    points the wrong way. Reference: Athalye et al. 2018 rule 4; Carlini et al. 2019 (10,000+
    draws; diagnostics.md suggests 1,000 on <= 100 examples, configurable).
    """

    repeats: int = 1000
    max_points: int = 100
    null_rate: float = 0.002
    min_gap: float = 0.002
    alpha: float = 0.01

    name = "random-sampling"
    mechanism = "gradients point the wrong way"
    remedy = "use BPDA for non-differentiable steps or EOT for randomness"

    def _noise(self, bat):
        from ..attacks import AttackSpec

        return AttackSpec("noise", "none", 0, after=bat.white_box, queries=self.repeats, max_points=self.max_points,
                          white_box=False)

    def needs(self, cfg, bat):
        return (*bat.white_box, self._noise(bat))

    def evaluate(self, ctx) -> CheckResult:
        wb = ctx.white_box
        noise = ctx.correct(self._noise(ctx.battery))
        e = extra_breaks(noise, wb, ctx.n, self.null_rate)
        ev = {"points_sampled": min(int(wb.sum()), self.max_points), "noise_only_breaks": e.count, "gap": e.gap,
              "p_value": e.p_value, "examples": e.examples, "headline": f"random noise beats the white-box attacks by {pp(e.gap)}"}
        mech = "gradients unavailable" if not ctx.grad_ok else None
        if e.significant(self.min_gap, self.alpha):
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, mechanism=mech, summary=(
                f"random noise breaks {e.count} points ({pp(e.gap)}) the white-box attacks missed (p={e.p_value:.2g}); "
                f"{self.remedy}."))
        return self.result(ctx, severity=Severity.OK, evidence=ev, summary=(
            f"random noise breaks {e.count} point(s) the white-box attacks missed, within chance."))

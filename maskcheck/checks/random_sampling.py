"""Athalye et al. 2018, rule 4: random noise must not find what gradients missed."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError
from ..results import CheckResult, Severity
from .base import Check, extra_breaks, pp, register


@register
@dataclass(frozen=True)
class RandomSampling(Check):
    """Flags when uniform noise in the eps-ball breaks significantly more points than the white-box attacks.

    foolbox's repeated additive uniform noise (draws per point, batched) on at most `max_points`
    white-box survivors. Why: if blind sampling beats gradient ascent, the gradient points the
    wrong way. Reference: Athalye et al. 2018 rule 4; Carlini et al. 2019 (10,000+ draws;
    diagnostics.md suggests 1,000 on <= 100 examples).
    Draws per point: as many as the binomial power needs, not a fixed 1,000 (issue 23). A point
    counts as noise-breakable when at least `tolerance` of its eps-ball is misclassified; R draws
    miss such a point with probability (1 - tolerance)^R, so R = ln(alpha) / ln(1 - tolerance)
    draws find it with probability 1 - alpha, the check's own significance level: 459 draws at
    tolerance 1% (ours) and alpha 0.01, where the former 1,000 bought tolerance 0.46% at twice
    the cost. The rule asks whether blind noise finds easily what gradients missed; the calibration
    matrix runs this check at 100 draws (tolerance 4.5%) and grades every control and sound model
    right. `repeats` set explicitly overrides the sizing (quick tests).
    """

    repeats: int | None = None
    tolerance: float = 0.01
    max_points: int = 100
    null_rate: float = 0.002
    min_gap: float = 0.002
    alpha: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 < self.tolerance < 1.0 or not 0.0 < self.alpha < 1.0:
            raise InputError(f"random-sampling: tolerance and alpha must lie in (0, 1); got {self.tolerance!r}, {self.alpha!r}.")
        if self.repeats is not None and (isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1):
            raise InputError(f"random-sampling: repeats must be a positive integer or None; got {self.repeats!r}.")

    name = "random-sampling"
    order = 50
    mechanism = "gradients point the wrong way"
    remedy = "use BPDA for non-differentiable steps or EOT for randomness"

    @property
    def draws(self) -> int:
        """Draws per point: `repeats` when set, else ln(alpha) / ln(1 - tolerance) (the class docstring)."""
        if self.repeats is not None:
            return self.repeats
        return math.ceil(math.log(self.alpha) / math.log1p(-self.tolerance))

    def _noise(self, bat):
        from ..attacks import AttackSpec

        return AttackSpec("noise", "none", 0, after=bat.white_box, queries=self.draws, max_points=self.max_points,
                          white_box=False)

    def needs(self, cfg, bat):
        return (*bat.white_box, self._noise(bat))

    def evaluate(self, ctx) -> CheckResult:
        wb = ctx.white_box
        noise = ctx.correct(self._noise(ctx.battery))
        e = extra_breaks(noise, wb, ctx.n, self.null_rate)
        ev = {"points_sampled": min(int(wb.sum()), self.max_points), "draws_per_point": self.draws, "noise_only_breaks": e.count, "gap": e.gap,
              "p_value": e.p_value, "examples": e.examples, "headline": f"random noise beats the white-box attacks by {pp(e.gap)}"}
        mech = "gradients unavailable" if not ctx.grad_ok else None
        if e.significant(self.min_gap, self.alpha):
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, mechanism=mech, summary=(
                f"random noise breaks {e.count} points ({pp(e.gap)}) the white-box attacks missed (p={e.p_value:.2g}); "
                f"{self.remedy}."))
        return self.result(ctx, severity=Severity.OK, evidence=ev, summary=(
            f"random noise breaks {e.count} point(s) the white-box attacks missed, within chance."))

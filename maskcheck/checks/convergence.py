"""Attack convergence: loss curves that still climb, and results that move when steps double."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..results import CheckResult, PlotData, Severity
from .base import Check, extra_breaks, pp, quantile_curves, register


def incomplete_fraction(history: torch.Tensor, standing: torch.Tensor, last: int, tol: float) -> float:
    """IoAF "incomplete optimisation": on each standing point's loss path, rescaled to [0, 1] and
    replaced by its running max (the attacker maximises), the last `last` values still rise by > tol."""
    h = history[:, standing]
    if h.shape[1] == 0:
        return 0.0
    h = torch.nan_to_num(h.double(), nan=0.0, posinf=1e30, neginf=-1e30)
    lo, hi = h.min(0).values, h.max(0).values
    scaled = (h - lo) / (hi - lo).clamp_min(1e-12)
    # IoAF looks at the last 10 of its (100+) steps, i.e. the last tenth of the path; on a short
    # 20-step PGD the last 10 values are half the path and still rise on any sound model.
    window = min(last, max(2, round(0.1 * len(h))))
    run = scaled.cummax(0).values[-window:]
    return float(((run.max(0).values - run.min(0).values) > tol).double().mean())


@register
@dataclass(frozen=True)
class AttackConvergence(Check):
    """Flags when doubling the PGD steps breaks significantly more points than every white-box attack
    together (CE or margin loss): the reported number would move with more steps.

    Also reports IoAF's incomplete-optimisation fraction over the standing points (a warning when
    above `warn_incomplete` and the rising points are at least `warn_min_share` of all audited
    points: one of three points left standing on a natural model is not a finding) and the loss
    curves (mean, 10/50/90% quantiles). Reference: Carlini et al. 2019 (doubling test); Pintor et
    al. 2022, IoAF indicators.py (last 10 steps, 0.05); `warn_min_share` is ours (the digits
    sweep's natural and low-T dd models were graded attack-sensitive on 1-2 rising points).
    """

    last_steps: int = 10
    tol: float = 0.05
    warn_incomplete: float = 0.1
    warn_min_share: float = 0.01
    null_rate: float = 0.002
    min_gap: float = 0.02
    alpha: float = 0.01

    name = "attack-convergence"
    order = 90
    mechanism = "attack not converged"
    remedy = "run more steps and restarts (APGD), and report the stronger result"
    needs_gradients = True

    @staticmethod
    def _pairs(bat):
        """(loss, the PGD run, the same PGD with twice the steps on the white-box survivors)."""
        from ..attacks import AttackSpec

        return [(loss, run, AttackSpec("pgd", loss, 2 * run.steps, after=bat.white_box, white_box=False))
                for loss, run in (("ce", bat.pgd_ce), ("margin", bat.pgd_margin))]

    def needs(self, cfg, bat):
        return tuple(s for _, run, doubled in self._pairs(bat) for s in (run, doubled))

    def warns(self, incomplete: float, rising: int, n: int) -> bool:
        """Loss curves still climbing on enough standing points to matter for the reported number."""
        return incomplete > self.warn_incomplete and rising >= self.warn_min_share * n

    def evaluate(self, ctx) -> CheckResult:
        ev: dict = {}
        curves: dict[str, list[float]] = {}
        worst = None
        for loss, spec, doubled_spec in self._pairs(ctx.battery):
            run = ctx.outcome(spec)
            doubled = ctx.correct(doubled_spec)
            e = extra_breaks(doubled, ctx.white_box, ctx.n, self.null_rate)
            hist = run.history
            standing = run.correct[run.attacked]  # history covers the attacked (clean-correct) points
            inc = incomplete_fraction(hist, standing, self.last_steps, self.tol) if hist is not None else 0.0
            ev.update({f"doubling_extra_breaks_{loss}": e.count, f"doubling_p_value_{loss}": e.p_value,
                       f"incomplete_fraction_{loss}": inc, f"rising_points_{loss}": round(inc * int(standing.sum()))})
            if hist is not None and hist.shape[1]:
                curves.update(quantile_curves(hist, loss))
            if worst is None or e.gap > worst[1].gap:
                worst = (loss, e)
        loss, e = worst
        ev.update(gap=e.gap, headline=f"doubling the PGD-{loss} steps breaks {pp(e.gap)} more")
        steps = len(next(iter(curves.values()))) - 1 if curves else 0
        plot = PlotData("curve", "Attack loss per iteration", curves, x=list(range(steps + 1)), xlabel="iteration", ylabel="loss")
        if e.significant(self.min_gap, self.alpha):
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, plots=[plot], summary=(
                f"doubling the PGD-{loss} steps breaks {e.count} more points ({pp(e.gap)}, p={e.p_value:.2g}): "
                f"the attack has not converged; {self.remedy}."))
        inc = max(ev["incomplete_fraction_ce"], ev["incomplete_fraction_margin"])
        rising = max(ev["rising_points_ce"], ev["rising_points_margin"])
        if self.warns(inc, rising, ctx.n):
            return self.result(ctx, severity=Severity.WARN, evidence=ev, plots=[plot], mechanism="attack not converged", summary=(
                f"the loss still rises at the end for {100 * inc:.0f}% of standing points; more steps may help."))
        return self.result(ctx, severity=Severity.OK, evidence=ev, plots=[plot], summary=(
            "the attacks converge: doubling the steps changes nothing significant."))

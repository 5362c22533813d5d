"""Athalye et al. 2018, rule 5: accuracy must fall as the budget grows."""

from __future__ import annotations

from dataclasses import dataclass

from scipy.stats import binomtest

from ..results import CheckResult, PlotData, Severity
from .base import Check, extra_breaks, register


@register
@dataclass(frozen=True)
class DistortionSweep(Check):
    """Flags when accuracy rises with eps, or stays significantly above chance at a large eps.

    PGD (`steps`) with the margin loss at eps x `factors` (capped at the input box) plus Linf 0.5. Rising:
    points broken at a smaller eps that stand at the next larger one (exact binomial test over the
    0.2 pp tolerance). Above chance: accuracy at the largest eps vs 1/K (binomial test, and at
    least `min_gap` above). Reference: Athalye et al. 2018 rule 5; Carlini et al. 2019 (Linf 0.5
    should reach chance); grid from diagnostics.md row 11.
    """

    factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    steps: int = 10  # the curve's shape, not its last decimal: half the main PGD's 20 steps
    large_linf_eps: float = 0.5
    null_rate: float = 0.002
    min_gap: float = 0.05
    alpha: float = 0.01

    name = "distortion-sweep"
    mechanism = "accuracy does not fall with eps"
    remedy = "use BPDA or a margin loss; the gradient attack is not working"

    def evaluate(self, ctx) -> CheckResult:
        if not ctx.grad_ok:
            return self.skipped(ctx, "no gradient path to the input (see gradient-health)")
        grid = {min(ctx.eps * f, 1.0) for f in self.factors}
        if ctx.norm == "linf":
            grid.add(self.large_linf_eps)
        grid = sorted(grid)
        correct = [ctx.pgd_margin["correct"] if abs(e - ctx.eps) < 1e-12 else ctx.pgd_at(e, "margin", self.steps) for e in grid]
        accs = [float(c.float().mean()) for c in correct]
        rises = [extra_breaks(small, large, ctx.n, self.null_rate) for small, large in zip(correct[:-1], correct[1:])]
        worst = max(rises, key=lambda r: r.count) if rises else None
        chance = 1.0 / ctx.num_classes
        last = int(correct[-1].sum())
        p_chance = float(binomtest(last, ctx.n, chance, alternative="greater").pvalue)
        ev = {"eps": grid, "accuracy": accs, "max_rise_count": worst.count if worst else 0,
              "max_rise_p_value": worst.p_value if worst else 1.0, "chance": chance, "largest_eps_acc": accs[-1],
              "p_value_above_chance": p_chance, "gap": max(accs[-1] - chance, 0.0),
              "headline": f"accuracy stays at {100 * accs[-1]:.0f}% at eps {grid[-1]:g}"}
        plot = PlotData("curve", "Accuracy vs eps (PGD, margin loss)", {"accuracy": accs}, x=grid, xlabel="eps", ylabel="accuracy")
        if worst and worst.significant(0.002, self.alpha):
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, plots=[plot], summary=(
                f"accuracy rises with eps ({worst.count} points broken at a smaller eps survive a larger one); {self.remedy}."))
        if accs[-1] - chance >= self.min_gap and p_chance < self.alpha:
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, plots=[plot], summary=(
                f"accuracy stays at {100 * accs[-1]:.0f}% at eps {grid[-1]:g}, above chance ({100 * chance:.0f}%); {self.remedy}."))
        return self.result(ctx, severity=Severity.OK, evidence=ev, plots=[plot], summary=(
            f"accuracy falls with eps to {100 * accs[-1]:.0f}% at eps {grid[-1]:g}."))

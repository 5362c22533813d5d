"""Athalye et al. 2018, rule 5: accuracy must fall as the budget grows."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.stats import binomtest

from ..results import CheckResult, PlotData, Severity
from .base import Check, mcnemar_greater, pp, register


@register
@dataclass(frozen=True)
class DistortionSweep(Check):
    """Flags when accuracy rises with eps, or stays significantly above chance at a large eps.

    The same PGD (margin loss, the audit's 20 steps, so eps itself reuses the main PGD-margin
    run) at eps x `factors` (capped at the input box) plus Linf 0.5. Rising: the accuracy at a
    larger eps exceeds the accuracy at a smaller one by at least `min_gap`, significant over the
    discordant points (exact McNemar test); a single point broken at a small eps and missed at a
    larger one is attack noise, not masking (the same perturbation is feasible), so per-point
    "rises" are not counted. The curve shown is cumulative (broken at eps => broken at every
    larger eps). Below the audit eps (eps/4, eps/2) the same test has its own verdict: PGD
    breaking significantly more at a radius below the audit eps than at the audit eps or above is
    masking confined beyond a small radius (mechanism "masking beyond a small radius"; the
    robustness the audit eps reports does not hold). Above chance: accuracy at the largest eps vs 1/K (binomial test, and at least
    `min_gap` above). Reference: Athalye et al. 2018 rule 5; Carlini et al. 2019 (Linf 0.5
    should reach chance); grid from diagnostics.md row 11; cumulative breaks from
    verdict-calibration-notes.md Q4. Thresholds are ours.
    """

    factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    steps: int = 20  # equal across the grid: the main PGD's steps
    large_linf_eps: float = 0.5
    min_gap: float = 0.05
    alpha: float = 0.01

    name = "distortion-sweep"
    order = 60
    mechanism = "accuracy does not fall with eps"
    remedy = "use BPDA or a margin loss; the gradient attack is not working"
    needs_gradients = True

    def _grid(self, eps: float, norm: str) -> list[float]:
        grid = {min(eps * f, 1.0) for f in self.factors}
        if norm == "linf":
            grid.add(self.large_linf_eps)
        return sorted(grid)

    def _spec(self, bat, e: float, eps: float):
        from ..attacks import AttackSpec

        if abs(e - eps) < 1e-12 and self.steps == bat.pgd_margin.steps:
            return bat.pgd_margin
        return AttackSpec("pgd", "margin", self.steps, eps=e, white_box=False)

    @staticmethod
    def _below(grid: list[float], correct: list[torch.Tensor], eps: float, n: int) -> tuple[float, float, tuple | None]:
        """The largest significant-or-not rise from a radius below the audit eps to the audit eps or
        above: (gap, exact McNemar p, (small eps, larger eps)) over the points standing at the larger."""
        best: tuple[float, float, tuple | None] = (0.0, 1.0, None)
        for i, lo in enumerate(grid):
            for j, hi in enumerate(grid):
                if lo < eps - 1e-12 and hi >= eps - 1e-12:
                    b = int((correct[j] & ~correct[i]).sum())
                    c = int((correct[i] & ~correct[j]).sum())
                    if (b - c) / n > best[0]:
                        best = ((b - c) / n, mcnemar_greater(b, c), (lo, hi))
        return best

    def needs(self, cfg, bat):
        return tuple(self._spec(bat, e, cfg.threat.eps) for e in self._grid(cfg.threat.eps, cfg.threat.norm))

    def evaluate(self, ctx) -> CheckResult:
        grid = self._grid(ctx.eps, ctx.norm)
        correct = [ctx.correct(self._spec(ctx.battery, e, ctx.eps)) for e in grid]
        accs = [float(c.float().mean()) for c in correct]
        cumulative = [float(torch.stack(correct[: i + 1]).all(0).float().mean()) for i in range(len(correct))]
        rise = (0.0, 1.0, None)  # (gap, p, (small eps, large eps))
        for i in range(len(grid)):
            for j in range(i + 1, len(grid)):
                b = int((correct[j] & ~correct[i]).sum())  # stand at the larger eps only
                c = int((correct[i] & ~correct[j]).sum())
                gap = (b - c) / ctx.n
                if gap > rise[0]:
                    rise = (gap, mcnemar_greater(b, c), (grid[i], grid[j]))
        chance = 1.0 / ctx.num_classes
        last = int(correct[-1].sum())
        p_chance = float(binomtest(last, ctx.n, chance, alternative="greater").pvalue)
        ev = {"eps": grid, "accuracy": accs, "cumulative_accuracy": cumulative, "max_rise": rise[0],
              "max_rise_p_value": rise[1], "max_rise_between": rise[2], "chance": chance, "largest_eps_acc": accs[-1],
              "p_value_above_chance": p_chance, "gap": max(accs[-1] - chance, 0.0),
              "headline": f"accuracy stays at {100 * accs[-1]:.0f}% at eps {grid[-1]:g}"}
        plot = PlotData("curve", "Accuracy vs eps (PGD, margin loss)", {"accuracy": accs, "cumulative": cumulative}, x=grid,
                        xlabel="eps", ylabel="accuracy")
        below = self._below(grid, correct, ctx.eps, ctx.n)
        ev.update({"below_eps_rise": below[0], "below_eps_rise_p_value": below[1], "below_eps_rise_between": below[2]})
        if below[0] >= self.min_gap and below[1] < self.alpha:  # its own verdict: the small radii
            lo, hi = below[2]
            ev.update(gap=below[0], headline=f"PGD breaks {pp(below[0])} more at eps {lo:g} than at {hi:g}")
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, plots=[plot], mechanism="masking beyond a small radius",
                               summary=(f"PGD at eps {lo:g}, below the audit's eps, breaks {pp(below[0])} more points than at "
                                        f"eps {hi:g} (p={below[1]:.2g}): the larger budget hides the gradient the smaller one "
                                        f"follows; quote no robustness above eps {lo:g}; {self.remedy}."))
        if rise[0] >= self.min_gap and rise[1] < self.alpha:
            ev.update(gap=rise[0], headline=f"accuracy rises by {pp(rise[0])} from eps {rise[2][0]:g} to {rise[2][1]:g}")
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, plots=[plot], summary=(
                f"accuracy rises with eps ({pp(rise[0])} higher at eps {rise[2][1]:g} than at {rise[2][0]:g}, "
                f"p={rise[1]:.2g}); {self.remedy}."))
        if accs[-1] - chance >= self.min_gap and p_chance < self.alpha:
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, plots=[plot], summary=(
                f"accuracy stays at {100 * accs[-1]:.0f}% at eps {grid[-1]:g}, above chance ({100 * chance:.0f}%); {self.remedy}."))
        return self.result(ctx, severity=Severity.OK, evidence=ev, plots=[plot], summary=(
            f"accuracy falls with eps to {100 * accs[-1]:.0f}% at eps {grid[-1]:g}."))

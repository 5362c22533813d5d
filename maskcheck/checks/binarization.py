"""Zimmermann et al. 2022: an attack that misses an adversarial example known to exist cannot be trusted."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import adaptive
from ..results import CheckResult, PlotData, Severity
from .base import Check, excess, register


@register
@dataclass(frozen=True)
class BinarizationTest(Check):
    """Flags when the audit's PGD misses a known adversarial example on a significant share of points.

    For each of at most `max_points` clean-correct points, a binary classifier is built on the
    model's logits: the clean point and `inner` random points of its eps-ball on one side, one
    random boundary point x* (a Linf vertex) on the other, by a linear readout (difference of means,
    bias halfway; ours). An adversarial example of the binarized model is known to exist (x*); PGD
    (the audit's 20 steps, CE, random start) attacks it from the clean point. The share of points
    where PGD fails is the attack's failure rate; it fails the check when significantly above
    `null_rate` (exact one-sided binomial test) and at least `fail_rate`. Points whose readout does
    not separate x* are not tested.
    Why: gradient masking (zero, shattered or random gradients) makes the attack miss adversarial
    examples that exist; this test builds one the attack must find. Reference: Zimmermann et al.
    2022, "Increasing Confidence in Adversarial Robustness Evaluations" (NeurIPS); thresholds ours.
    """

    max_points: int = 100
    inner: int = 16
    null_rate: float = 0.05  # ours: sound digits models miss a few readouts at the ball's vertices
    fail_rate: float = 0.2  # ours
    alpha: float = 0.01

    name = "binarization-test"
    order = 130
    mechanism = "attack failure (binarization test)"
    remedy = "the gradient attacks miss adversarial examples that exist: use BPDA, EOT, transfer or Square"
    needs_gradients = True
    skips_one_class_models = True

    def evaluate(self, ctx) -> CheckResult:
        idx = ctx.clean_correct.nonzero().flatten()[: self.max_points]
        if len(idx) == 0:
            return self.skipped(ctx, "no clean-correct point to test")
        gen = ctx.gen(self.name)
        valid, found = [], []
        with ctx.timed("binarization"):
            for i in range(0, len(idx), ctx.batch_size):
                b = idx[i:i + ctx.batch_size].to(ctx.device)
                r = adaptive.binarization_test(ctx.attack_model, ctx.x[b], eps=ctx.eps, norm=ctx.norm, gen=gen,
                                               inner=self.inner)
                valid.append(r["valid"])
                found.append(r["found"])
        v, f = torch.cat(valid), torch.cat(found)
        tested = int(v.sum())
        missed = v & ~f
        e = excess(int(missed.sum()), tested, self.null_rate, idx[missed].tolist()[:50])
        rate = e.gap
        ev = {"points": len(idx), "tested": tested, "missed": e.count, "failure_rate": rate, "p_value": e.p_value,
              "examples": e.examples}
        plot = PlotData("bars", "Binarization test: known adversarial example found?",
                        {"points": [tested - e.count, e.count]}, labels=["found", "missed"], ylabel="points")
        if tested == 0:
            return self.skipped(ctx, "no readout separated its known adversarial example")
        if e.p_value < self.alpha and rate >= self.fail_rate:
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, plots=[plot], summary=(
                f"PGD missed the known adversarial example on {e.count} of {tested} binarized points ({100 * rate:.0f}%, "
                f"p={e.p_value:.2g}): the attack cannot be trusted here; {self.remedy}."))
        return self.result(ctx, severity=Severity.OK, evidence=ev, plots=[plot], summary=(
            f"PGD found the known adversarial example on {tested - e.count} of {tested} binarized points "
            f"(failure rate {100 * rate:.0f}%)."))

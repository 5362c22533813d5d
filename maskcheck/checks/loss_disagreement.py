"""The same PGD with cross-entropy and with a margin loss: a large gap signals saturated softmax."""

from __future__ import annotations

from dataclasses import dataclass

from ..results import CheckResult, PlotData, Severity
from .base import Check, extra_breaks, mcnemar_greater, pp, register


@register
@dataclass(frozen=True)
class LossDisagreement(Check):
    """Flags when margin-loss attacks (PGD-margin, targeted APGD-DLR) break significantly more points
    than the cross-entropy attacks (PGD-CE, APGD-CE) left standing.

    The reference is the strong CE pair, not PGD-CE alone: a short PGD-CE trails APGD on sound
    adversarially trained models too (audit-design-notes.md, TRADES), and that is not saturation.
    Flags on an effect of at least `min_gap` that is also significant against a tolerance of
    `null_rate` (exact one-sided binomial test). The paired PGD-CE vs PGD-margin disagreement
    (exact McNemar) is reported as evidence. Why: CE gradients vanish when softmax saturates
    (defensive distillation, scaled logits) while margin/DLR losses are scale-invariant.
    Reference: Carlini & Wagner 2016 (1607.04311); Croce & Hein 2020 (DLR); measured dd T=100
    on MNIST: APGD-CE 57% vs APGD-T 0% (audit-design-notes.md). Thresholds are ours.
    """

    min_gap: float = 0.10  # ours: a weakly trained TRADES model on digits at eps 0.3 shows 6 pp, dd-like 69 pp
    null_rate: float = 0.02
    alpha: float = 0.01

    name = "loss-disagreement"
    # Not "saturated logits": the logit-magnitude check says whether saturation is the cause.
    mechanism = "CE/margin loss disagreement"
    remedy = "attack with a margin or DLR loss (APGD-T), or divide the logits by the temperature"

    def evaluate(self, ctx) -> CheckResult:
        if not ctx.grad_ok:
            return self.skipped(ctx, "no gradient path to the input (see gradient-health)")
        ce_pgd, mg_pgd = ctx.pgd_ce["correct"], ctx.pgd_margin["correct"]
        ce, margin = ctx.ce_white_box, mg_pgd & ctx.apgd_t
        e = extra_breaks(margin, ce, ctx.n, self.null_rate)
        b, c = int((~mg_pgd & ce_pgd).sum()), int((~ce_pgd & mg_pgd).sum())
        acc = {"PGD-CE": float(ce_pgd.float().mean()), "PGD-margin": float(mg_pgd.float().mean()),
               "PGD-CE + APGD-CE": float(ce.float().mean()), "all white-box": float(ctx.white_box.float().mean())}
        ev = {"margin_only_breaks": e.count, "gap": e.gap, "p_value": e.p_value, "examples": e.examples,
              "pgd_margin_only_breaks": b, "pgd_ce_only_breaks": c, "pgd_mcnemar_p_value": mcnemar_greater(b, c),
              **{f"acc_{k}": v for k, v in acc.items()}, "headline": f"margin loss beats cross-entropy by {pp(e.gap)}"}
        plot = PlotData("bars", "Cross-entropy vs margin loss", {"robust accuracy": list(acc.values())}, labels=list(acc), ylabel="accuracy")
        if e.gap >= self.min_gap and e.p_value < self.alpha:
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, plots=[plot], summary=(
                f"margin-loss attacks break {e.count} points ({pp(e.gap)}) that the cross-entropy attacks missed "
                f"(p={e.p_value:.2g}): cross-entropy gradients mislead the attack (saturated or flattened softmax; see logit-magnitude); {self.remedy}."))
        return self.result(ctx, severity=Severity.OK, evidence=ev, plots=[plot], summary=(
            f"margin-loss attacks add {pp(e.gap)} over the cross-entropy attacks, within tolerance (p={e.p_value:.2g})."))

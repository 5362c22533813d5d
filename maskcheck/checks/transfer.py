"""IoAF "transfer failure" (Pintor et al. 2022) and BPDA (Athalye et al. 2018): attacks through a distilled surrogate."""

from __future__ import annotations

from dataclasses import dataclass

from .. import adaptive
from ..results import CheckResult, PlotData, Severity
from .base import Check, extra_breaks, pp, register


@register
@dataclass(frozen=True)
class TransferAttack(Check):
    """Flags when attacks through a surrogate break significantly more points than the white-box battery.

    A smooth surrogate (a GELU MLP) is distilled from the audited model's own outputs on queries
    around the audited points (no gradient of the model), attacked with PGD-margin, and its points
    are scored on the model by an inference forward (transfer). When the cheap gradient probe finds
    >= 1% of the clean points' margin-loss gradients exactly zero or non-finite, or no gradient path,
    BPDA runs too (the model's forward, the surrogate's backward), as does `--bpda` when given.
    Each runs only on the points the white-box battery left standing, so every break it finds is
    one the white-box attacks missed; the exact binomial test against AutoAttack's tolerance
    (0.2 pp) decides, and a gap of at least `fail_gap` fails (a transfer attack from a weaker,
    distilled model should not beat gradients of the model itself). Below that a significant gap
    is a warning: quote the worst case, which includes these attacks.
    Why: a defense whose own gradients are useless (non-differentiable or shattered, k-WTA) is
    broken by transfer and BPDA while PGD stalls. Reference: Pintor et al. 2022 (IoAF, transfer
    failure); Athalye et al. 2018 (BPDA); Tramer et al. 2020. `fail_gap` and the surrogate are ours.
    """

    null_rate: float = 0.002
    min_gap: float = 0.002
    fail_gap: float = 0.03  # ours, as black-box-gap's
    alpha: float = 0.01

    name = "transfer-attack"
    order = 120
    mechanism = "gradients useless (transfer beats white-box)"
    remedy = "quote the worst case including transfer/BPDA; attack with BPDA (--bpda) or an adaptive attack"

    def _specs(self, cfg, bat):
        wb = bat.white_box
        return adaptive.transfer_spec(wb), *adaptive.bpda_specs(cfg, wb)

    def needs(self, cfg, bat):
        return (*bat.white_box, *self._specs(cfg, bat))

    def evaluate(self, ctx) -> CheckResult:
        wb = ctx.white_box
        specs = self._specs(ctx.config, ctx.battery)
        by = {("transfer" if s.kind == "transfer" else f"bpda-{s.loss}"): ctx.correct(s) for s in specs}
        probe = adaptive.gradient_probe(ctx)
        adaptive_correct = wb.clone()
        for c in by.values():
            adaptive_correct &= c
        per = {k: extra_breaks(c, wb, ctx.n, self.null_rate) for k, c in by.items()}
        total = extra_breaks(adaptive_correct, wb, ctx.n, self.null_rate)
        acc = {"white-box": float(wb.float().mean()), **{k: float(c.float().mean()) for k, c in by.items()},
               "white-box + adaptive": float(adaptive_correct.float().mean())}
        plot = PlotData("bars", "White-box vs surrogate attacks: robust accuracy", {"robust accuracy": list(acc.values())},
                        labels=list(acc), ylabel="accuracy")
        best = max(per, key=lambda k: per[k].count)
        ev = {"gap": total.gap, "p_value": total.p_value, "examples": total.examples,
              **{f"gap_{k}": e.gap for k, e in per.items()}, **{f"acc_{k}": v for k, v in acc.items()},
              "bpda_auto_ran": bool(probe.get("triggered")), "gradient_probe": probe}
        auto = ("BPDA through the surrogate and the inference forward's own gradient" if probe.get("gradient_mode_differs")
                else "BPDA through the surrogate")
        what = {"transfer": "transfer from the surrogate", "bpda-auto": auto}.get(best, f"BPDA ({ctx.config.bpda})")
        mech = self.mechanism if best == "transfer" else "gradients unavailable (BPDA beats white-box)"
        if total.significant(self.min_gap, self.alpha) and total.gap >= self.fail_gap:
            ev["headline"] = f"{what} beats the white-box attacks by {pp(total.gap)}"
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, plots=[plot], mechanism=mech, summary=(
                f"{what} breaks {total.count} points ({pp(total.gap)}) every white-box attack missed (p={total.p_value:.2g}): "
                f"the model's gradients are useless to attacks; {self.remedy}."))
        if total.significant(self.min_gap, self.alpha):
            return self.result(ctx, severity=Severity.WARN, evidence=ev, plots=[plot],
                               mechanism="surrogate attacks find points the gradient attacks miss", summary=(
                f"{what} breaks {total.count} points ({pp(total.gap)}) every white-box attack missed (p={total.p_value:.2g}), "
                f"below the {pp(self.fail_gap)} that signals masking: quote the worst case, which includes them."))
        return self.result(ctx, severity=Severity.OK, evidence=ev, plots=[plot], summary=(
            f"surrogate attacks add {total.count} break(s) over the white-box attacks, within chance (p={total.p_value:.2g})."))

"""Training-time masking as evidence: the inner attack stopped working, the audit's attacks did not.

The LTD paper (Chen & Lee, arXiv 2111.02331, Sec. 5.2) describes high-T masking as "the robust
accuracy in the training phase is almost 100%, but it cannot defend against stronger attacks":
the training loop's own attack (the inner maximisation) no longer finds adversarial examples,
while AutoAttack breaks the model. The training loop records that number per epoch in run.json
(`metrics.history[].train_robust_acc`, training.py); this check compares the final epoch's value
with the audit's worst-case accuracy.

The decision is the pure function `training_phase_gap` (history + worst-case accuracy + n), so
it can be tested without a model and applied to finished run folders (`evaluate_run_folder`,
which reads RUN/run.json and RUN/audit.json). `TrainingPhaseGap` is the thin Check around it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from scipy.stats import binom

from ..errors import InputError
from ..results import CheckResult, PlotData, Severity
from ..training import MIN_TRAIN_ROBUST
from .base import Check, pp, register

FAIL, WARN, OK, SKIP = "fail", "warn", "ok", "skip"

# Thresholds (ours, not from a paper). A sound adversarially trained model is less robust on
# held-out points under the audit's attacks than on its training batches under the weaker inner
# attack: robust generalisation gap plus attack-strength gap, about 10-25 pp on digits/MNIST
# (reports/*/data) and up to ~40 pp with CIFAR robust overfitting (Rice et al. 2020). Hence a
# wide margin (30 pp) and the held-out PGD accuracy of the same epoch as the tie-breaker below.
# MIN_TRAIN_ROBUST (0.9: the inner attack fools fewer than 10% of training points, "stopped working") is
# training.py's, where the live collapse warning uses it during training; this check reuses it.
MIN_GAP = 0.30  # training-phase minus worst-case accuracy beyond which the gap is not ordinary
ALPHA = 0.01  # one-sided exact binomial test on the n audited points


def last_training_phase(history: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The last epoch that recorded the inner attack (None for methods without one)."""
    for h in reversed(list(history or [])):
        if isinstance(h, Mapping) and h.get("train_robust_acc") is not None:
            return h
    return None


def training_phase_gap(history: Sequence[Mapping[str, Any]], worst_case_acc: float, n: int, *,
                       min_train_robust: float = MIN_TRAIN_ROBUST, min_gap: float = MIN_GAP,
                       alpha: float = ALPHA) -> dict[str, Any]:
    """Decide on (run.json history, the audit's worst-case accuracy on n points).

    Null hypothesis: the held-out worst-case accuracy is at least `train_robust - min_gap`.
    k = worst_case_acc * n correct points; p = P(Binomial(n, train_robust - min_gap) <= k).
    The gap is *significant* when it exceeds `min_gap` and p < alpha. Then:
    * fail: the inner attack stopped working (train_robust >= min_train_robust) and the held-out
      PGD accuracy the training loop measured agrees with it (>= train_robust - min_gap): the
      gradient attacks of training *and* evaluation fail while the audit's strongest attack works;
    * warn: significant otherwise, e.g. the held-out PGD accuracy is low too (robust overfitting,
      a generalisation gap rather than masking) or the inner attack still fools >= 10%;
    * ok: not significant; skip: no training-phase record (natural, dd, foreign models).
    The training-phase number comes from thousands of training points; its own sampling error
    is ignored next to the n audited points'.
    """
    if n <= 0 or not 0 <= worst_case_acc <= 1:
        raise InputError(f"training-phase-gap needs n > 0 and a worst-case accuracy in [0, 1]; got n={n}, {worst_case_acc}.")
    last = last_training_phase(history)
    if last is None:
        return {"decision": SKIP, "reason": "no training-phase robust accuracy in the run's history (no inner attack)"}
    train_robust = float(last["train_robust_acc"])
    heldout_pgd = last.get("pgd_acc")
    gap = train_robust - worst_case_acc
    k = round(worst_case_acc * n)
    null = max(0.0, train_robust - min_gap)
    p = float(binom.cdf(k, n, null)) if null > 0 else 1.0
    significant = gap > min_gap and p < alpha
    pgd_agrees = heldout_pgd is not None and float(heldout_pgd) >= null
    if significant and train_robust >= min_train_robust and pgd_agrees:
        decision = FAIL
    elif significant:
        decision = WARN
    else:
        decision = OK
    return {"decision": decision, "epoch": last.get("epoch"), "train_robust_acc": train_robust,
            "heldout_pgd_acc": None if heldout_pgd is None else float(heldout_pgd), "worst_case_acc": float(worst_case_acc),
            "n": int(n), "gap": gap, "p_value": p, "min_gap": min_gap, "min_train_robust": min_train_robust, "alpha": alpha}


def evaluate_run_folder(run_dir: str | Path, **thresholds: Any) -> dict[str, Any]:
    """`training_phase_gap` on a finished, audited run folder (RUN/run.json + RUN/audit.json)."""
    run_dir = Path(run_dir)
    try:
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        audit = json.loads((run_dir / "audit.json").read_text(encoding="utf-8"))
        history = run["metrics"]["history"]
        worst, n = float(audit["robust_acc"]["worst-case"]), int(audit["n"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{run_dir} needs run.json with metrics.history and audit.json with robust_acc.worst-case and n "
                         f"({type(exc).__name__}: {exc}); train and audit it first.") from None
    return {"run": run.get("name"), **training_phase_gap(history, worst, n, **thresholds)}


@register
@dataclass(frozen=True)
class TrainingPhaseGap(Check):
    """Flags when the training loop's own attack stopped working but the audit's strongest attack breaks the model.

    Why: the LTD paper reports that at high temperatures "the robust accuracy in the training phase
    is almost 100%, but it cannot defend against stronger attacks" (Sec. 5.2): the inner attack's
    gradients are masked, so training never sees adversarial examples. Needs the run's history
    (maskcheck run folders); skipped for foreign models and methods without an inner attack.
    Reference: Chen & Lee, arXiv 2111.02331, Sec. 5.2 and Table IV; thresholds are ours.
    """

    min_train_robust: float = MIN_TRAIN_ROBUST
    min_gap: float = MIN_GAP
    alpha: float = ALPHA

    name = "training-phase-gap"
    order = 110
    mechanism = "masked gradients during training: the inner attack stopped finding adversarial examples"
    remedy = "lower the distillation temperature or check the inner attack (its loss, steps and step size)"

    def needs(self, cfg, bat):
        return (bat.square, *bat.white_box)  # the audit's worst case: white-box battery and Square

    def evaluate(self, ctx) -> CheckResult:
        history = ((ctx.run or {}).get("metrics") or {}).get("history")
        if not history or last_training_phase(history) is None:
            return self.skipped(ctx, "no training-phase robust accuracy (not a maskcheck adversarial training run)")
        worst = float((ctx.white_box & ctx.correct(ctx.battery.square)).float().mean())
        d = training_phase_gap(history, worst, ctx.n, min_train_robust=self.min_train_robust, min_gap=self.min_gap, alpha=self.alpha)
        ev = {**d, "headline": f"training-phase robust accuracy exceeds the worst case by {pp(d['gap'])}"}
        plot = PlotData("bars", "Robust accuracy: training phase vs audit",
                        {"accuracy": [d["train_robust_acc"], d["heldout_pgd_acc"], worst]},
                        labels=["inner attack (training batches)", "PGD (held-out, training loop)", "audit worst case"],
                        ylabel="accuracy")
        said = (f"{100 * d['train_robust_acc']:.0f}% of training points survive the inner attack (epoch {d['epoch']}), "
                f"the audit's worst case leaves {100 * worst:.0f}% (gap {pp(d['gap'])}, p={d['p_value']:.2g})")
        if d["decision"] == FAIL:
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, plots=[plot],
                               summary=f"{said}: the training attack stopped working; {self.remedy}.")
        if d["decision"] == WARN:
            return self.result(ctx, severity=Severity.WARN, evidence=ev, plots=[plot],
                               summary=f"{said}: larger than usual, but the inner attack still works or held-out PGD is low too.")
        return self.result(ctx, severity=Severity.OK, evidence=ev, plots=[plot], summary=f"{said}: within the usual gap.")

"""AutoAttack's own flags: randomness, softmax output, test-time optimisation."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from ..results import CheckResult, Severity
from .base import Check, register


def count_grad_calls(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Calls named grad/backward/_make_grads during one forward (AutoAttack checks.check_dynamic).

    Counted locally: pyautoattack's version keeps a module-global counter that never resets.
    """
    names = {"grad", "backward", "_make_grads"}
    count = 0

    def trace(frame, event, arg):  # noqa: ANN001, ANN202 - sys.settrace API
        nonlocal count
        if event == "call" and frame.f_code.co_name in names:
            count += 1

    old = sys.gettrace()
    sys.settrace(trace)
    try:
        model(x)
    finally:
        sys.settrace(old)
    return count


@register
@dataclass(frozen=True)
class AutoAttackFlags(Check):
    """Flags a randomised forward pass, a softmax output, or gradient calls inside forward.

    Same rules and thresholds as AutoAttack (pyautoattack checks.py; flags_doc.md): 5 no-grad
    passes on the first 250 points, any change in the number correct or a max L2 difference of
    L2-normalised outputs > 1e-4 (the audit's randomness probe, which also switches EOT on);
    softmax when max < 1+1e-5, min > -1e-5 and rows sum to 1 within 1e-5; dynamic when
    `settrace` sees grad/backward calls. They are recomputed here because pyautoattack's
    functions only log and return nothing. A randomised model stays flagged after EOT: its
    robustness is a property of the random draw, which only an EOT evaluation may report.
    Reference: Croce & Hein 2020, AutoAttack checks.py and flags_doc.md; Athalye et al. 2018 (EOT).
    """

    softmax_alpha: float = 1e-5

    name = "autoattack-flags"
    mechanism = "randomness"
    remedy = "use EOT (--eot 20, AutoAttack version='rand') for randomness; pass logits, not probabilities"

    def evaluate(self, ctx) -> CheckResult:
        probe = ctx.randomness
        correct, max_diff, randomized = probe["correct_per_pass"], probe["max_normalized_output_diff"], probe["randomized"]
        x, o = ctx.x[:8], probe["first_output"]
        softmax = bool(o.max() < 1 + self.softmax_alpha and o.min() > -self.softmax_alpha
                       and ((o.sum(-1) - 1).abs() < self.softmax_alpha).all())
        calls = count_grad_calls(ctx.model, x)
        ev = {"correct_per_pass": correct, "max_normalized_output_diff": max_diff, "randomized": randomized,
              "softmax_output": softmax, "grad_calls_in_forward": calls, "eot_draws": ctx.eot}
        found = []
        if randomized:
            found.append(("randomness", f"outputs change across {len(correct)} identical passes (max diff {max_diff:.2g}); "
                          f"the audit attacked it with EOT over {ctx.eot} draws, scored by majority"))
        if softmax:
            found.append(("softmax output", "the model outputs probabilities; audit the logits"))
        if calls:
            found.append(("test-time optimisation", f"forward calls autograd {calls} times; use an adaptive attack"))
        if found:
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, mechanism=", ".join(m for m, _ in found),
                               summary="AutoAttack flags: " + "; ".join(s for _, s in found) + ".")
        return self.result(ctx, severity=Severity.OK, evidence=ev, summary=(
            "deterministic logits, no softmax output, no gradient calls in forward."))

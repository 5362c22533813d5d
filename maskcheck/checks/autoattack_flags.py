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

    Same rules and thresholds as AutoAttack (pyautoattack checks.py; flags_doc.md): `passes`
    no-grad passes on the first `batch` points, any change in the number correct or a max L2
    difference of L2-normalised outputs > `random_alpha`; softmax when max < 1+1e-5, min > -1e-5
    and rows sum to 1 within 1e-5; dynamic when `settrace` sees grad/backward calls. They are
    recomputed here because pyautoattack's functions only log and return nothing.
    """

    passes: int = 5
    random_alpha: float = 1e-4
    softmax_alpha: float = 1e-5
    batch: int = 250

    name = "autoattack-flags"
    mechanism = "randomness"
    remedy = "use EOT (--eot 20, AutoAttack version='rand') for randomness; pass logits, not probabilities"

    def evaluate(self, ctx) -> CheckResult:
        x, y = ctx.x[: self.batch], ctx.y[: self.batch]
        with torch.no_grad():
            outs = [ctx.model(x).float() for _ in range(self.passes)]
        correct = [int((o.argmax(1) == y).sum()) for o in outs]
        normed = [o / (o.norm(dim=1, keepdim=True) + 1e-10) for o in outs]
        max_diff = max((float((a - b).norm(dim=1).max()) for i, a in enumerate(normed) for b in normed[i + 1 :]), default=0.0)
        randomized = len(set(correct)) > 1 or max_diff > self.random_alpha
        o = outs[0]
        softmax = bool(o.max() < 1 + self.softmax_alpha and o.min() > -self.softmax_alpha
                       and ((o.sum(-1) - 1).abs() < self.softmax_alpha).all())
        calls = count_grad_calls(ctx.model, x[:8])
        ev = {"correct_per_pass": correct, "max_normalized_output_diff": max_diff, "randomized": randomized,
              "softmax_output": softmax, "grad_calls_in_forward": calls}
        found = []
        if randomized:
            found.append(("randomness", f"outputs change across {self.passes} identical passes (max diff {max_diff:.2g}); use EOT (--eot 20)"))
        if softmax:
            found.append(("softmax output", "the model outputs probabilities; audit the logits"))
        if calls:
            found.append(("test-time optimisation", f"forward calls autograd {calls} times; use an adaptive attack"))
        if found:
            return self.result(ctx, severity=Severity.FAIL, evidence=ev, mechanism=", ".join(m for m, _ in found),
                               summary="AutoAttack flags: " + "; ".join(s for _, s in found) + ".")
        return self.result(ctx, severity=Severity.OK, evidence=ev, summary=(
            "deterministic logits, no softmax output, no gradient calls in forward."))

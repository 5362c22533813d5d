"""Assertions for your own test suite (pytest, unittest): fail a build when a model masks gradients.

    from maskcheck.testing import assert_no_masking

    def test_model_does_not_mask_gradients():
        assert_no_masking(model, x, y, eps=8 / 255, checks=["gradient-health", "logit-magnitude"])

Passing means no check flagged on these points; it is not proof of robustness.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .results import AuditResult


def assert_no_masking(model: Any, x: Any, y: Any, *, eps: float | str, checks: str | Sequence[str] | None = None,
                      progress: bool = False, **kwargs: Any) -> "AuditResult":
    """Audit `model` on (x, y) and raise `AssertionError` when any check flags gradient masking, or
    when the audit is inconclusive (a degenerate model predicting one or two classes: nothing is vouched for).

    The message names each flagged check with its one-line summary (which names the remedy).
    Other arguments are those of `maskcheck.audit` (norm, n, device, seed, ...). Returns the
    `AuditResult` when nothing flagged, for further assertions (e.g. on `robust_acc`).
    """
    from .api import audit

    from .results import INCONCLUSIVE

    result = audit(model, x, y, eps=eps, checks=checks, progress=progress, **kwargs)
    if result.verdict.grade == INCONCLUSIVE:  # a collapsed model: the audit can vouch for nothing
        raise AssertionError(f"audit inconclusive on {result.n} points: {result.verdict.text}")
    flagged = result.flagged
    if flagged:
        lines = [f"  {c.check}: {c.summary}" for c in flagged]
        raise AssertionError(f"gradient masking suspected ({len(flagged)} of {result.verdict.n_checks} checks flagged "
                             f"on {result.n} points at {result.threat['norm']} eps={result.threat['eps']:.4g}):\n"
                             + "\n".join(lines))
    return result


__all__ = ["assert_no_masking"]

"""The `Check` interface, the registry, and the statistics every attack comparison uses.

A check is a frozen dataclass of its thresholds (all defaulted, overridable per audit). It
declares the attacks it needs (`needs`, `AttackSpec`s, usually from the audit's standard
`Battery`; `follow_up` for attacks that depend on earlier outcomes), and `evaluate(ctx) ->
CheckResult` reads their per-example outcomes from the read-only `AuditContext` (see
`maskcheck.auditing`), so one APGD run feeds every check that needs it.
Its class docstring ("Flags when / Why / Reference") is its only documentation: it is copied
into every result (`CheckResult.doc`), and the report shows it. Adding a check = one file here
(decorated with `@register`, its place in the battery as `order`; `__init__` imports every module
of this folder) plus its test.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence, final

import numpy as np
import torch
from scipy.stats import binomtest

from ..errors import InputError
from ..results import CheckResult, PlotData, Severity

if TYPE_CHECKING:
    from ..attacks import AttackSpec, Battery
    from ..auditing import AuditContext
    from ..config import AuditConfig

REGISTRY: dict[str, type["Check"]] = {}


def register(cls: type["Check"]) -> type["Check"]:
    REGISTRY[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Check:
    """Base class: subclasses set `name`, `mechanism`, `remedy` and implement `evaluate`."""

    name: ClassVar[str] = ""
    mechanism: ClassVar[str] = ""
    remedy: ClassVar[str] = ""
    order: ClassVar[int] = 1000  # place in the battery (checks/__init__ sorts by it); the default runs last
    # True: the check reads gradient attacks and is skipped, with one reason, when the input has no
    # gradient path (gradient-health reports that case itself)
    needs_gradients: ClassVar[bool] = False
    # Checks whose findings a degenerate (collapsed: one or two predicted classes) model fakes: zero
    # gradients, unbreakable points. The name predates two-class collapse.
    skips_one_class_models: ClassVar[bool] = False

    def needs(self, cfg: "AuditConfig", bat: "Battery") -> tuple["AttackSpec", ...]:
        """The attack runs this check reads (the audit runs their union once, before any check)."""
        return ()

    def follow_up(self, ctx: "AuditContext") -> tuple["AttackSpec", ...]:
        """Attacks that depend on what the first plan found or on the points (a second planning phase,
        e.g. reruns on the points a gap left): the audit runs them after `needs`, before any check evaluates."""
        return ()

    @final
    def follow_ups(self, ctx: "AuditContext") -> tuple["AttackSpec", ...]:
        """What the audit calls: `follow_up`, or nothing when the check will skip."""
        return () if self.skip_reason(ctx) else tuple(self.follow_up(ctx))

    def evaluate(self, ctx: "AuditContext") -> CheckResult:  # pragma: no cover - abstract
        raise NotImplementedError

    @final
    def run(self, ctx: "AuditContext") -> CheckResult:
        """What the audit calls: `evaluate`, or a skip when the check needs gradients the model lacks."""
        reason = self.skip_reason(ctx)
        return self.skipped(ctx, reason) if reason else self.evaluate(ctx)

    @final
    def skip_reason(self, ctx: "AuditContext") -> str | None:
        if self.needs_gradients and not ctx.grad_ok:
            return "no gradient path to the input (see gradient-health)"
        if self.skips_one_class_models and ctx.grad_ok and ctx.degenerate:
            return ("the model predicts one or two classes for every audited point (a collapsed network, accuracy = "
                    "those classes' share): its zero gradients and unbroken points are not masking")
        return None

    @classmethod
    def doc(cls) -> str:
        """The class docstring, dedented: what the report shows for this check."""
        return inspect.cleandoc(cls.__doc__ or "")

    def params(self, ctx: "AuditContext", **extra: Any) -> dict[str, Any]:
        """This check's thresholds plus the audit settings it ran with (seed included)."""
        return {**dataclasses.asdict(self), "eps": ctx.eps, "norm": ctx.norm, "seed": ctx.seed, "eot": ctx.eot, **extra}

    def result(
        self, ctx: "AuditContext", *, severity: Severity, summary: str, evidence: Mapping[str, Any],
        plots: Sequence[PlotData] = (), mechanism: str | None = None, params: Mapping[str, Any] | None = None,
    ) -> CheckResult:
        """Build the typed result; `flagged` is exactly `severity is FAIL` (a WARN is shown and grades
        the model attack-sensitive, but is not flagged). A WARN names its mechanism only when given one."""
        flagged = severity is Severity.FAIL
        named = (mechanism or self.mechanism) if flagged else (mechanism if severity is Severity.WARN else None)
        return CheckResult(
            check=self.name, flagged=flagged, severity=severity, summary=summary, evidence=as_json(evidence),
            params=as_json(params if params is not None else self.params(ctx)), plots=tuple(plots),
            mechanism=named, remedy=self.remedy if flagged else None, doc=self.doc(),
        )

    def skipped(self, ctx: "AuditContext", reason: str) -> CheckResult:
        return self.result(ctx, severity=Severity.SKIPPED, summary=f"skipped: {reason}", evidence={})


def make_check(name: str, overrides: Mapping[str, Any] | None = None) -> Check:
    """Instantiate a registered check with threshold overrides; unknown names/fields are user errors."""
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown check {name!r}; valid: {', '.join(REGISTRY)}.") from None
    overrides = dict(overrides or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise InputError(f"check {name!r} has no parameter {', '.join(bad)}; valid: {', '.join(sorted(fields)) or 'none'}.")
    return cls(**overrides)


def as_json(d: Mapping[str, Any]) -> dict[str, Any]:
    """Plain JSON values (tuples become lists, NaN/Inf become None), so a result survives a save/load round trip."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.loads(json.dumps(clean(dict(d))))


# ------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class ExtraBreaks:
    """Points a challenger attack broke that a reference attack left standing.

    Under "no masking" a strong reference misses at most a rate `null_rate` of the points the
    challenger finds; the exact one-sided binomial test asks whether the observed count exceeds
    that. AutoAttack's own tolerance is 0.2 pp (`check_square_sr`, alpha=.002), used both as the
    null rate and as the minimum effect size. With n = 200 one example is 0.5 pp, so one or two
    stray examples never flag a sound model (audit-design-notes.md).
    """

    count: int
    n: int
    p_value: float
    examples: list[int]

    @property
    def gap(self) -> float:
        return self.count / self.n if self.n else 0.0

    def significant(self, min_gap: float, alpha: float) -> bool:
        return self.count > 0 and self.gap > min_gap and self.p_value < alpha


def extra_breaks(challenger_correct: torch.Tensor, reference_correct: torch.Tensor, n: int, null_rate: float, max_examples: int = 50) -> ExtraBreaks:
    """Count examples broken by the challenger (correct=False) and not by the reference."""
    extra = (~challenger_correct.cpu()) & reference_correct.cpu()
    count = int(extra.sum())
    return excess(count, n, null_rate, extra.nonzero().flatten().tolist()[:max_examples])


def excess(count: int, n: int, null_rate: float, examples: list[int] | None = None) -> ExtraBreaks:
    """`count` events out of `n` against a tolerated rate `null_rate` (exact one-sided binomial test)."""
    p = binomtest(count, n, null_rate, alternative="greater").pvalue if n else 1.0
    return ExtraBreaks(count, n, float(p), list(examples or []))


def mcnemar_greater(b: int, c: int) -> float:
    """Exact McNemar test (binomial on the discordant pairs): P(b or more of b+c | p=1/2)."""
    return float(binomtest(b, b + c, 0.5, alternative="greater").pvalue) if b + c else 1.0


def finite_list(t: torch.Tensor | np.ndarray, max_len: int = 2000) -> list[float]:
    """Samples for a histogram: finite values only, as plain floats (JSON has no NaN/Inf)."""
    a = np.asarray(t.detach().cpu().double() if isinstance(t, torch.Tensor) else t, dtype=float).ravel()
    a = a[np.isfinite(a)][:max_len]
    return [float(v) for v in a]


def quantile_curves(history: torch.Tensor, name: str) -> dict[str, list[float]]:
    """Mean and 10/50/90% quantiles over examples of a (steps+1, B) loss history."""
    h = history.detach().cpu().double()
    h = torch.where(torch.isfinite(h), h, torch.nan)
    out = {f"{name} mean": h.nanmean(1)}
    for q in (0.1, 0.5, 0.9):
        out[f"{name} q{int(q * 100)}"] = h.nanquantile(q, dim=1)
    return {k: [float(x) if math.isfinite(x) else 0.0 for x in v.tolist()] for k, v in out.items()}


def pp(x: float) -> str:
    """A fraction as percentage points for summaries: 0.3125 -> '31 pp'."""
    return f"{100 * x:.0f} pp" if abs(x) >= 0.01 else f"{100 * x:.1f} pp"

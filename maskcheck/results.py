"""The typed audit results and their JSON form (the contract between audit, report and regress).

`maskcheck audit` writes an `AuditResult`; `maskcheck report` and the regression diff read it
back without importing torch models or checks. Every field is plain JSON: accuracies are
fractions in [0, 1], times are seconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from .errors import InputError
from .fileio import atomic_write_json, read_json

SCHEMA_VERSION = 1


class Severity(str, Enum):
    OK = "ok"  # ran, saw no sign of masking
    WARN = "warn"  # weak or ambiguous evidence
    FAIL = "fail"  # clear evidence of masking
    SKIPPED = "skipped"  # could not run here (reason in summary)


@dataclass(frozen=True)
class PlotData:
    """Numbers for one figure; the report draws it, the check never imports matplotlib.

    kind: "histogram" (series = samples), "curve" (series over shared `x`), "bars"
    (series = one value per label in `labels`).
    """

    kind: str
    title: str
    series: Mapping[str, list[float]]
    x: list[float] | None = None
    labels: list[str] | None = None
    xlabel: str = ""
    ylabel: str = ""
    log_x: bool = False
    log_y: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PlotData":
        known = {f.name for f in fields(cls)}  # fields of a newer version are ignored (ARCHITECTURE.md, "Schema versions")
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class CheckResult:
    check: str  # registry key, kebab-case, as spelled on the CLI
    flagged: bool  # True = evidence of gradient masking
    severity: Severity
    summary: str  # one sentence; names the remedy when flagged
    evidence: Mapping[str, Any]  # the numbers behind the verdict
    params: Mapping[str, Any]  # thresholds and settings it ran with, seed included
    plots: tuple[PlotData, ...] = ()
    mechanism: str | None = None  # e.g. "saturated logits" when flagged; the cause of a WARN too
    remedy: str | None = None
    duration_s: float = 0.0
    doc: str = ""  # the check's documentation (its class docstring: flags when / why / reference)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["severity"] = self.severity.value
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CheckResult":
        d = dict(d)
        d["severity"] = Severity(d["severity"])
        d["plots"] = tuple(PlotData.from_dict(p) for p in d.get("plots", ()))
        return cls(**d)


MASKED, INCONCLUSIVE, ATTACK_SENSITIVE, NO_MASKING = "masked", "inconclusive", "attack-sensitive", "no masking detected"
GRADES = (MASKED, INCONCLUSIVE, ATTACK_SENSITIVE, NO_MASKING)  # worst first: `--fail-on warn` fails on all but the last


@dataclass(frozen=True)
class Verdict:
    """The graded verdict of an audit.

    - `masked`: some check FAILed: evidence that the reported robustness is illusory; the
      mechanisms are named (e.g. "saturated softmax", "vanishing gradients").
    - `attack-sensitive`: no FAIL but some check WARNed: gradients work, but the usual attack
      (PGD-CE) understates the attack surface; quote the stronger attack's number (`quote`).
    - `inconclusive`: no FAIL, but the model is degenerate on the audited points (it predicts one
      class, or two of five or more): a collapsed network whose unbroken points and zero gradients
      are its own; the audit cannot tell masking from collapse, so it makes no claim either way.
    - `no masking detected`: every check ran clean. Never "robust": passing is not a proof.
    `flagged` is exactly `grade == "masked"` (what --fail-on-flag and `maskcheck regress` use).
    """

    flagged: bool
    mechanisms: tuple[str, ...]
    text: str
    n_checks: int
    n_flagged: int
    grade: str = ""
    quote: Mapping[str, Any] | None = None  # {"attack": "worst-case", "acc": 0.345}: the number to report
    notes: tuple[str, ...] = ()  # e.g. "EOT over 20 draws (the model is randomised); ..."

    def __post_init__(self) -> None:
        if not self.grade:  # audit JSON written before grades existed
            object.__setattr__(self, "grade", MASKED if self.flagged else NO_MASKING)

    @classmethod
    def from_checks(cls, checks: list[CheckResult], headline: str = "", robust_acc: Mapping[str, float] | None = None,
                    notes: tuple[str, ...] = (), inconclusive: str | None = None) -> "Verdict":
        """Grade the checks' results; `inconclusive` is why the model is degenerate (None when it is not)."""
        ran = [c for c in checks if c.severity is not Severity.SKIPPED]
        flagged = [c for c in ran if c.flagged]
        warned = [c for c in ran if c.severity is Severity.WARN]
        robust_acc = dict(robust_acc or {})
        quote = None
        for key in ("worst-case", "white-box"):
            if key in robust_acc:
                quote = {"attack": key, "acc": robust_acc[key]}
                break
        tail = f" [{'; '.join(notes)}]" if notes else ""
        if flagged:
            mechanisms = tuple(dict.fromkeys(c.mechanism or c.check for c in flagged))
            text = "masked: " + ", ".join(mechanisms) + (f"; {headline}" if headline else "")
            return cls(True, mechanisms, text + tail, len(ran), len(flagged), MASKED, quote, notes)
        if inconclusive:
            return cls(False, (), f"inconclusive: {inconclusive}" + tail, len(ran), 0, INCONCLUSIVE, quote, notes)
        if warned:
            mechanisms = tuple(dict.fromkeys(c.mechanism or c.check for c in warned))
            text = "attack-sensitive: " + ", ".join(mechanisms)
            if quote:
                pgd = robust_acc.get("pgd-ce")
                text += f"; report {quote['attack']} robust accuracy {100 * quote['acc']:.1f}%"
                text += f", not PGD-CE's {100 * pgd:.1f}%" if pgd is not None and pgd > quote["acc"] else ""
            return cls(False, mechanisms, text + tail, len(ran), 0, ATTACK_SENSITIVE, quote, notes)
        return cls(False, (), f"no masking detected by {len(ran)} checks" + tail, len(ran), 0, NO_MASKING, quote, notes)

    @classmethod
    def from_dict(cls, v: Mapping[str, Any]) -> "Verdict":
        return cls(v["flagged"], tuple(v["mechanisms"]), v["text"], v["n_checks"], v["n_flagged"], v.get("grade", ""),
                   v.get("quote"), tuple(v.get("notes", ())))


def _graded(verdict: Mapping[str, Any], checks: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    """An audit JSON written before grades existed: masked if flagged, attack-sensitive if a check warned."""
    if verdict.get("grade"):
        return verdict
    warned = any(c.get("severity") == Severity.WARN.value for c in checks)
    return {**verdict, "grade": MASKED if verdict["flagged"] else ATTACK_SENSITIVE if warned else NO_MASKING}


@dataclass
class AuditResult:
    """One audit: what was audited, every check's result, the verdict; `save`/`load` are its JSON form.

    `maskcheck.AuditResult` (`report.notebook.AuditResult`) adds `.report(path)` and the notebook view.
    """

    model: Mapping[str, Any]  # name, path, format, method, temperature, arch (what is known)
    dataset: str
    threat: Mapping[str, Any]  # eps, norm
    n: int
    clean_acc: float
    robust_acc: Mapping[str, float]  # attack name -> accuracy on the n points
    checks: list[CheckResult]
    verdict: Verdict
    provenance: Mapping[str, Any]  # maskcheck/torch versions, device, seed, created
    timings: Mapping[str, float] = field(default_factory=dict)
    config: Mapping[str, Any] | None = None  # the AuditConfig it ran with (config.AuditConfig.to_dict)
    schema_version: int = SCHEMA_VERSION
    # how the audited points were chosen: source ("heldout" | "given"), selection ("seeded random sample" |
    # "all" | "first n"), seed, of (points available), indices, indices_sha256; None in older audit JSON
    points: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            **dict(self.provenance),
            "model": dict(self.model),
            "dataset": self.dataset,
            "threat": dict(self.threat),
            "n": self.n,
            "clean_acc": self.clean_acc,
            "robust_acc": dict(self.robust_acc),
            "verdict": {**asdict(self.verdict), "notes": list(self.verdict.notes)},
            "checks": [c.to_dict() for c in self.checks],
            "timings": dict(self.timings),
            "config": dict(self.config) if self.config is not None else None,
            "points": dict(self.points) if self.points is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AuditResult":
        try:
            version = d["schema_version"]
            if version != SCHEMA_VERSION:
                raise InputError(f"audit JSON has schema_version {version}; this maskcheck reads {SCHEMA_VERSION}. Rerun the audit.")
            prov_keys = ("maskcheck_version", "torch_version", "python_version", "device", "seed", "created")
            return cls(
                model=d["model"], dataset=d["dataset"], threat=d["threat"], n=d["n"], clean_acc=d["clean_acc"],
                robust_acc=d["robust_acc"], checks=[CheckResult.from_dict(c) for c in d["checks"]],
                verdict=Verdict.from_dict(_graded(d["verdict"], d["checks"])), provenance={k: d.get(k) for k in prov_keys},
                timings=d.get("timings", {}), config=d.get("config"), schema_version=version, points=d.get("points"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a maskcheck audit JSON (missing or bad field {exc}). Produce it with maskcheck audit.") from None

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "AuditResult":
        return cls.from_dict(read_json(path, "audit JSON"))

    @property
    def flagged(self) -> list[CheckResult]:
        """The checks that flagged masking, in battery order ([] when none: falsy)."""
        return [c for c in self.checks if c.flagged]

    def to_json(self, indent: int | None = 2) -> str:
        """The audit JSON as text (the same document `save` writes; NaN is not valid JSON and raises)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def summary(self) -> str:
        """One line: model, verdict, flagged checks, clean and worst-case accuracy."""
        names = ", ".join(c.check for c in self.flagged) or "none"
        acc = self.robust_acc.get("worst-case")
        worst = f", worst-case {100 * acc:.1f}%" if isinstance(acc, (int, float)) and math.isfinite(acc) else ""
        return (f"{self.model.get('name')!s}: {self.verdict.text}; flagged: {names}; "
                f"clean {100 * self.clean_acc:.1f}%{worst}; n={self.n}")

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.check == name), None)

"""The typed audit results and their JSON form (the contract between audit, report and regress).

`maskcheck audit` writes an `AuditResult`; `maskcheck report` and the regression diff read it
back without importing torch models or checks. Every field is plain JSON: accuracies are
fractions in [0, 1], times are seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from .api import AuditResultAPI  # .flagged, .to_json(), .report(), _repr_html_ (the Python API)
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
        return cls(**d)


@dataclass(frozen=True)
class CheckResult:
    check: str  # registry key, kebab-case, as spelled on the CLI
    flagged: bool  # True = evidence of gradient masking
    severity: Severity
    summary: str  # one sentence; names the remedy when flagged
    evidence: Mapping[str, Any]  # the numbers behind the verdict
    params: Mapping[str, Any]  # thresholds and settings it ran with, seed included
    plots: tuple[PlotData, ...] = ()
    mechanism: str | None = None  # e.g. "saturated logits", "vanishing gradients", when flagged
    remedy: str | None = None
    duration_s: float = 0.0

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


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    mechanisms: tuple[str, ...]
    text: str  # "masking suspected: ..." or "no masking detected by N checks" -- never "robust"
    n_checks: int
    n_flagged: int

    @classmethod
    def from_checks(cls, checks: list[CheckResult], headline: str = "") -> "Verdict":
        ran = [c for c in checks if c.severity is not Severity.SKIPPED]
        flagged = [c for c in ran if c.flagged]
        mechanisms = tuple(dict.fromkeys(c.mechanism or c.check for c in flagged))
        if flagged:
            text = "masking suspected: " + ", ".join(mechanisms) + (f"; {headline}" if headline else "")
        else:
            text = f"no masking detected by {len(ran)} checks"
        return cls(bool(flagged), mechanisms, text, len(ran), len(flagged))


@dataclass
class AuditResult(AuditResultAPI):
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
    schema_version: int = SCHEMA_VERSION

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
            "verdict": asdict(self.verdict),
            "checks": [c.to_dict() for c in self.checks],
            "timings": dict(self.timings),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AuditResult":
        try:
            version = d["schema_version"]
            if version != SCHEMA_VERSION:
                raise InputError(f"audit JSON has schema_version {version}; this maskcheck reads {SCHEMA_VERSION}. Rerun the audit.")
            prov_keys = ("maskcheck_version", "torch_version", "python_version", "device", "seed", "created")
            v = d["verdict"]
            return cls(
                model=d["model"], dataset=d["dataset"], threat=d["threat"], n=d["n"], clean_acc=d["clean_acc"],
                robust_acc=d["robust_acc"], checks=[CheckResult.from_dict(c) for c in d["checks"]],
                verdict=Verdict(v["flagged"], tuple(v["mechanisms"]), v["text"], v["n_checks"], v["n_flagged"]),
                provenance={k: d.get(k) for k in prov_keys}, timings=d.get("timings", {}), schema_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a maskcheck audit JSON (missing or bad field {exc}). Produce it with maskcheck audit.") from None

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "AuditResult":
        return cls.from_dict(read_json(path, "audit JSON"))

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.check == name), None)

"""Shared vocabulary: threat models, argument parsers, seeds, devices and JSON provenance.

Everything the CLI accepts as text is parsed here once, so the library only ever sees
validated values (`eps` as a float in (0, 1], temperatures as positive floats, ...).
"""

from __future__ import annotations

import math
import platform
import random
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal, Mapping

import numpy as np

from . import __version__
from .errors import InputError

if TYPE_CHECKING:  # torch loads when a device, seed or generator is asked for: the CLI imports this module cheaply
    import torch

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")


def check_norm(norm: Any) -> str:
    """The one validation of a norm name (CLI, API, audit config and stored configs all come through here)."""
    if norm not in NORMS:
        raise InputError(f"--norm must be {' or '.join(NORMS)}; got {norm!r}.")
    return norm


@dataclass(frozen=True)
class ThreatModel:
    """An eps-ball around each input, in the [0, 1] pixel scale."""

    eps: float
    norm: Norm = "linf"

    def __post_init__(self) -> None:
        check_eps(self.eps)
        check_norm(self.norm)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The audit's defaults, each set here only: AuditConfig's fields, the CLI's flags, the API's keywords and the
# sweep read them.
DEFAULT_N = 1000  # audited points (AutoAttack's and RobustBench's usual evaluation subset)
DEFAULT_SQUARE_QUERIES = 5000  # AutoAttack standard (autoattack.py: SquareAttack n_queries=5000)
DEFAULT_APGD_ITERS = 100  # AutoAttack standard, 1 restart for APGD-CE (autoattack.py _set_version)


def _positive_int(value: Any, flag: str, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{flag} must be a positive {what}; got {value!r}.")


@dataclass(frozen=True)
class AuditConfig:
    """Every setting that changes an audit's numbers; stored in audit.json `config`.

    A sweep re-audits a model when its stored config differs from the one asked for. `eot`
    None means automatic: 20 draws when the model is found randomised (without or with gradients
    enabled), else 1 (`EOT_AUTO_DRAWS`).
    `checks` None means every registered check; `overrides` maps a check to threshold overrides.
    """

    threat: ThreatModel
    n: int = DEFAULT_N
    checks: tuple[str, ...] | None = None
    seed: int = 0
    eot: int | None = None
    square_queries: int = DEFAULT_SQUARE_QUERIES
    apgd_iters: int = DEFAULT_APGD_ITERS
    batch_size: int = 500
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # add FAB-T beside Square for robust_acc["autoattack-standard"]; opt-in (issue 23): no check reads FAB-T, and it
    # was a third of a robust model's audit on CPU, a cost the quick start should not pay for a figure it does not show
    autoattack_standard: bool = False
    bpda: str | None = None  # --bpda: 'surrogate' or 'identity:<submodule path>' (maskcheck.adaptive); None = automatic only

    def __post_init__(self) -> None:
        _positive_int(self.n, "--n", "number of points")
        if self.eot is not None:
            _positive_int(self.eot, "--eot", "number of draws")
        _positive_int(self.square_queries, "--square-queries", "integer")
        _positive_int(self.apgd_iters, "apgd_iters", "integer")
        _positive_int(self.batch_size, "batch_size", "integer")
        if self.bpda is not None:
            parse_bpda(self.bpda)
        if isinstance(self.checks, str):
            object.__setattr__(self, "checks", tuple(p.strip() for p in self.checks.split(",") if p.strip()))
        elif self.checks is not None:
            object.__setattr__(self, "checks", tuple(self.checks))

    def __hash__(self) -> int:  # overrides is a dict; hash what identifies the audit
        return hash((self.threat, self.n, self.checks, self.seed, self.eot, self.square_queries, self.apgd_iters,
                     self.autoattack_standard, self.bpda))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checks"] = list(self.checks) if self.checks is not None else None
        d["overrides"] = {k: dict(v) for k, v in self.overrides.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AuditConfig":
        d = dict(d)
        d["threat"] = ThreatModel(**d["threat"])
        if d.get("checks") is not None:
            d["checks"] = tuple(d["checks"])
        return cls(**d)

    @classmethod
    def from_audit_json(cls, audit: Mapping[str, Any]) -> "AuditConfig":
        """The config a stored audit.json ran with: its `config` object over its `threat`; for audit.json written
        before `config` existed, the fields that recorded it then (the seed of its provenance, the Square queries
        of the black-box check's evidence, FAB-T, which every audit ran before issue 23). InputError if unreadable."""
        stored = audit.get("config") if isinstance(audit.get("config"), Mapping) else {}
        names = {f.name for f in fields(cls)} - {"threat"}
        values = {k: v for k, v in stored.items() if k in names}
        values.setdefault("seed", audit.get("seed"))
        values.setdefault("n", audit.get("n"))
        values.setdefault("autoattack_standard", True)
        if "square_queries" not in values:
            recorded = [(c.get("evidence") or {}).get("square_queries") for c in audit.get("checks") or [] if isinstance(c, Mapping)]
            values["square_queries"] = next((q for q in recorded if q is not None), DEFAULT_SQUARE_QUERIES)
        try:
            return cls.from_dict({"threat": audit.get("threat") or {}, **values})
        except (TypeError, ValueError) as exc:
            raise InputError(f"the audit's stored settings are unreadable ({exc}); audit again.") from None

    def difference(self, stored: "AuditConfig", ignore: tuple[str, ...] = ()) -> str | None:
        """Why an audit made with `stored` does not answer this config: the first setting that differs, as
        'name stored -> asked' (None: the same audit). `ignore` names fields the caller compares itself."""
        if stored.threat.norm != self.threat.norm:
            return f"norm {stored.threat.norm} -> {self.threat.norm}"
        if not math.isclose(stored.threat.eps, self.threat.eps, rel_tol=1e-9):
            return f"eps {stored.threat.eps} -> {self.threat.eps}"
        asked, had = self.to_dict(), stored.to_dict()
        for key in asked:
            if key not in ("threat", *ignore) and asked[key] != had[key]:
                return f"{key.replace('_', ' ')} {had[key]} -> {asked[key]}"
        return None


EOT_AUTO_DRAWS = 20  # ours: AutoAttack's version='rand' uses EOT with 20 iterations (autoattack.py)


def check_eps(eps: float) -> float:
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or not 0.0 < eps <= 1.0:
        raise InputError(f"eps must lie in (0, 1] (pixel scale [0, 1]; e.g. 0.3 or 8/255); got {eps!r}.")
    return float(eps)


def parse_eps(text: str | float) -> float:
    """Parse `0.3`, `8/255` or a float into an eps in (0, 1]."""
    if isinstance(text, (int, float)):
        return check_eps(float(text))
    s = str(text).strip()
    try:
        value = float(Fraction(s)) if "/" in s else float(s)
    except (ValueError, ZeroDivisionError):
        raise InputError(f"eps must be a number in (0, 1] such as 0.3 or 8/255; got {text!r}.") from None
    return check_eps(value)


# The LTD paper's Table IV grid (Chen & Lee, arXiv 2111.02331, Sec. 5.2; T = 50 left out, as the
# paper did: "its natural accuracy is 86.63% which is too low to accept"). `--temps paper`.
PAPER_TEMPS: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0, 8.0, 10.0, 12.0, 15.0, 20.0)
# `train-sweep`'s defaults (the README's main job): the temperatures of the issue's sweep and the methods it compares.
DEFAULT_SWEEP_TEMPS = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0)
DEFAULT_SWEEP_METHODS = ("dd", "trades", "ltd")


def parse_temps(text: str) -> list[float]:
    """Parse a comma-separated list of positive temperatures, e.g. `1,2,5,10,15,20`, or `paper` (PAPER_TEMPS)."""
    if str(text).strip().lower() == "paper":
        return list(PAPER_TEMPS)
    parts = [p.strip() for p in str(text).split(",")]
    if not text or not str(text).strip() or any(p == "" for p in parts):
        raise InputError(f"--temps must be comma-separated positive numbers such as 1,2,5,10, or 'paper'; got {text!r}.")
    temps: list[float] = []
    for p in parts:
        try:
            t = float(p)
        except ValueError:
            raise InputError(f"--temps must be comma-separated positive numbers such as 1,2,5,10; got {p!r} in {text!r}.") from None
        if not math.isfinite(t) or t <= 0:
            raise InputError(f"temperatures must be positive and finite; got {p!r} in {text!r}.")
        temps.append(t)
    return list(dict.fromkeys(temps))  # de-duplicate, keep order


def parse_name_list(text: str, valid: list[str] | tuple[str, ...], what: str) -> list[str]:
    """Parse `a,b,c` where each item must be one of `valid`."""
    items = [p.strip() for p in str(text).split(",") if p.strip()]
    if not items:
        raise InputError(f"{what} must be a comma-separated list of: {', '.join(valid)}; got {text!r}.")
    bad = [i for i in items if i not in valid]
    if bad:
        raise InputError(f"unknown {what} {', '.join(map(repr, bad))}; valid: {', '.join(valid)}.")
    return list(dict.fromkeys(items))


def format_temperature(t: float) -> str:
    """`5.0 -> '5'`, `2.5 -> '2.5'`: used in run names such as `ltd-T5`."""
    return f"{t:g}"


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """The one place a device spec becomes a `torch.device`; CUDA devices always carry an index.

    `auto` picks CUDA when present, else CPU. `cuda` (and `auto` on a GPU machine) becomes the
    current CUDA device, e.g. `cuda:0`: `torch.cuda.set_device`, `torch.Generator(device=...)`
    and worker planning all need an index, and an index-less `cuda` crashed the first of them
    (issue 13). `cuda:n` must exist.
    """
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {spec} asked for CUDA but no GPU is visible. Use --device cpu or auto.")
        try:
            dev = torch.device(spec)
        except RuntimeError:  # torch's own message lists every backend it knows; ours says what we take
            raise InputError(f"--device must be auto, cpu or cuda[:n]; got {spec!r}.") from None
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible.")
        return dev
    raise InputError(f"--device must be auto, cpu or cuda[:n]; got {spec!r}.")


def seed_everything(seed: int) -> int:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return seed


def derived_seed(seed: int, name: str) -> int:
    """A stable per-component seed from (seed, name), so adding a component changes no other."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def generator_for(seed: int, name: str, device: torch.device | str = "cpu") -> torch.Generator:
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(derived_seed(seed, name))
    return g


def provenance(device: torch.device | str, seed: int | None) -> dict[str, Any]:
    """Fields every JSON artefact carries."""
    import torch

    return {
        "maskcheck_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "seed": seed,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def parse_bpda(value: str | None) -> tuple[str, str] | None:
    """'surrogate' -> ('surrogate', ''); 'identity:a.b' -> ('identity', 'a.b'); None -> None; else an InputError."""
    if value is None:
        return None
    mode, _, path = value.partition(":")
    if mode == "surrogate" and not path:
        return ("surrogate", "")
    if mode == "identity" and path.strip():
        return ("identity", path.strip())
    raise InputError(f"--bpda must be 'surrogate' or 'identity:<submodule path>' (e.g. identity:model.0); got {value!r}.")

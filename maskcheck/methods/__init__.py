"""Training methods: one file per method; a method is its loss (see `base.py`).

| name     | file        | loss (methods.md section)                                             |
|----------|-------------|-----------------------------------------------------------------------|
| natural  | natural.py  | CE(f(x), y)  (1)                                                      |
| dd       | dd.py       | CE(y or softmax(t(x)/T), softmax(f(x)/T)); deployed at T = 1  (2)     |
| trades   | trades.py   | CE(f(x), y) + beta KL(f(x) || f(x'))  (4)                             |
| ltd      | ltd.py      | KL(softmax(t(x)/T) || f(x)) + beta KL(f(x) || f(x')), tau in forward (7) |
| rslad    | rslad.py    | (1/C)[5/6 KL(t(x) || f(x')) + 1/6 KL(t(x) || f(x))]  (6)              |
| pgd-at   | pgd_at.py   | CE(f(x'), y)  (3)                                                     |
| --awp    | awp.py      | any adversarial objective above at weights w + gamma * v  (5)         |
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from .awp import AWP, AWP_DEFAULTS
from .base import Batch, Method, StepContext
from .dd import DefensiveDistillation
from .ltd import LTD
from .natural import Natural
from .pgd_at import PGDAT
from .rslad import RSLAD
from .trades import Trades

METHODS: dict[str, type[Method]] = {
    "natural": Natural,
    "dd": DefensiveDistillation,
    "trades": Trades,
    "ltd": LTD,
    "rslad": RSLAD,
    "pgd-at": PGDAT,
}


def awp_methods() -> tuple[str, ...]:
    """The methods `--awp` can wrap (read from the registry when asked, so a method added later counts)."""
    return tuple(name for name, cls in METHODS.items() if cls.supports_awp)


def build_method(name: str, **params: Any) -> Method:
    """Instantiate method `name`, passing only the hyperparameters it declares (e.g. beta, temperature)."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}; valid: {', '.join(METHODS)}.") from None
    fields = getattr(cls, "__dataclass_fields__", {})
    return cls(**{k: v for k, v in params.items() if k in fields and v is not None})


__all__ = ["AWP", "AWP_DEFAULTS", "awp_methods", "Batch", "METHODS", "Method", "StepContext", "build_method"]

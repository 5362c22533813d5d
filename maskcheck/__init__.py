"""maskcheck: tell real adversarial robustness from gradient masking.

Data flows one way: data -> models -> methods/training -> checkpoint -> audit (checks)
-> JSON -> report. See README.md for the commands and the Python API:

    import maskcheck
    result = maskcheck.audit(model, x, y, eps=8 / 255)   # -> maskcheck.AuditResult
    result.flagged, result.verdict, result.robust_acc, result.report("audit.html")

`import maskcheck` stays cheap: torch and the engine load on first use of an export.
"""

from __future__ import annotations

import importlib
import types
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it, imported on first access (PEP 562)
_EXPORTS = {
    "audit_loader": "api",
    "ArgumentError": "api",
    "AuditResult": "results",
    "CheckResult": "results",
    "Verdict": "results",
    "Severity": "results",
    "assert_no_masking": "testing",
    "load_robustbench": "robustbench_models",
    "MaskcheckError": "errors",
    "InputError": "errors",
}

__all__ = ["audit", *_EXPORTS, "__version__"]


class _AuditModule(types.ModuleType):
    """`maskcheck.audit` is both the engine module and the API call `maskcheck.audit(model, x, y, eps=...)`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .api import audit

        return audit(*args, **kwargs)


class _Package(types.ModuleType):
    """Python binds a submodule to its package attribute on import; this makes the `audit`
    submodule callable at that moment, whatever imports it first (the CLI, a test, a user)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "audit" and type(value) is types.ModuleType:
            value.__class__ = _AuditModule
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    if name == "audit":
        importlib.import_module(".audit", __name__)  # binds it through _Package.__setattr__
        return globals()["audit"]
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


import sys as _sys  # noqa: E402 - the class swap must follow the definitions above

_sys.modules[__name__].__class__ = _Package

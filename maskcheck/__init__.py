"""maskcheck: tell real adversarial robustness from gradient masking.

Data flows one way: data -> models -> methods/training -> checkpoint -> audit (checks)
-> JSON -> report. See README.md and docs/ for the commands and docs/api.md for the Python API:

    import maskcheck
    result = maskcheck.audit(model, x, y, eps=8 / 255)   # -> maskcheck.AuditResult
    result.flagged, result.verdict, result.robust_acc, result.report("audit.html")

`import maskcheck` stays cheap: torch and the engine load on first use of an export.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it, imported on first access (PEP 562)
_EXPORTS = {
    "audit": "api",  # the engine is maskcheck.auditing, so this name is free for the function
    "audit_loader": "api",
    "ArgumentError": "api",
    "AuditResult": "report.notebook",  # results.AuditResult with .report() and the notebook view
    "CheckResult": "results",
    "Verdict": "results",
    "Severity": "results",
    "assert_no_masking": "testing",
    "load_robustbench": "robustbench_models",
    "MaskcheckError": "errors",
    "InputError": "errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    """PEP 562: load an export on first access, so `import maskcheck` does not import torch."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

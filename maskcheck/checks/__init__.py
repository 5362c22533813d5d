"""The masking checks, one file each; importing this package imports every module of this folder, which
fills `REGISTRY`, then puts it in battery order (each check's `order`)."""

import importlib
import pkgutil

from .base import REGISTRY, Check, make_check

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
_battery = sorted(REGISTRY.values(), key=lambda cls: cls.order)  # stable: equal orders keep import order
REGISTRY.clear()
REGISTRY.update((cls.name, cls) for cls in _battery)

__all__ = ["REGISTRY", "Check", "make_check"]

"""The masking checks, one file each; importing this package fills `REGISTRY` in battery order."""

from .base import REGISTRY, Check, make_check
from . import (  # noqa: F401  (import order = battery order)
    one_step,
    black_box,
    loss_disagreement,
    unbounded,
    random_sampling,
    distortion,
    gradient_health,
    logit_magnitude,
    convergence,
    autoattack_flags,
    training_phase,
    transfer,
    binarization,
)

__all__ = ["REGISTRY", "Check", "make_check"]

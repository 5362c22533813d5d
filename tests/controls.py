"""Tiny control models on digits for the audit tests: one honest CNN and known-masked variants.

Imported by the audit tests (no conftest fixtures), cached per process so each module trains once.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn

from maskcheck.controls import CONTROLS, EXPECTED
from maskcheck.data import load_dataset
from maskcheck.models import build_model
from maskcheck.training import fit, make_config


@functools.lru_cache(maxsize=None)
def digits():
    return load_dataset("digits")


@functools.lru_cache(maxsize=None)
def honest_cnn(temperature: float = 1.0, epochs: int = 8, seed: int = 0) -> nn.Module:
    """small-cnn trained on digits by the project's loop (`training.fit`; a few seconds on 2 CPU cores).

    temperature 1: natural training. Another T: defensive distillation's teacher phase (method dd),
    the logits divided by T while training and not at test time, which scales them by about T: the
    dd failure mode. Adam at a constant lr 3e-3, batch 64 (ours: quick and accurate on digits).
    """
    torch.manual_seed(seed)
    splits = digits()
    x, y = splits.train.tensors
    dd = temperature != 1.0
    cfg = make_config("dd" if dd else "natural", "digits", temperature=temperature if dd else None, epochs=epochs,
                      batch_size=64, lr=3e-3, optimizer="adam", milestones=(), seed=seed)
    return fit(build_model("small-cnn", splits.info), x, y, cfg)


# The masked wrappers live in the library (the CI regression stage audits them as TorchScript files).
MASKED = {name: (CONTROLS[name], check, mechanism) for name, (check, mechanism) in EXPECTED.items()}

"""Tiny control models on digits for the audit tests: one honest CNN and known-masked variants.

Imported by the audit tests (no conftest fixtures), cached per process so each module trains once.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from maskcheck.controls import CONTROLS, EXPECTED
from maskcheck.data import load_dataset
from maskcheck.models import build_model


@functools.lru_cache(maxsize=None)
def digits():
    return load_dataset("digits")


@functools.lru_cache(maxsize=None)
def honest_cnn(temperature: float = 1.0, epochs: int = 8, seed: int = 0) -> nn.Module:
    """small-cnn trained naturally on digits (a few seconds on 2 CPU cores).

    With `temperature` T the logits are divided by T while training and not at test time,
    which scales them by about T: the defensive-distillation (dd) failure mode.
    """
    torch.manual_seed(seed)
    splits = digits()
    x, y = splits.train.tensors
    model = build_model("small-cnn", splits.info)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            b = perm[i : i + 64]
            loss = F.cross_entropy(model(x[b]) / temperature, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


# The masked wrappers live in the library (the CI regression stage audits them as TorchScript files).
MASKED = {name: (CONTROLS[name], check, mechanism) for name, (check, mechanism) in EXPECTED.items()}

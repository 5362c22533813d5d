"""Models for the audit benchmarks, trained by maskcheck's own training loop on the dataset's defaults.

natural, trades and dd at T = 20 (the teacher phase of defensive distillation: trained at
temperature T, deployed on raw logits, so it masks gradients) are the three kinds the issue
names; they are what `train-sweep` produces, so the benchmark times the audit on real outputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from maskcheck.checkpoint import load_model
from maskcheck.training import make_config, train_run

KINDS: dict[str, tuple[str, float | None]] = {"natural": ("natural", None), "trades": ("trades", None), "dd": ("dd", 20.0)}


def train(kind: str, dataset: str, device: torch.device, data_dir: str | None = None) -> torch.nn.Module:
    """Train one model of `kind` into a temporary run folder and load it back for auditing."""
    method, temperature = KINDS[kind]
    cfg = make_config(method, dataset, temperature=temperature)
    with tempfile.TemporaryDirectory(prefix="maskcheck-bench-") as tmp:
        train_run(cfg, Path(tmp) / kind, device=device, data_dir=data_dir, progress=False)
        return load_model(Path(tmp) / kind, device=device).model


def models_for(dataset: str, device: torch.device, run_dirs: list[str], data_dir: str | None = None) -> dict[str, torch.nn.Module]:
    """The models of `run_dirs` (named by folder) or, without any, a freshly trained natural, trades and dd."""
    if run_dirs:
        return {Path(d).name: load_model(d, device=device).model for d in run_dirs}
    return {kind: train(kind, dataset, device, data_dir) for kind in KINDS}

"""Small models for the benchmarks, trained in seconds: natural, trades-like and dd-like."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskcheck import attacks
from maskcheck.checkpoint import load_model
from maskcheck.data import Splits
from maskcheck.models import build_model


def train(splits: Splits, kind: str, *, eps: float, epochs: int = 8, seed: int = 0, arch: str = "small-cnn") -> torch.nn.Module:
    """natural: CE. trades: TRADES (Zhang et al. 2019, beta 6, KL inner maximisation, 5 steps).
    dd: CE on logits / 100, deployed without the temperature (defensive distillation's scaled logits)."""
    torch.manual_seed(seed)
    x, y = splits.train.tensors if hasattr(splits.train, "tensors") else _materialise(splits.train)
    model = build_model(arch, splits.info)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    temperature = 100.0 if kind == "dd" else 1.0
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 128):
            xb, yb = x[perm[i : i + 128]], y[perm[i : i + 128]]
            if kind == "trades":
                model.eval()
                with torch.no_grad():
                    p_clean = F.softmax(model(xb), 1)
                kl = lambda logits, _y: F.kl_div(F.log_softmax(logits, 1), p_clean, reduction="none").sum(1)  # noqa: E731
                x_adv = attacks.pgd(model, xb, yb, eps=eps, steps=5, loss=kl, start="gaussian").x_adv
                model.train()
                logits = model(xb)
                loss = F.cross_entropy(logits, yb) + 6.0 * F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(logits, 1), reduction="batchmean")
            else:
                loss = F.cross_entropy(model(xb) / temperature, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _materialise(ds) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.stack([torch.as_tensor(v) for v in ys])


def models_for(splits: Splits, eps: float, run_dirs: list[str]) -> dict[str, torch.nn.Module]:
    if run_dirs:
        return {d: load_model(d).model for d in run_dirs}
    return {k: train(splits, k, eps=eps) for k in ("natural", "trades", "dd")}

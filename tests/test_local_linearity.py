"""local-linearity (issue 22): the gradient must describe the model a small step away; k-WTA's does not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from maskcheck import attacks
from maskcheck.checks.local_linearity import LocalLinearity, tie_free_start
from maskcheck.data import load_dataset
from maskcheck.models import Classifier
from maskcheck.zoo import KWTA, _relu_twin, small_cnn


def _ctx(model: nn.Module, norm: str = "linf", eps: float = 0.3, n: int = 120) -> SimpleNamespace:
    splits = load_dataset("digits")
    x, y = splits.heldout.tensors
    return SimpleNamespace(model=model.eval(), x=x[:n], y=y[:n], n=n, batch_size=50, eps=eps, norm=norm)


def _kwta_and_relu_twin(seed: int) -> tuple[nn.Module, nn.Module]:
    """An untrained small-cnn with k-WTA activations and the same weights with ReLU (no training: the jumps are
    the architecture's, and a statistic of the gradient needs no accuracy)."""
    torch.manual_seed(seed)
    info = load_dataset("digits").info
    kwta = Classifier(small_cnn(1, 10, False, lambda: KWTA(0.1)), info.mean, info.std)
    return kwta.eval(), _relu_twin(kwta)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 1.5)])
def test_kwta_is_rough_and_its_relu_twin_is_not(seed: int, norm: str, eps: float) -> None:
    kwta, relu = _kwta_and_relu_twin(seed)
    check, gen = LocalLinearity(), torch.Generator().manual_seed(seed)
    for r in check.radii:
        rough_kwta = (check._errors(_ctx(kwta, norm, eps), r * eps, gen) > check.rough_error).float().mean()
        rough_relu = (check._errors(_ctx(relu, norm, eps), r * eps, gen) > check.rough_error).float().mean()
        assert rough_kwta > 0.5, (r, float(rough_kwta))
        assert rough_relu < 0.02, (r, float(rough_relu))


def test_the_measuring_point_has_no_ties_and_stays_near_the_ball() -> None:
    """MNIST's background is exact zeros; the random start clamps half of it back to 0, where equal patches tie in
    max pooling (a kink at the point itself made 5-14% of a sound MNIST model's points rough): the check measures
    at a point with no pixel at 0 or 1, inside [s, 1 - s], within 4 s per pixel of the ball."""
    x = torch.zeros(20, 1, 8, 8).index_fill_(3, torch.tensor([3, 4]), 1.0)
    for norm, eps in (("linf", 0.3), ("l2", 1.5)):
        r = 0.01 * eps
        s = r if norm == "linf" else r / 64 ** 0.5
        x0 = tie_free_start(x, eps, norm, r, torch.Generator().manual_seed(0))
        assert bool(((x0 >= s) & (x0 <= 1 - s)).all())
        assert all(v.unique().numel() == v.numel() for v in x0.flatten(1))  # no two pixels of an image equal
        start = attacks.random_start(x, eps, norm, torch.Generator().manual_seed(0))
        assert float((x0 - start).abs().max()) <= 4 * s + 1e-7

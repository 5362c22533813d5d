"""Training throughput of natural, trades, ltd and dd against the bound the model allows.

The bound for a method is the raw forward+backward rate of the same model on the same batch
divided by the passes one of its steps needs (`Method.passes`: attack steps, extra views and
teacher forwards, a forward alone counting 1/3). A ratio near 1 means the loop, the attack and
the loss add no overhead beyond the arithmetic the method requires; the goal is >= 0.9.
Raw and method windows alternate (`--rounds`) and the medians are printed, so load from other
processes on a shared machine hits both sides of the ratio alike.

    PYTHONPATH=. python benchmarks/train_throughput.py [--device auto] [--dataset digits] [--seconds 4]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from maskcheck.config import resolve_device
from maskcheck.data import get_info, load_dataset
from maskcheck.models import build_model
from maskcheck.training import build_state, make_config, train_step

METHODS = {"natural": None, "trades": None, "ltd": 5.0, "dd": 20.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, seconds: float, batch: int) -> float:
    """Images/s of `fn` (one call = one batch), after two warm-up calls."""
    fn(), fn()
    _sync(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    _sync(device)
    return n * batch / (time.perf_counter() - start)


def raw_rate(state, x: torch.Tensor, y: torch.Tensor, seconds: float) -> float:
    """Forward + backward of the bare model with the loop's AMP / channels_last settings."""
    model, device = state.model, x.device
    amp = state.ctx.autocast or contextlib.nullcontext

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with amp():
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()

    return timed(step, device, seconds, len(y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--arch", default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=3.0, help="total timing per method and side")
    ap.add_argument("--rounds", type=int, default=5, help="alternating raw / method windows")
    args = ap.parse_args()
    device = resolve_device(args.device)
    info = get_info(args.dataset)
    x, y = next(iter(torch.utils.data.DataLoader(load_dataset(args.dataset).train, batch_size=args.batch_size or 128, shuffle=True)))
    x, y = x.to(device), y.to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    print(f"device {device}, dataset {args.dataset}, batch {len(y)}")
    print(f"{'method':<8} {'passes':>6} {'images/s':>10} {'bound':>10} {'ratio':>6}")
    for name, temperature in METHODS.items():
        cfg = make_config(name, args.dataset, arch=args.arch, temperature=temperature, batch_size=len(y))
        teacher = None
        if name in ("ltd", "dd"):
            teacher = build_model(cfg.arch, info).to(device).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        state = build_state(cfg, device, teacher)
        passes = state.method.passes(state.ctx)
        window = args.seconds / args.rounds
        raws, rates = [], []
        for _ in range(args.rounds):
            raws.append(raw_rate(state, x, y, window))
            rates.append(timed(lambda: train_step(state, x, y), device, window, len(y)))
        ratio = statistics.median(r * passes / w for r, w in zip(rates, raws))
        rate, bound = statistics.median(rates), statistics.median(raws) / passes
        print(f"{name:<8} {passes:>6.2f} {rate:>10.0f} {bound:>10.0f} {ratio:>6.2f}")


if __name__ == "__main__":
    main()

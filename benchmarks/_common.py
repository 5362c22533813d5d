"""Helpers shared by the benchmark scripts: device setup, timing, log-log fits and tables.

Every script prints a small table and its goal ratio on the last line, so a reader (or a CI
grep) finds the figure in the same place everywhere.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Sequence

import numpy as np
import torch

from maskcheck.config import resolve_device
from maskcheck.errors import MaskcheckError


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark takes (`--device`, `--threads`)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=doc)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:n]; training uses AMP + channels_last on CUDA")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the goals are for 2 CPU cores)")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Pin the CPU thread count and resolve `--device`; a bad value exits with one line, no traceback."""
    torch.set_num_threads(args.threads)
    try:
        return resolve_device(args.device)
    except MaskcheckError as e:
        raise SystemExit(f"error: {e}") from None


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a timer stops when the arithmetic is done, not when it is queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of `fn`."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def rate(fn: Callable[[], object], device: torch.device, window: float, batch: int) -> float:
    """Images/s of `fn` (one call = one batch of `batch`) over about `window` seconds, after two warm-up calls."""
    fn(), fn()
    sync(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < window:
        fn()
        n += 1
    sync(device)
    return n * batch / (time.perf_counter() - start)


def loglog_exponent(sizes: Sequence[float], times: Sequence[float]) -> float:
    """Slope of log(time) against log(size): 1.0 is linear growth, below 1 means fixed costs dominate."""
    return float(np.polyfit(np.log(sizes), np.log(times), 1)[0])


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain aligned table; floats with two decimals."""
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)), flush=True)


def verdict(value: float, goal: float, at_most: bool = True) -> str:
    """`met` / `missed` for a ratio against its goal."""
    ok = value <= goal if at_most else value >= goal
    return "met" if ok else "missed"

"""Training throughput of natural, trades, ltd and dd against the bound the model allows.

The bound for a method is the raw forward+backward rate of the same model on the same batch
divided by the passes one of its steps needs (`Method.passes`: attack steps, extra views and
teacher forwards, a forward alone counting 1/3). A ratio near 1 means the loop, the attack and
the loss add no overhead beyond the arithmetic the method requires; the goal is >= 0.9.
Raw and method windows alternate (`--rounds`) and the medians are printed, so load from other
processes on a shared machine hits both sides of the ratio alike.

    PYTHONPATH=. python benchmarks/train_throughput.py [--device auto] [--dataset digits] [--seconds 3]
        [--methods natural,trades,ltd,dd] [--compile]

Steps are timed with `train_step_on_device`, the loop's own step (no host read-back per step).
`--compile` measures everything again with `torch.compile` (training's `--compile`) and prints
the compiled bound against the eager one: the gain torch.compile brings to the arithmetic itself.
The last line is the smallest ratio over the methods (with `--compile`: the bound's gain).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, print_table, rate, setup, verdict  # noqa: E402

from maskcheck.data import get_info, load_dataset  # noqa: E402
from maskcheck.models import build_model  # noqa: E402
from maskcheck.training import build_state, make_config, train_step_on_device  # noqa: E402

METHODS = {"natural": None, "trades": None, "ltd": 5.0, "dd": 20.0}


def raw_rate(state, x: torch.Tensor, y: torch.Tensor, seconds: float) -> float:
    """Forward + backward of the bare model with the loop's AMP / channels_last settings."""
    model, device = state.wrapped, x.device  # the compiled module when compiled
    amp = state.ctx.autocast or contextlib.nullcontext

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with amp():
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()

    return rate(step, x.device, seconds, len(y))


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--arch", default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=3.0, help="total timing per method and side")
    ap.add_argument("--rounds", type=int, default=5, help="alternating raw / method windows")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--compile", action="store_true", help="also measure with torch.compile and print its gain")
    ap.add_argument("--json", default=None, help="also write the figures here, updated after each method")
    args = ap.parse_args()
    device = setup(args)
    info = get_info(args.dataset)
    x, y = next(iter(torch.utils.data.DataLoader(load_dataset(args.dataset, args.data_dir).train, batch_size=args.batch_size or 128, shuffle=True)))
    x, y = x.to(device), y.to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    rows, gains = [], []
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        cfg = make_config(name, args.dataset, arch=args.arch, temperature=METHODS[name], batch_size=len(y))
        teacher = None
        if name in ("ltd", "dd"):
            teacher = build_model(cfg.arch, info).to(device).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        row, raw_eager = measure(build_state(cfg, device, teacher), name, x, y, args)
        rows.append(row)
        _save(args.json, device, cfg.arch, rows, gains)
        if args.compile:
            row_c, raw_compiled = measure(build_state(cfg, device, teacher, compile=True), name + " (compiled)", x, y, args)
            rows.append(row_c)
            gains.append((name, raw_compiled / raw_eager))
            _save(args.json, device, cfg.arch, rows, gains)
    print(f"device {device}, dataset {args.dataset}, arch {cfg.arch}, batch {len(y)}, "
          f"AMP {'on' if device.type == 'cuda' else 'off'}")
    print_table(("method", "passes", "images/s", "bound", "ratio"), rows)
    for name, gain in gains:
        print(f"{name}: torch.compile bound / eager bound = {gain:.2f}")
    worst = min((r for r in rows if not r[0].endswith("(compiled)")), key=lambda r: r[-1])
    print(f"throughput ratio to the bound, worst method {worst[0]}: {worst[-1]:.2f} (goal >= 0.9: {verdict(worst[-1], 0.9, at_most=False)})")
    if gains:
        low = min(gains, key=lambda g: g[1])
        print(f"torch.compile gain of the bound, {low[0]}: {low[1]:.2f} (goal > 1: {verdict(low[1], 1.0, at_most=False)})")


def _save(path: str | None, device: torch.device, arch: str, rows: list, gains: list) -> None:
    if path:
        import json

        Path(path).write_text(json.dumps({
            "device": str(device), "arch": arch,
            "methods": {r[0]: {"passes": r[1], "images_per_s": float(r[2]), "bound": float(r[3]), "ratio": r[4]} for r in rows},
            "compile_gain": dict(gains)}, indent=2))


def measure(state, label: str, x: torch.Tensor, y: torch.Tensor, args) -> tuple[tuple, float]:  # noqa: ANN001
    """(table row, median raw rate): alternating raw forward+backward and method-step windows."""
    passes = state.method.passes(state.ctx)
    window = args.seconds / args.rounds
    raws, rates = [], []
    for _ in range(args.rounds):
        raws.append(raw_rate(state, x, y, window))
        rates.append(rate(lambda: train_step_on_device(state, x, y), x.device, window, len(y)))
    ratio = statistics.median(r * passes / w for r, w in zip(rates, raws))
    raw = statistics.median(raws)
    return (label, passes, f"{statistics.median(rates):.0f}", f"{raw / passes:.0f}", ratio), raw

if __name__ == "__main__":
    main()

"""LTD's two-step temperature search (Chen & Lee, Sec. 4.2), on held-out data.

Step 1: for each candidate T, train a cheap substitute on natural data with the teacher's soft
labels softmax(teacher(x) / T) (LTD with beta = 0) and measure its held-out natural accuracy.
The upper bound is the largest T such that it and every smaller candidate stay at or above
the threshold (default 0.95 x the teacher's held-out accuracy; the paper rejected 86.6% against a
~94.5% teacher on CIFAR-10, Sec. 5.3).
Step 2: for each candidate T up to that bound, train a short LTD probe and evaluate the LTD
objective (Eq. 9: soft-label KL + beta * KL(f(x) || f(x')), x' by PGD-CE) on held-out data; the
chosen T minimises it. Grid search, as the paper allows "any hyper-parameter optimization algorithm".
Every probe is an ordinary run folder under OUT, so an interrupted search resumes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from . import checkpoint
from .attacks import pgd
from .config import format_temperature, provenance, resolve_device
from .data import load_dataset
from .errors import InputError
from .fileio import atomic_write_json
from .methods.base import kl_from_probs, kl_per_example
from .training import TrainConfig, make_config, train_run

RESULT_FILE = "temperature.json"


def _trained(out: Path, cfg: Any, teacher_dir: Path | None, device: str, data_dir: Any, log: Callable[[str], None]) -> Path:
    run_dir = out / cfg.name
    if not checkpoint.is_complete_run(run_dir):
        log(f"{cfg.name}: training")
        train_run(cfg, run_dir, device=device, teacher_dir=teacher_dir, data_dir=data_dir, progress=False)
    return run_dir


def _relative(path: Path, start: Path) -> str:
    """`path` relative to `start` (POSIX separators), so committed JSON names no machine's folders."""
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


@torch.no_grad()
def ltd_objective(student: torch.nn.Module, teacher: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, temperature: float,
                  beta: float, eps: float, steps: int, seed: int) -> float:
    """Eq. 9 on (x, y): mean KL(softmax(t(x)/T) || f(x)) + beta * mean KL(f(x) || f(x')), x' = PGD-CE."""
    device = next(student.parameters()).device
    x, y = x.to(device), y.to(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    with torch.enable_grad():
        x_adv = pgd(student, x, y, eps=eps, steps=steps, loss="ce", start="gaussian", generator=gen).x_adv
    soft = torch.softmax(teacher(x).float() / temperature, dim=1)
    clean, adv = student(x), student(x_adv)
    return float(kl_from_probs(soft, clean).mean() + beta * kl_per_example(clean, adv).mean())


def select_temperature(
    out: str | Path,
    *,
    dataset: str = "digits",
    temps: list[float],
    teacher_dir: str | Path | None = None,
    min_acc: float | None = None,
    epochs: int | None = None,
    max_train: int | None = None,
    device: str = "auto",
    seed: int = 0,
    data_dir: str | Path | None = None,
    log: Callable[[str], None] = lambda _m: None,
    settings: Mapping[str, Any] | None = None,
    step2_dirs: Mapping[float, str | Path] | None = None,
) -> dict[str, Any]:
    """Run both steps; writes OUT/temperature.json and returns it (with `path`).

    `settings`: TrainConfig overrides for every substitute and probe (a sweep passes its own, so the
    probes are trained like its runs). `step2_dirs`: finished LTD runs per candidate T to use as the
    step-2 probes instead of training new ones (a sweep's own `ltd-T*` runs: same settings, no cost).
    Paths in temperature.json are relative to OUT, so the file can be committed.
    """
    out = Path(out)
    temps = sorted(temps)
    common = {**dict(settings or {}), **{k: v for k, v in dict(seed=seed, epochs=epochs, max_train=max_train).items() if v is not None}}
    if teacher_dir is None:
        teacher_dir = _trained(out, make_config("natural", dataset, name="teacher", **common), None, device, data_dir, log)
    dev = resolve_device(device)
    teacher_run = checkpoint.load_run(teacher_dir, dev)
    teacher = teacher_run.model
    x, y = load_dataset(dataset, data_dir).heldout_tensors()
    teacher_acc = float(teacher_run.run["metrics"]["clean_acc"]) if teacher_run.run else None
    threshold = min_acc if min_acc is not None else 0.95 * (teacher_acc or 1.0)
    if not 0 <= threshold <= 1:
        raise InputError(f"--min-acc must be an accuracy in [0, 1]; got {threshold}.")

    step1 = []
    for t in temps:
        cfg = make_config("ltd", dataset, **{**common, "name": f"substitute-T{format_temperature(t)}", "temperature": t, "beta": 0.0,
                                             "inner": None})
        rec = checkpoint.load_run(_trained(out / "step1", cfg, Path(teacher_dir), device, data_dir, log)).run
        step1.append({"temperature": t, "clean_acc": rec["metrics"]["clean_acc"]})
    passing = []
    for row in step1:
        if row["clean_acc"] < threshold:
            break
        passing.append(row["temperature"])
    if not passing:
        raise InputError(f"no candidate temperature keeps substitute accuracy >= {threshold:.3f} (step 1); "
                         "lower --min-acc or add smaller --temps.")
    upper = passing[-1]

    step2 = []
    for t in passing:
        cfg = make_config("ltd", dataset, **{**common, "temperature": t})
        if step2_dirs is not None and t in step2_dirs:
            probe_dir = Path(step2_dirs[t])
            if not checkpoint.is_complete_run(probe_dir):
                raise InputError(f"{probe_dir} is not a finished run; train it before the temperature search.")
        else:
            probe_dir = _trained(out / "step2", cfg, Path(teacher_dir), device, data_dir, log)
        loaded = checkpoint.load_run(probe_dir, dev)
        rc = TrainConfig.from_dict(loaded.run["config"])  # the probe's own settings (a sweep run's may differ from `common`)
        obj = ltd_objective(loaded.model, teacher, x, y, t, rc.beta, rc.eps, rc.attack_steps, seed)
        m = loaded.run["metrics"]
        step2.append({"temperature": t, "ltd_objective": obj, "clean_acc": m["clean_acc"], "pgd_acc": m["pgd_acc"],
                      "run": _relative(probe_dir, out)})
    chosen = min(step2, key=lambda r: r["ltd_objective"])["temperature"]
    result = {
        "schema_version": 1, "kind": "temperature-selection", **provenance(dev, seed), "dataset": dataset,
        "teacher": _relative(Path(teacher_dir), out), "teacher_clean_acc": teacher_acc, "threshold": threshold,
        "step1": step1, "upper_bound": upper, "step2": step2, "chosen_temperature": chosen,
    }
    path = atomic_write_json(out / RESULT_FILE, result)
    return {**result, "path": str(path)}

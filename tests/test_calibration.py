"""Calibration of the verdict: sound models must not be `masked`, known-masked ones must be, with the right mechanism.

Every model is trained by the project's own training code (training.make_config / train_run) on
digits; the masked ones are wrappers of the natural model (maskcheck.controls) or defensive
distillation at a high T. The default suite runs one seed on a cheap audit; `-m calibration` runs the
full matrix at three seeds. `python tests/test_calibration.py` prints the confusion table
(the README quotes it, with the seeds).
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from maskcheck.attacks import Rescaled
from maskcheck.auditing import run_audit
from maskcheck.checkpoint import load_run
from maskcheck.controls import OffsetLogits, make_control
from maskcheck.data import load_dataset
from maskcheck.training import make_config, train_run

# A cheaper audit than the CLI's (fewer points, iterations and queries); every check still runs.
AUDIT = dict(n=100, square_queries=300, apgd_iters=20, autoattack_standard=False, progress=False,
             overrides={"random-sampling": {"repeats": 100}, "unbounded-attack": {"pgd_steps": 30, "fmn_steps": 30}})
_ROOT = Path(tempfile.mkdtemp(prefix="maskcheck-calibration-"))


@functools.lru_cache(maxsize=None)
def trained(method: str, seed: int, temperature: float | None = None) -> nn.Module:
    """Train one digits model with the project's training loop (cached per process)."""
    run_dir = _ROOT / f"{method}-{temperature}-{seed}"
    teacher = None
    if method == "ltd":
        trained("natural", seed)
        teacher = _ROOT / f"natural-None-{seed}"
    cfg = make_config(method, "digits", seed=seed, temperature=temperature, eval_n=50, final_eval_n=100)
    train_run(cfg, run_dir, device="cpu", teacher_dir=teacher, progress=False)
    return load_run(run_dir).model.eval()


# name -> (build(seed), expected grade set, mechanism the masked ones must name)
SOUND = {
    "natural": lambda s: trained("natural", s),
    "trades": lambda s: trained("trades", s),
    "pgd-at": lambda s: trained("pgd-at", s),
    "ltd-T1": lambda s: trained("ltd", s, 1.0),
    "ltd-T20": lambda s: trained("ltd", s, 20.0),
    "natural-logits-x0.01": lambda s: Rescaled(trained("natural", s), 0.01).eval(),
}
MASKED = {  # name -> (model, mechanism, audit settings)
    "dd-T100": (lambda s: trained("dd", s, 100.0), ("saturated logits", "saturated softmax"), {}),
    "logits-x1000": (lambda s: Rescaled(trained("natural", s), 1000.0).eval(), ("saturated logits",), {}),
    "offset-1e6": (lambda s: OffsetLogits(trained("natural", s)).eval(), ("logit offset (float32 resolution)",), {}),
    "quantised": (lambda s: make_control("quantised", trained("natural", s)), ("vanishing gradients",), {}),
    "noisy (auto EOT)": (lambda s: make_control("noisy", trained("natural", s)), ("randomness",), {}),
    "noisy (no EOT)": (lambda s: make_control("noisy", trained("natural", s)), ("randomness",), {"eot": 1}),
    "detached": (lambda s: make_control("detached", trained("natural", s)), ("gradients unavailable",), {}),
}
DEFAULT_SOUND = ("natural", "trades", "natural-logits-x0.01")  # the rest (and seeds 1, 2) are slow
DEFAULT_MASKED = ("logits-x1000", "offset-1e6", "detached")


def audit(model: nn.Module, seed: int, **extra):
    return run_audit(model, load_dataset("digits"), eps=0.3, seed=seed, **{**AUDIT, **extra})


def _params(names, default, seeds=(0, 1, 2)):
    # the full matrix is its own marker (`pytest -m calibration`, ~20 min on 2 cores): not part of CI's slow stage
    return [pytest.param(n, s, marks=() if (n in default and s == 0) else pytest.mark.calibration, id=f"{n}-seed{s}")
            for n in names for s in seeds]


@pytest.mark.parametrize("name,seed", _params(SOUND, DEFAULT_SOUND))
def test_sound_model_is_not_masked(name: str, seed: int) -> None:
    result = audit(SOUND[name](seed), seed)
    assert not result.verdict.flagged, (name, result.verdict.text)
    assert result.verdict.grade in ("no masking detected", "attack-sensitive")


@pytest.mark.parametrize("name,seed", _params(MASKED, DEFAULT_MASKED))
def test_masked_model_is_masked_with_its_mechanism(name: str, seed: int) -> None:
    build, mechanisms, extra = MASKED[name]
    result = audit(build(seed), seed, **extra)
    assert result.verdict.grade == "masked", (name, result.verdict.text)
    assert set(mechanisms) & set(result.verdict.mechanisms), (name, result.verdict.mechanisms)


def confusion_table(seeds=(0, 1, 2)) -> str:
    """Markdown rows: model, expected, the grade at each seed, and the mechanisms named."""
    rows = ["| model | expected | " + " | ".join(f"seed {s}" for s in seeds) + " | mechanisms named |", "|---|---|" + "---|" * len(seeds) + "---|"]
    for name, build in SOUND.items():
        res = [audit(build(s), s) for s in seeds]
        rows.append(f"| {name} | sound | " + " | ".join(r.verdict.grade for r in res) + " | "
                    + "; ".join(sorted({m for r in res for m in r.verdict.mechanisms})) + " |")
        print(rows[-1], flush=True)
    for name, (build, _, extra) in MASKED.items():
        res = [audit(build(s), s, **extra) for s in seeds]
        rows.append(f"| {name} | masked | " + " | ".join(r.verdict.grade for r in res) + " | "
                    + "; ".join(sorted({m for r in res for m in r.verdict.mechanisms})) + " |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


if __name__ == "__main__":  # python tests/test_calibration.py [seeds, e.g. 0,1,2]
    torch.set_num_threads(2)
    print(confusion_table(tuple(int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "0").split(","))))

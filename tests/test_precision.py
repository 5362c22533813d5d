"""Issue 24: --precision reaches the inner attack, zero-gradient steps are counted, the live collapse warning fires.

The warning's controls: a run whose inner attack cannot move (the model's input gradient is
exactly zero, so every sign step is sign(0) = 0) must warn, naming the run and the epoch; an
ordinary TRADES run of the same size must not.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from maskcheck import cli, training
from maskcheck.checks.training_phase import MIN_TRAIN_ROBUST
from maskcheck.errors import InputError
from maskcheck.methods.base import InnerStats
from maskcheck.methods.trades import inner_attack
from maskcheck.training import build_state, collapse_warning, make_config, train_run

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


@pytest.mark.parametrize("inner", ["ce", "kl"])
@pytest.mark.parametrize("precision", list(DTYPES))
def test_the_inner_attack_runs_at_the_chosen_precision(precision: str, inner: str) -> None:
    cfg = make_config("trades", "digits", precision=precision, inner=inner, attack_steps=2)
    state = build_state(cfg, torch.device("cpu"))
    seen: list[torch.dtype] = []
    # the inner attack's forwards: eval mode (TRADES crafts x' in eval mode) with an input that needs a gradient
    state.model.register_forward_hook(lambda m, args, out: seen.append(out.dtype) if not m.training and args[0].requires_grad else None)
    x, y = _batch()
    inner_attack(inner, state.model, x, y, state.ctx)
    assert seen and set(seen) == {DTYPES[precision]}
    assert state.precision == precision
    assert (state.scaler is not None) == (precision == "fp16")  # fp16's range needs a GradScaler for the weights


def test_precision_defaults_keep_amp_as_before() -> None:
    cpu = torch.device("cpu")
    assert training.resolve_precision(None, cpu, None) == "fp32"
    assert training.resolve_precision(None, cpu, True) == "bf16"  # forced AMP on CPU: bf16, as before
    assert training.resolve_precision("fp16", cpu, False) == "fp16"  # the experiment's setting wins over the speed switch
    with pytest.raises(InputError, match="--precision must be one of"):
        make_config("trades", "digits", precision="fp8")


def test_fp16_is_refused_with_one_line_where_torch_has_no_fp16_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "_autocast_works", lambda device, dtype: dtype != torch.float16)
    with pytest.raises(InputError, match="no fp16 autocast on cpu"):
        build_state(make_config("trades", "digits", precision="fp16"), torch.device("cpu"))


def test_inner_stats_count_all_zero_gradients() -> None:
    stats = InnerStats()
    g = torch.ones(4, 1, 2, 2)
    g[0] = 0  # one point whose whole gradient vanished
    g[1, 0, 0, 0] = 0  # one zero coordinate elsewhere
    stats.add(g)
    assert stats.shares() == {"inner_zero_steps": 0.25, "inner_zero_coords": 5 / 16}
    assert InnerStats().shares() == {}


class ZeroInputGradient(nn.Module):
    """The forced control: the same network, but its output has an exactly zero gradient w.r.t. the input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.detach()) + 0.0 * x.sum()


def test_a_forced_zero_gradient_is_a_zero_step_for_every_point() -> None:
    cfg = make_config("ltd", "digits", temperature=5.0, attack_steps=3)
    state = build_state(cfg, torch.device("cpu"), teacher=nn.Identity())
    x, y = _batch()
    x_adv = inner_attack("ce", ZeroInputGradient(state.model), x, y, state.ctx)
    assert state.ctx.inner_stats.shares()["inner_zero_steps"] == 1.0
    assert torch.allclose(x_adv, x, atol=1e-2)  # only the 0.001 N(0, 1) start moved it
    inner_attack("ce", state.model, x, y, state.ctx)
    assert state.ctx.inner_stats.shares()["inner_zero_steps"] == 0.5  # 3 more steps, none of them zero


def test_collapse_warning_uses_the_checks_thresholds() -> None:
    base = {"epoch": 3, "train_acc": 0.97, "train_robust_acc": 0.5, "inner_zero_steps": 0.0}
    assert collapse_warning("ltd-T20", base, 8) is None
    line = collapse_warning("ltd-T20", {**base, "train_robust_acc": MIN_TRAIN_ROBUST}, 8)
    assert line is not None and "ltd-T20 epoch 3/8" in line and "training-phase-gap" in line
    assert collapse_warning("ltd-T20", {**base, "inner_zero_steps": 1.01 - MIN_TRAIN_ROBUST}, 8) is not None
    assert collapse_warning("natural", {"epoch": 1, "train_acc": 1.0}, 8) is None  # no inner attack: nothing to say


QUICK = dict(epochs=2, max_train=128, eval_n=10, final_eval_n=10, attack_steps=2)


def test_train_warns_live_when_the_inner_attack_cannot_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    real = training.build_model
    monkeypatch.setattr(training, "build_model", lambda *a, **k: ZeroInputGradient(real(*a, **k)))
    record = train_run(make_config("trades", "digits", name="forced-zero", **QUICK), tmp_path / "z", device="cpu", progress=False)
    err = capsys.readouterr().err
    assert [h["inner_zero_steps"] for h in record["metrics"]["history"]] == [1.0, 1.0]
    assert "forced-zero epoch 1/2" in err and "forced-zero epoch 2/2" in err and "all-zero input gradient" in err


def test_an_ordinary_run_does_not_warn_and_records_its_precision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        cli.main(["train", "--method", "trades", "--epochs", "2", "--max-train", "128", "--attack-steps", "2",
                  "--precision", "bf16", "--out", str(tmp_path / "t"), "--no-progress", "--device", "cpu"])
    except SystemExit as exc:
        assert exc.code == 0
    err = capsys.readouterr().err
    assert "warning" not in err
    run = json.loads((tmp_path / "t" / "run.json").read_text())
    assert run["config"]["precision"] == "bf16" and run["config"]["autocast_dtype"] == "bf16"
    for h in run["metrics"]["history"]:
        assert h["train_robust_acc"] < MIN_TRAIN_ROBUST and h["inner_zero_steps"] == 0.0


def test_a_sweep_job_warns_live_with_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from maskcheck import sweep

    real = training.build_model
    monkeypatch.setattr(training, "build_model", lambda *a, **k: ZeroInputGradient(real(*a, **k)))
    job = sweep.Job("trades-s3", "trades", None, None, "runs/s3/trades", seed=3)
    sweep.execute_job(job, str(tmp_path), "digits", 0, {**QUICK, "epochs": 1, "precision": "bf16"}, "cpu", None, False)
    assert "maskcheck: warning: trades-s3 epoch 1/1" in capsys.readouterr().err  # workers run with log=None: stderr still

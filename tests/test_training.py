"""The training loop: the science of dd vs TRADES/LTD on digits, resume, run.json, DDP, CLI errors."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as tmp_mp

from maskcheck import checkpoint, cli, training
from maskcheck.data import load_dataset
from maskcheck.errors import InputError
from maskcheck.training import Dist, build_state, lr_at, make_config, train_run, train_step

QUICK = dict(epochs=5, max_train=500, eval_n=50, final_eval_n=100)
# dd must train long enough for its logits to grow T-fold: all 1,437 training points, 5 epochs.
FULL = dict(epochs=5, eval_n=20, final_eval_n=100)


def _train(root: Path, method: str, name: str, teacher: Path | None = None, budget: dict = QUICK, **kw: object) -> Path:
    cfg = make_config(method, "digits", name=name, **{**budget, **kw})
    train_run(cfg, root / name, device="cpu", teacher_dir=teacher, progress=False)
    return root / name


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """natural and dd at T=100 (teacher + student) with the digits defaults; trades and ltd at T=5, quick."""
    root = tmp_path_factory.mktemp("zoo")
    runs = {"natural": _train(root, "natural", "natural", budget=FULL)}
    runs["dd-teacher"] = _train(root, "dd", "dd-teacher-T100", temperature=100.0, budget=FULL)
    runs["dd"] = _train(root, "dd", "dd-T100", teacher=runs["dd-teacher"], temperature=100.0, budget=FULL)
    runs["trades"] = _train(root, "trades", "trades")
    runs["ltd"] = _train(root, "ltd", "ltd-T5", teacher=runs["natural"], temperature=5.0)
    return runs


def _logit_and_grad_stats(run: Path) -> tuple[float, float]:
    """(median max|logit|, fraction of held-out points whose CE input gradient is exactly zero)."""
    model = checkpoint.load_run(run).model
    x, y = load_dataset("digits").heldout_tensors()
    x = x.clone().requires_grad_(True)
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    zero = (grad.flatten(1).abs().amax(1) == 0).float().mean().item()
    return logits.detach().abs().amax(1).median().item(), zero


def test_dd_masks_while_trades_and_ltd_do_not(zoo: dict[str, Path]) -> None:
    nat_logit, nat_zero = _logit_and_grad_stats(zoo["natural"])
    dd_logit, dd_zero = _logit_and_grad_stats(zoo["dd"])
    assert dd_logit >= 10 * nat_logit, (dd_logit, nat_logit)
    assert dd_zero > 0.5, dd_zero
    for name in ("trades", "ltd"):
        _, zero = _logit_and_grad_stats(zoo[name])
        assert zero < 0.05, (name, zero)
    assert nat_zero < 0.05


def test_dd_student_is_deployed_with_raw_logits(zoo: dict[str, Path]) -> None:
    run = json.loads((zoo["dd"] / "run.json").read_text())
    assert run["temperature"] == 100.0 and run["model_temperature"] == 1.0 and run["teacher"] == "dd-teacher-T100"
    assert float(checkpoint.load_run(zoo["dd"]).model.temperature) == 1.0


def test_run_json_has_the_documented_fields(zoo: dict[str, Path]) -> None:
    run = json.loads((zoo["ltd"] / "run.json").read_text())
    for key in ("schema_version", "maskcheck_version", "torch_version", "python_version", "device", "seed", "created",
                "name", "method", "awp", "temperature", "model_temperature", "arch", "dataset", "threat", "epochs",
                "teacher", "config", "metrics"):
        assert key in run, key
    assert run["name"] == "ltd-T5" and run["method"] == "ltd" and run["teacher"] == "natural"
    assert run["threat"] == {"eps": 0.2, "norm": "linf"}
    m = run["metrics"]
    assert 0 <= m["clean_acc"] <= 1 and 0 <= m["pgd_acc"] <= 1 and m["pgd"]["steps"] > 0
    assert [h["epoch"] for h in m["history"]] == list(range(1, run["epochs"] + 1))
    assert not (zoo["ltd"] / training.LAST_CKPT).exists()  # removed once the run is finished
    # trades is actually robust on digits, natural is not
    trades = json.loads((zoo["trades"] / "run.json").read_text())["metrics"]
    natural = json.loads((zoo["natural"] / "run.json").read_text())["metrics"]
    assert trades["pgd_acc"] > natural["pgd_acc"] + 0.1


def test_ltd_tau_is_applied_in_forward_at_test_time(zoo: dict[str, Path], tmp_path: Path) -> None:
    run = _train(tmp_path, "ltd", "ltd-tau2", teacher=zoo["natural"], temperature=5.0, tau=2.0, epochs=1, max_train=64)
    record = json.loads((run / "run.json").read_text())
    assert record["model_temperature"] == 2.0
    model = checkpoint.load_run(run).model
    x, _ = load_dataset("digits").heldout_tensors(8)
    raw = model.net((x - model.mean) / model.std)
    torch.testing.assert_close(model(x), raw / 2.0)


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, epochs_done: int) -> None:
    """Make the loop raise KeyboardInterrupt once `epochs_done` epochs are checkpointed."""
    real = training.save_last

    def save_then_maybe_stop(run_dir: Path, state: training.TrainState) -> None:
        real(run_dir, state)
        if state.epoch == epochs_done:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_last", save_then_maybe_stop)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_config("natural", "digits", epochs=3, max_train=200, eval_n=20, final_eval_n=20)
    train_run(cfg, tmp_path / "straight", device="cpu", progress=False)
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            train_run(cfg, tmp_path / "resumed", device="cpu", progress=False)
    ckpt = torch.load(tmp_path / "resumed" / training.LAST_CKPT, weights_only=True)
    assert ckpt["epoch"] == 2 and not checkpoint.is_complete_run(tmp_path / "resumed")
    record = train_run(cfg, tmp_path / "resumed", device="cpu", progress=False)
    assert [h["epoch"] for h in record["metrics"]["history"]] == [1, 2, 3]
    a = checkpoint.load_run(tmp_path / "straight").model.state_dict()
    b = checkpoint.load_run(tmp_path / "resumed").model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_resume_refuses_a_checkpoint_with_other_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_config("natural", "digits", epochs=2, max_train=64, eval_n=10, final_eval_n=10)
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train_run(cfg, tmp_path / "r", device="cpu", progress=False)
    with pytest.raises(InputError, match="other settings"):
        train_run(make_config("natural", "digits", epochs=2, max_train=64, lr=0.5), tmp_path / "r", device="cpu", progress=False)


def test_awp_run_trains_with_perturbation_and_records_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = training.AWP.apply

    def counting_apply(self: training.AWP, model: torch.nn.Module, diff: dict, sign: float) -> None:
        calls.append(int(sign))
        real(self, model, diff, sign)

    monkeypatch.setattr(training.AWP, "apply", counting_apply)
    cfg = make_config("trades", "digits", awp=True, epochs=4, max_train=64, eval_n=10, final_eval_n=10, attack_steps=2)
    assert (cfg.awp_gamma, cfg.awp_warmup, cfg.name) == (0.005, 1, "trades-awp")  # TRADES-AWP gamma, warm-up capped
    record = train_run(cfg, tmp_path / "awp", device="cpu", progress=False)
    assert record["awp"] is True and record["config"]["awp_gamma"] == 0.005
    assert calls and calls.count(1) == calls.count(-1) == 3  # 3 epochs x 1 batch after the warm-up epoch


def test_lr_schedule_and_paper_preset() -> None:
    cfg = make_config("trades", "cifar10", preset="paper")
    assert (cfg.arch, cfg.epochs, cfg.nesterov, cfg.weight_decay, cfg.attack_steps) == ("wrn-34-10", 120, True, 5e-4, 8)
    assert [round(lr_at(cfg, e), 6) for e in (0, 79, 80, 99, 100, 119)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="ltd"), "needs --temperature"),
    (dict(method="natural", awp=True), "--awp works with"),
    (dict(method="dd", temperature=-1.0), "positive"),
    (dict(method="nope"), "unknown method"),
    (dict(method="trades", temperature=5.0), "applies to dd and ltd"),
    (dict(method="natural", eps=1.5), "eps must lie in"),
])
def test_bad_training_settings_are_input_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        make_config(kwargs.pop("method"), "digits", **kwargs)


def test_every_dataset_has_its_own_training_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """No dataset silently gets another's recipe: a dataset without a row is refused by name."""
    from maskcheck.data import DATASETS

    assert set(training.DATASET_DEFAULTS) == set(DATASETS)
    monkeypatch.delitem(training.DATASET_DEFAULTS, "mnist")
    with pytest.raises(InputError, match="no training defaults for dataset 'mnist'"):
        make_config("natural", "mnist")


# ------------------------------------------------------------------------- fit (in memory)


def _fresh(cfg: training.TrainConfig) -> torch.nn.Module:
    """The model train_run would start from: seeded as build_state seeds it, then built."""
    from maskcheck.config import seed_everything
    from maskcheck.models import build_model

    seed_everything(cfg.seed)
    return build_model(cfg.arch, load_dataset(cfg.dataset).info)


def test_fit_is_the_same_loop_as_train_run(tmp_path: Path) -> None:
    """fit on the first 200 training points ends at train_run's weights (same step, schedule, shuffle)."""
    cfg = make_config("dd", "digits", temperature=5.0, epochs=2, milestones=(1,), max_train=200, eval_n=10, final_eval_n=10)
    train_run(cfg, tmp_path / "run", device="cpu", progress=False)
    saved = checkpoint.load_run(tmp_path / "run").model.state_dict()
    x, y = load_dataset("digits").train.tensors
    fitted = training.fit(_fresh(cfg), x[:200], y[:200], cfg).state_dict()
    assert fitted.keys() == saved.keys()
    for name, value in fitted.items():
        torch.testing.assert_close(value, saved[name], msg=lambda m: f"{name}: {m}")


def test_fit_on_one_hot_probabilities_equals_fit_on_labels() -> None:
    """Soft-label targets go through the same loss: one-hot probabilities train as the labels do."""
    cfg = make_config("natural", "digits", epochs=1, max_train=128)
    x, y = load_dataset("digits").train.tensors
    x, y = x[:128], y[:128]
    hard = training.fit(_fresh(cfg), x, y, cfg).state_dict()
    soft = training.fit(_fresh(cfg), x, torch.nn.functional.one_hot(y, 10).float(), cfg).state_dict()
    for name, value in hard.items():
        torch.testing.assert_close(soft[name], value, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    # and the probabilities themselves are the targets, not their argmax (uniform ones have argmax 0)
    uniform = training.fit(_fresh(cfg), x, torch.full((128, 10), 0.1), cfg).state_dict()
    argmax = training.fit(_fresh(cfg), x, torch.zeros(128, dtype=torch.long), cfg).state_dict()
    assert not all(torch.allclose(uniform[n], v) for n, v in argmax.items())


@pytest.mark.parametrize("method, targets, match", [
    ("pgd-at", "soft", "does not train on soft labels"),
    ("natural", "short", r"labels \(N,\) or probabilities"),
])
def test_fit_refuses_targets_it_cannot_use(method: str, targets: str, match: str) -> None:
    cfg = make_config(method, "digits", epochs=1)
    x, y = load_dataset("digits").train.tensors
    t = torch.full((len(y), 10), 0.1) if targets == "soft" else y[:-1]
    with pytest.raises(InputError, match=match):
        training.fit(_fresh(cfg), x, t, cfg)


# ------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_dataset("digits").train.tensors
    return x[:32], y[:32]


DDP_METHODS = ("natural", "dd")  # deterministic steps (adversarial methods draw per-rank attack noise)


def _ddp_config(method: str) -> training.TrainConfig:
    return make_config(method, "digits", temperature=10.0 if method == "dd" else None, optimizer="sgd", lr=0.1)


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: a DDP step of the loop's own train_step on its half of the batch; saves the gradients."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, y = _batch()
        half = len(y) // world
        for method in DDP_METHODS:
            state = build_state(_ddp_config(method), torch.device("cpu"), ddp=Dist(rank, world, rank))
            assert isinstance(state.wrapped, torch.nn.parallel.DistributedDataParallel)
            train_step(state, x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half])
            torch.save({n: p.grad.clone() for n, p in state.model.named_parameters()}, f"{out}/{method}{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_step_with_two_gloo_processes_matches_one_process(tmp_path: Path) -> None:
    tmp_mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for method in DDP_METHODS:
        state = build_state(_ddp_config(method), torch.device("cpu"))
        train_step(state, *_batch())
        single = {n: p.grad for n, p in state.model.named_parameters()}
        for rank in (0, 1):
            ddp = torch.load(tmp_path / f"{method}{rank}.pt", weights_only=True)
            for n, g in single.items():
                torch.testing.assert_close(ddp[n], g, rtol=1e-4, atol=1e-6, msg=lambda m: f"{method} rank {rank} {n}: {m}")


# ------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("temps", ["a,b", "-1", "0", "", "1,,2"])
def test_bad_temps_exit_2_with_one_line(temps: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["train-sweep", f"--temps={temps}", "--out", str(tmp_path / "s"), "--no-report"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "temp" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_train_cli_writes_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli_args = ["train", "--method", "natural", "--epochs", "1", "--max-train", "64", "--out", str(tmp_path / "run"),
                "--device", "cpu", "--no-progress", "--eps", "8/255"]
    try:
        cli.main(cli_args)
    except SystemExit as exc:
        assert exc.code == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["threat"]["eps"] == pytest.approx(8 / 255) and record["epochs"] == 1
    assert "clean_acc" in capsys.readouterr().out


def test_a_stored_training_config_reads_back_into_the_same_type() -> None:
    """Issue 25: run.json's `config` (settings plus how the run executed) is read back into a TrainConfig that equals
    the one that trained; a config with a setting this version does not know is refused, not half-read."""
    cfg = training.make_config("ltd", "mnist", temperature=5.0, milestones=[3, 4], attack_step_size=2 / 255, awp=True)
    stored = json.loads(json.dumps({**cfg.to_dict(), "world_size": 1, "amp": False, "autocast_dtype": None,
                                    "channels_last": False, "compile": False}))
    assert training.TrainConfig.from_dict(stored) == cfg
    assert training.TrainConfig.from_dict({**stored, "beta": 1.0}) != cfg
    with pytest.raises(InputError, match="unreadable"):
        training.TrainConfig.from_dict({**stored, "warp_speed": 9})

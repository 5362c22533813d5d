"""Issue 17's training side: --inner ablations, the training-phase record, converged teachers, the sweep plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from maskcheck.checkpoint import load_model
from maskcheck.config import PAPER_TEMPS, parse_temps
from maskcheck.errors import InputError
from maskcheck.methods import build_method
from maskcheck.methods.base import StepContext
from maskcheck.methods.trades import ce_attack, clean_target, kl_attack
from maskcheck.models import build_model
from maskcheck.data import get_info
from maskcheck.sweep import parse_arm, parse_seeds, plan_jobs
from maskcheck.training import make_config, train_run

TINY = dict(epochs=1, max_train=128, eval_n=10, final_eval_n=20, attack_steps=2)


def _ctx(seed: int = 0) -> StepContext:
    g = torch.Generator()
    g.manual_seed(seed)
    return StepContext(eps=0.2, attack_steps=3, generator=g)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = build_model("small-cnn", get_info("digits"))
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    return model, x, y


@pytest.mark.parametrize("method,inner,reference", [
    ("trades", None, "kl"), ("trades", "ce", "ce"), ("ltd", None, "ce"), ("ltd", "kl", "kl")])
def test_inner_attack_is_the_named_loss(small, method: str, inner: str | None, reference: str) -> None:
    model, x, y = small
    teacher = build_model("small-cnn", get_info("digits")).eval()
    m = build_method(method, inner=inner, temperature=5.0)
    ctx = _ctx()
    ctx.teacher = teacher
    got = m.prepare(model, x, y, ctx).x_adv
    ref_ctx = _ctx()
    want = kl_attack(model, x, y, clean_target(model, x, ref_ctx), ref_ctx) if reference == "kl" else ce_attack(model, x, y, ref_ctx)
    other = ce_attack(model, x, y, _ctx()) if reference == "kl" else kl_attack(model, x, y, clean_target(model, x, _ctx()), _ctx())
    assert torch.equal(got, want)
    assert not torch.equal(got, other)  # the two losses really give different points here


def test_inner_is_validated() -> None:
    with pytest.raises(InputError, match="--inner"):
        make_config("natural", "digits", inner="ce")
    with pytest.raises(InputError, match="--inner"):
        make_config("trades", "digits", inner="margin")


def test_paper_temperature_preset() -> None:
    assert parse_temps("paper") == list(PAPER_TEMPS) == [1, 2, 3, 5, 8, 10, 12, 15, 20]


@pytest.fixture(scope="module")
def trades_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trades") / "run"
    train_run(make_config("trades", "digits", **{**TINY, "epochs": 2}), run, device="cpu", progress=False)
    return run


def test_history_records_the_training_phase(trades_run: Path) -> None:
    history = json.loads((trades_run / "run.json").read_text())["metrics"]["history"]
    assert len(history) == 2
    for h in history:
        assert 0 <= h["train_robust_acc"] <= 1 and h["inner_success"] == pytest.approx(1 - h["train_robust_acc"])
        # x' is the inner attack's point: it can only fool more points than the clean batch misclassifies
        assert h["train_robust_acc"] <= h["train_acc"] + 1e-9


def test_natural_history_has_no_training_phase(tmp_path: Path) -> None:
    train_run(make_config("natural", "digits", **TINY), tmp_path / "n", device="cpu", progress=False)
    h = json.loads((tmp_path / "n" / "run.json").read_text())["metrics"]["history"][0]
    assert "train_robust_acc" not in h and "train_acc_eval" not in h


def test_check_reads_the_run_history(trades_run: Path) -> None:
    from maskcheck.auditing import run_audit
    from maskcheck.data import load_dataset

    loaded = load_model(trades_run, device="cpu")
    res = run_audit(loaded, load_dataset("digits"), eps=0.2, n=40, checks=["training-phase-gap"], progress=False,
                    square_queries=50, apgd_iters=5).check("training-phase-gap")
    last = json.loads((trades_run / "run.json").read_text())["metrics"]["history"][-1]
    assert res.severity.value != "skipped" and res.evidence["train_robust_acc"] == pytest.approx(last["train_robust_acc"])


@pytest.mark.parametrize("target,cap", [(0.3, 4), (0.999, 2)])
def test_teacher_stops_at_its_training_accuracy(tmp_path: Path, target: float, cap: int) -> None:
    cfg = make_config("natural", "digits", **{**TINY, "max_train": 600, "epochs": cap, "stop_train_acc": target})
    record = train_run(cfg, tmp_path / "t", device="cpu", progress=False)
    hist, m = record["metrics"]["history"], record["metrics"]
    accs = [h["train_acc_eval"] for h in hist]
    assert record["epochs"] == len(hist) <= cap
    assert all(a < target for a in accs[:-1])  # never trained past the first epoch that reached the target
    assert m["converged"] == (accs[-1] >= target)
    assert m["converged"] or record["epochs"] == cap
    if target == 0.3:
        assert record["epochs"] < cap  # 600 digits reach 30% training accuracy in far fewer than 4 epochs
    # a student records its teacher's facts
    student = train_run(make_config("ltd", "digits", temperature=5.0, **TINY), tmp_path / "s", device="cpu",
                        teacher_dir=tmp_path / "t", progress=False)
    assert student["teacher_info"]["epochs"] == record["epochs"] and student["teacher_info"]["train_acc"] == accs[-1]


def test_plan_with_seeds_arms_and_a_converged_teacher() -> None:
    jobs = plan_jobs([1, 5], ["trades", "ltd"], seeds=[0, 1], arms=[parse_arm("trades-beta1"), parse_arm("ltd-innerkl")],
                     teacher={"stop_train_acc": 0.995, "epochs": 40})
    names = [j.name for j in jobs]
    assert names[:6] == ["natural-s0", "trades-s0", "ltd-T1-s0", "ltd-T5-s0", "trades-beta1-s0", "ltd-T1-innerkl-s0"]
    by = {j.name: j for j in jobs}
    assert by["ltd-T5-s1"].teacher == "natural-s1" and by["ltd-T5-s1"].run_dir == "runs/s1/ltd-T5" and by["ltd-T5-s1"].seed == 1
    assert by["ltd-T5-innerkl-s1"].group == "ltd-T5-innerkl" and dict(by["ltd-T5-innerkl-s1"].overrides) == {"inner": "kl"}
    assert dict(by["natural-s0"].overrides) == {"stop_train_acc": 0.995, "epochs": 40}
    assert dict(by["trades-beta1-s0"].overrides) == {"beta": 1.0}
    assert all(names.index(j.teacher) < names.index(j.name) for j in jobs if j.teacher)
    # one seed, no list: the historical layout
    assert [j.run_dir for j in plan_jobs([5], ["ltd"])] == ["runs/natural", "runs/ltd-T5"]


@pytest.mark.parametrize("bad", ["trades-T5-beta1", "ltd-innermargin", "pgd-at-beta1", "trades"])
def test_bad_arm_names(bad: str) -> None:
    with pytest.raises(InputError, match="arm"):
        parse_arm(bad)


@pytest.mark.parametrize("bad", ["0,0", "a", "-1", ""])
def test_bad_seeds(bad: str) -> None:
    with pytest.raises(InputError, match="--seeds"):
        parse_seeds(bad)


@pytest.mark.slow
def test_sweep_with_seeds_converged_teacher_and_search(tmp_path: Path) -> None:
    from maskcheck.sweep import run_sweep

    settings = {**TINY, "max_train": 300}
    manifest = run_sweep(tmp_path, temps=[1.0, 20.0], methods=["ltd"], seeds=[0, 1], arms=[parse_arm("ltd-T1-innerkl")],
                         teacher_acc=0.3, teacher_epochs=3, select=True, settings=settings, device="cpu")
    on_disk = json.loads((tmp_path / "sweep.json").read_text())
    assert on_disk["teachers"] == manifest["teachers"] and set(on_disk["teachers"]) == {"natural-s0", "natural-s1"}
    for name, facts in on_disk["teachers"].items():
        run = json.loads((tmp_path / "runs" / name.replace("natural-", "") / "natural" / "run.json").read_text())
        assert facts["epochs"] == run["epochs"] and facts["converged"] == (facts["train_acc"] >= 0.3)
        student = json.loads((tmp_path / "runs" / name.replace("natural-", "") / "ltd-T20" / "run.json").read_text())
        assert student["teacher"] == name and student["teacher_info"]["train_acc"] == facts["train_acc"]
        assert student["seed"] == int(name[-1])
    sel = on_disk["selected_temperature"]
    if sel["temperature"] is not None:  # a tiny teacher may leave no T above step 1's threshold: recorded, not fatal
        result = json.loads((tmp_path / sel["file"]).read_text())
        assert sel["temperature"] == result["chosen_temperature"] in (1.0, 20.0)
        assert not Path(result["teacher"]).is_absolute() and all(not Path(r["run"]).is_absolute() for r in result["step2"])
    else:
        assert "step 1" in sel["error"]
    # rerun: everything finished, nothing retrained, the facts kept
    again = run_sweep(tmp_path, temps=[1.0, 20.0], methods=["ltd"], seeds=[0, 1], arms=[parse_arm("ltd-T1-innerkl")],
                      teacher_acc=0.3, teacher_epochs=3, select=False, settings=settings, device="cpu")
    assert again["teachers"] == manifest["teachers"]

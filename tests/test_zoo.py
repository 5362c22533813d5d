"""The broken-defense zoo (maskcheck.zoo, experiments/broken-defense-zoo): each member does what its family does.

Fast tests build every wrapper around a small untrained network (no training): shapes, [0, 1]
inputs, determinism where it should hold, and the gradient property that defines the family
(zero, useless, random, gradient-mode only, saturated off the data). One end-to-end test runs the
experiment on one member at a tiny scale. The calibration assertions (issue 22's "Done when") read
the experiment's committed results at the CLI's default settings and are marked `calibration`.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from maskcheck import zoo
from maskcheck.attacks import ce_loss, input_grad
from maskcheck.data import get_info
from maskcheck.models import build_model

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO / "experiments" / "broken-defense-zoo"
INFO = get_info("digits")


def net(in_channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    if in_channels == 1:
        return build_model("small-cnn", INFO).eval()
    return zoo.small_cnn(in_channels, 10, False, nn.ReLU).eval()


def linear() -> nn.Module:
    """An untrained linear classifier: unlike an untrained CNN, it spreads its predictions over several classes."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these tiny batches gain nothing from two, and two spin badly on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def points(n: int = 16, seed: int = 0) -> torch.Tensor:
    """Digits-like points: on the 1/16 grid, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 17, (n, 1, 8, 8), generator=g).float() / 16


def wrappers() -> dict[str, nn.Module]:
    x = points(32, seed=1)
    return {
        "thermometer": zoo.Thermometer(net(16), 16).eval(),
        "bit-depth": zoo.BitDepth(net(), 1).eval(),
        "soft-staircase": zoo.SoftStaircase(net()).eval(),
        "k-wta": zoo.small_cnn(1, 10, False, lambda: zoo.KWTA(0.1)).eval(),
        "sap": zoo.small_cnn(1, 10, False, lambda: nn.Sequential(nn.ReLU(), zoo.SAP())).eval(),
        "grad-noise": zoo.GradModeNoise(net()).eval(),
        "off-grid": zoo.OffGridLogits(net(), 16).eval(),
        "partial": zoo.PartialRounding(linear(), classes=_half_of_predictions(linear(), points(64, seed=3))).eval(),
        "below-eps": zoo.NearDataLogits(net(), x, radius=0.15).eval(),
        "always-noise": zoo.AlwaysNoise(net()).eval(),
    }


RANDOM = {"sap", "always-noise"}


def _half_of_predictions(model: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """Classes an untrained net predicts on the rounded points, the most frequent only: gates some points, not all."""
    with torch.no_grad():
        pred = model(torch.round(x * 4) / 4).argmax(1)
    counts = torch.bincount(pred, minlength=10)
    return (int(counts.argmax()),)


@pytest.mark.parametrize("name", list(wrappers()))
def test_member_takes_unit_interval_images_and_returns_logits(name: str) -> None:
    model = wrappers()[name]
    x = points(8)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == (8, 10) and torch.isfinite(a).all()
    if name in RANDOM:
        assert not torch.equal(a, b), "a stochastic member must draw anew on every forward"
    else:
        assert torch.equal(a, b), "a deterministic member must give the same logits twice"


def grad(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return input_grad(model, x, torch.zeros(len(x), dtype=torch.long), ce_loss)[1]


@pytest.mark.parametrize("name", ["thermometer", "bit-depth"])
def test_non_differentiable_transform_has_zero_gradient_and_bpda_restores_one(name: str) -> None:
    model = wrappers()[name]
    x = points(4)
    assert grad(model, x).abs().max() == 0
    model.bpda = True
    with torch.no_grad():
        assert torch.equal(model(x), wrappers()[name](x)), "BPDA must not change the forward"
    assert grad(model, x).abs().max() > 0


def test_thermometer_encoding_is_binary_and_monotone() -> None:
    t = zoo.Thermometer(nn.Identity(), 4)
    code = t.hard(torch.tensor([0.0, 0.3, 0.6, 1.0]).view(4, 1, 1, 1)).view(4, 4)
    assert set(code.unique().tolist()) <= {0.0, 1.0}
    assert code.sum(1).tolist() == [0.0, 1.0, 2.0, 4.0]  # thresholds 1/8, 3/8, 5/8, 7/8


def test_soft_staircase_stays_near_identity_but_its_derivative_changes_sign() -> None:
    s = zoo.SoftStaircase(nn.Identity(), a=8.0, k=64.0)
    x = torch.linspace(0, 1, 10001, requires_grad=True)
    y = s.hard(x)
    assert float((y - x).detach().abs().max()) <= 8.0 / (2 * math.pi * 64) + 1e-6
    (d,) = torch.autograd.grad(y.sum(), x)
    assert 0.2 < float((d < 0).float().mean()) < 0.5, "the derivative must be negative on a sizeable share"


def test_kwta_keeps_the_top_share_per_example() -> None:
    a = torch.randn(3, 100)
    out = zoo.KWTA(0.1)(a)
    assert ((out != 0).sum(1) == 10).all()
    assert torch.equal(out.abs().amax(1), a.amax(1).abs())


def test_sap_disabled_is_the_identity_and_enabled_prunes() -> None:
    sap = zoo.SAP()
    a = torch.rand(4, 50) + 0.1
    out = sap(a)
    assert (out == 0).any() and not torch.equal(out, a)
    sap.enabled = False
    assert torch.equal(sap(a), a)


def test_gradient_mode_noise_differs_only_when_autograd_records() -> None:
    model = wrappers()["grad-noise"]
    x = points(8)
    with torch.no_grad():
        assert torch.equal(model(x), model.model(x)), "the inference forward must be the clean model"
    with torch.enable_grad():
        assert not torch.equal(model(x), model.model(x)), "a gradient-mode forward must be noisy"


def test_off_grid_logits_scale_only_off_the_grid_and_keep_the_argmax() -> None:
    model = wrappers()["off-grid"]
    x = points(8)
    with torch.no_grad():
        assert torch.equal(model(x), model.model(x))
        xo = (x + 0.01).clamp(0, 1)
        assert torch.allclose(model(xo), zoo.SCALE * model.model(xo))
        assert torch.equal(model(xo).argmax(1), model.model(xo).argmax(1))


def test_partial_rounding_zeroes_the_gradient_of_gated_points_only() -> None:
    model = wrappers()["partial"]
    x = points(64, seed=3)
    gate = model.gated(x)
    assert gate.any() and (~gate).any(), "the test needs gated and open points"
    g = grad(model, x).flatten(1).abs().amax(1)
    assert (g[gate] == 0).all() and (g[~gate] > 0).all()


def test_near_data_logits_saturate_within_the_radius_only() -> None:
    model = wrappers()["below-eps"]
    x = model.reference.view(-1, 1, 8, 8)[:4]
    with torch.no_grad():
        assert model.switched(x).all() and model.switched((x + 0.1).clamp(0, 1)).all()
        far = (x + 0.3 * torch.sign(torch.randn_like(x))).clamp(0, 1)
        assert not model.switched(far).any()
        assert torch.allclose(model(x), zoo.SCALE * model.model(x))


def test_every_member_is_documented_with_the_attack_that_broke_it() -> None:
    for m in zoo.MEMBERS.values():
        assert m.kind in ("masked", "sound") and m.defense and m.broken_by
        assert m.truth in ("bpda", "unscaled", "inference", "eot", "smooth", "battery")
        assert (m.kind == "masked") == bool(m.expected)
    assert {"trades", "pgd-at", "trades-noise", "natural-flat"} <= {n for n, m in zoo.MEMBERS.items() if m.kind == "sound"}


def test_ground_truth_is_the_per_point_worst_case_and_below_pgd_ce() -> None:
    model = zoo.OffGridLogits(net(), 16).eval()
    member = zoo.MEMBERS["off-grid-logits"]
    x, y = points(12), torch.arange(12) % 10
    res = zoo.ground_truth(member, model, x, y, 0.3, seed=0)
    assert {"clean", "pgd-ce", "pgd-margin", "adaptive0:pgd-ce", "truth"} <= set(res)
    for k, v in res.items():
        if k not in ("pgd-ce", "truth"):
            assert (res["truth"] <= v).all(), k
    # the saturated logits hide the attack from PGD-CE; the unscaled view finds it
    assert res["truth"].float().mean() <= res["pgd-ce"].float().mean()


def _run_module():
    spec = importlib.util.spec_from_file_location("zoo_run", EXPERIMENT / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_experiment_end_to_end_on_one_member_resumes(tmp_path: Path) -> None:
    """One member, reduced audit on 40 points, seed 0: a row JSON, results.json and table.md; a rerun skips it."""
    run = _run_module()
    out, report = tmp_path / "out", tmp_path / "report"
    args = ["--datasets", "digits", "--seeds", "0", "--members", "natural-flat", "--reduced", "--n", "40",
            "--out", str(out), "--report", str(report)]
    assert run.main(args) == 0
    row = json.loads((out / "digits" / "natural-flat-s0-reduced.json").read_text())
    assert row["n"] == 40 and row["kind"] == "sound" and row["grade"] in ("no masking detected", "attack-sensitive",
                                                                          "inconclusive", "masked")
    assert 0.0 <= row["true_robust_acc"] <= row["clean_acc"] and row["audit_seconds"] > 0
    assert json.loads((report / "results.json").read_text())["rows"][0]["member"] == "natural-flat"
    assert "natural-flat" in (report / "table.md").read_text()
    mtime = (out / "digits" / "natural-flat-s0-reduced.json").stat().st_mtime_ns
    assert run.main(args) == 0
    assert (out / "digits" / "natural-flat-s0-reduced.json").stat().st_mtime_ns == mtime, "a finished row must be skipped"


def test_power_table_follows_the_checks_rules() -> None:
    spec = importlib.util.spec_from_file_location("zoo_power", EXPERIMENT / "power.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # black-box-gap FAILs from 3% extra breaks: at n=1000 that is 30 points, and a 2% share almost never gets there
    assert mod.firing_count(1000, 0.002, 0.01, 0.03, inclusive=True) == 30
    assert mod.power(1000, 0.02, 30) < 0.05 and mod.power(1000, 0.05, 30) > 0.99
    assert "| black-box-gap (fail_gap -> masked)" in mod.table([1000, 359], [0.02, 0.05, 0.1, 0.2])


# ---------------------------------------------------------------------- calibration (issue 22, "Done when")


def _default_rows() -> list[dict]:
    path = REPO / "reports" / "zoo" / "results.json"
    if not path.is_file():
        pytest.skip("reports/zoo/results.json missing: run experiments/broken-defense-zoo/run.py at the default settings")
    return [r for r in json.loads(path.read_text())["rows"] if not r["reduced"]]


def _row(dataset: str, member: str, seed: int) -> dict:
    rows = [r for r in _default_rows() if (r["dataset"], r["member"], r["seed"]) == (dataset, member, seed)]
    if not rows:
        pytest.skip(f"no default-settings row for {dataset} {member} seed {seed}: run "
                    f"experiments/broken-defense-zoo/run.py --datasets {dataset} --seeds {seed} --members {member}")
    return rows[0]


CASES = [pytest.param(d, m, s, marks=pytest.mark.calibration, id=f"{d}-{m}-s{s}")
         for d in ("digits", "mnist") for m in zoo.MEMBERS for s in (0, 1, 2)]


@pytest.mark.parametrize("dataset,member,seed", CASES)
def test_zoo_member_is_graded_by_its_measured_truth(dataset: str, member: str, seed: int) -> None:
    row = _row(dataset, member, seed)
    # A defense built to mask is held to its measured truth (PGD-CE overstates it by >= 5 pp: the audit must say
    # masked, and why). A sound defense is not: TRADES on 2,000 digits points has PGD-CE-20 18 pp above its
    # truth at seed 0 (2026-12-07), a weak attack on informative gradients, which APGD closes: attack-sensitive.
    if row["masks"] and zoo.MEMBERS[member].kind == "masked":
        assert row["grade"] == "masked", row["verdict"]
        expected = zoo.MEMBERS[member].expected  # the code's list (rows written before a mechanism was added keep the old one)
        # a named mechanism may join several findings of one check ("randomness (gradient mode only), EOT not converged")
        assert any(e in m for e in expected for m in row["mechanisms"]), (expected, row["mechanisms"])
    if zoo.MEMBERS[member].kind == "sound":
        assert row["grade"] != "masked", row["verdict"]
    # the quote may not overstate the truth by more than 3 pp; below it, the audit's own attacks (Square, transfer,
    # APGD-T) found more than the truth attack did, so the truth is at most the quote (bit-depth, TRADES: 1-3 pp)
    assert row["quote"] is not None and row["quote"]["acc"] - row["true_robust_acc"] <= 0.03 + 1e-9, \
        (row["quote"], row["true_robust_acc"])


def test_a_members_initialisation_depends_only_on_its_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The net is built before `_fit` seeds; its first weights must not depend on what the process drew before
    (which members ran first). Failed before: the zoo's TRADES base trained in two processes differed
    (clean 97.2% vs 96.9% at seed 1, 2026-12-07)."""
    from maskcheck.data import load_dataset

    monkeypatch.setattr(zoo, "fit", lambda net, x, y, cfg: net)  # initialisation only
    splits = load_dataset("digits")
    info = get_info("digits")
    torch.manual_seed(1)
    a = zoo._fit(build_model("small-cnn", info), "natural", "digits", splits, 0)
    torch.rand(1000)  # another member ran first
    b = zoo._fit(build_model("small-cnn", info), "natural", "digits", splits, 0)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name

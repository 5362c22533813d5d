"""`maskcheck audit` through cli.main: files written and exit codes 0 / 1 / 2."""

from __future__ import annotations

import json

import pytest
import torch

from controls import digits, honest_cnn
from maskcheck import cli
from maskcheck.checkpoint import save_run
from maskcheck.models import build_model

QUICK = ["--n", "60", "--square-queries", "100", "--quiet", "--checks", "logit-magnitude,gradient-health"]


def _run_folder(path, model_temperature: float = 1.0):
    """A maskcheck run folder holding the honest CNN; model_temperature 1e-4 multiplies its logits by 1e4."""
    model = build_model("small-cnn", digits().info, temperature=model_temperature)
    model.load_state_dict({**honest_cnn().state_dict(), "temperature": model.temperature})
    record = {"name": path.name, "method": "natural", "arch": "small-cnn", "dataset": "digits", "seed": 0,
              "temperature": None, "model_temperature": model_temperature, "threat": {"eps": 0.3, "norm": "linf"}}
    return save_run(path, model, record)


def _main(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        cli.main(["audit", *args])
    return info.value.code


def test_clean_model_exits_0_and_writes_audit_json_into_the_run(tmp_path, capsys) -> None:
    run = _run_folder(tmp_path / "natural")
    assert _main([str(run), *QUICK, "--fail-on-flag"]) == 0
    data = json.loads((run / "audit.json").read_text())
    assert data["schema_version"] == 1 and data["model"]["name"] == "natural"
    assert [c["check"] for c in data["checks"]] == ["gradient-health", "logit-magnitude"]
    assert "no masking detected by 2 checks" in capsys.readouterr().out


def test_flagged_model_exits_1_with_fail_on_flag_and_0_without(tmp_path) -> None:
    run = _run_folder(tmp_path / "scaled", model_temperature=1e-4)
    out = tmp_path / "a.json"
    assert _main([str(run), *QUICK, "--fail-on-flag", "--out", str(out)]) == 1
    assert json.loads(out.read_text())["verdict"]["flagged"] is True
    assert _main([str(run), *QUICK, "--out", str(out)]) == 0


@pytest.mark.parametrize("extra,match", [
    (["--checks", "nope"], "unknown check"), (["--n", "0"], "--n must be"), (["--eps", "2"], "eps must lie in"),
    (["--eps", "abc"], "eps must be a number"), (["--norm", "l7"], "--norm must be"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, extra: list[str], match: str) -> None:
    run = _run_folder(tmp_path / "natural")
    assert _main([str(run), "--quiet", "--n", "20", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]


def test_missing_model_exits_2(tmp_path, capsys) -> None:
    assert _main([str(tmp_path / "nothing"), "--quiet"]) == 2
    assert "model not found" in capsys.readouterr().err


def test_fail_on_grades(tmp_path, capsys) -> None:
    """Logits x 3: the median margin rounds softmax to 1 (a WARN) without CE gradients underflowing:
    attack-sensitive, which fails only the strict --fail-on warn."""
    run = _run_folder(tmp_path / "sharp", model_temperature=1 / 3)
    args = [str(run), "--n", "60", "--quiet", "--checks", "logit-magnitude", "--out", str(tmp_path / "a.json")]
    assert _main([*args, "--fail-on-flag"]) == 0
    verdict = json.loads((tmp_path / "a.json").read_text())["verdict"]
    assert verdict["grade"] == "attack-sensitive" and verdict["flagged"] is False, verdict
    assert "attack-sensitive: softmax rounds to 1" in capsys.readouterr().out
    assert _main([*args, "--fail-on", "masked"]) == 0
    assert _main([*args, "--fail-on", "warn"]) == 1
    assert _main([*args, "--fail-on", "never"]) == 2


def test_autoattack_standard_is_opt_in_for_a_model_and_for_a_sweep(tmp_path, monkeypatch) -> None:
    """FAB-T runs only for the AutoAttack-standard figure, and only when asked (issue 23): by default
    the figure is absent and the config says so; --no-autoattack-standard is the default, still
    accepted; on a sweep folder the flag reaches the sweep's audit stage (its re-audit rule)."""
    run = _run_folder(tmp_path / "natural")
    args = [str(run), "--n", "30", "--square-queries", "50", "--quiet", "--checks", "black-box-gap"]
    assert _main([*args, "--autoattack-standard", "--out", str(tmp_path / "with.json")]) == 0
    assert _main([*args, "--out", str(tmp_path / "without.json")]) == 0
    assert _main([*args, "--no-autoattack-standard", "--out", str(tmp_path / "alias.json")]) == 0
    with_fab, without, alias = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("with", "without", "alias"))
    assert with_fab["config"]["autoattack_standard"] is True and "autoattack-standard" in with_fab["robust_acc"]
    assert without["config"]["autoattack_standard"] is False and "autoattack-standard" not in without["robust_acc"]
    assert alias["config"] == without["config"] and alias["robust_acc"] == without["robust_acc"]
    assert without["robust_acc"]["square"] == with_fab["robust_acc"]["square"]  # the rest of the audit is unchanged

    from maskcheck import sweep

    seen = {}
    from maskcheck import launch

    monkeypatch.setattr(sweep, "audit_sweep", lambda sweep_dir, **kw: seen.update(kw) or [])
    monkeypatch.setattr(launch, "refuse_live_jobs", lambda sweep_dir: None)  # it reads (and validates) sweep.json
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_text("{}")
    assert _main([str(tmp_path / "sweep"), "--quiet", "--autoattack-standard", "--jobs", "2"]) == 0
    assert seen["autoattack_standard"] is True and seen["jobs"] == 2
    assert _main([str(tmp_path / "sweep"), "--quiet", "--no-autoattack-standard"]) == 0
    assert seen["autoattack_standard"] is False


def test_jobs_is_for_a_sweep_folder(tmp_path, capsys) -> None:
    run = _run_folder(tmp_path / "natural")
    assert _main([str(run), "--quiet", "--jobs", "2"]) == 2
    assert "--jobs runs a sweep folder's audits in parallel" in capsys.readouterr().err


def test_an_inconclusive_audit_fails_fail_on_warn_only(tmp_path, capsys) -> None:
    """Issue 22: a collapsed model (the last layer zeroed, its bias picks class 3) is graded inconclusive,
    which `--fail-on warn` fails and `--fail-on masked` does not."""
    model = build_model("small-cnn", digits().info)
    sd = {**honest_cnn().state_dict(), "temperature": model.temperature}
    last = [k for k, v in sd.items() if k.endswith("weight") and v.ndim == 2][-1]
    sd[last] = torch.zeros_like(sd[last])
    sd[last[: -len("weight")] + "bias"] = torch.eye(sd[last].shape[0])[3] * 5
    model.load_state_dict(sd)
    record = {"name": "dead", "method": "natural", "arch": "small-cnn", "dataset": "digits", "seed": 0,
              "temperature": None, "model_temperature": 1.0, "threat": {"eps": 0.3, "norm": "linf"}}
    run = save_run(tmp_path / "dead", model, record)
    args = [str(run), "--n", "60", "--quiet", "--checks", "logit-magnitude", "--out", str(tmp_path / "a.json")]
    assert _main([*args, "--fail-on", "masked"]) == 0
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["verdict"]["grade"] == "inconclusive"
    assert data["points"]["selection"] == "seeded random sample" and len(data["points"]["indices"]) == 60  # not the first 60
    assert "inconclusive: degenerate model" in capsys.readouterr().out
    assert _main([*args, "--fail-on", "warn"]) == 1

"""The Python API: maskcheck.audit / audit_loader, the caller's state, errors, AuditResult conveniences."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import maskcheck
from controls import MASKED, digits, honest_cnn
from maskcheck.api import ArgumentError
from maskcheck.results import AuditResult
from maskcheck.testing import assert_no_masking

FAST = ["gradient-health", "logit-magnitude"]
SMALL = dict(eps=0.1, checks=FAST, progress=False, square_queries=50, apgd_iters=10)  # quick, not a real number
QUICK = dict(square_queries=50, apgd_iters=10)


def points(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    return digits().heldout_tensors(n)


def _stable(d: dict) -> dict:
    d = {k: v for k, v in d.items() if k not in ("created", "timings")}
    d["checks"] = [{k: v for k, v in c.items() if k != "duration_s"} for c in d["checks"]]
    return d


def _rng_states() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def _same_rng(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


@pytest.fixture(scope="module")
def honest_result():
    x, y = points()
    return maskcheck.audit(honest_cnn(), x, y, **SMALL)


@pytest.fixture(scope="module")
def scaled_result():
    x, y = points()
    return maskcheck.audit(MASKED["scaled"][0](honest_cnn()), x, y, **SMALL)


def test_import_maskcheck_does_not_load_torch() -> None:
    code = "import sys, maskcheck; assert 'torch' not in sys.modules, 'torch loaded'; print(callable(maskcheck.audit))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_audit_is_the_api_function_and_the_engine_keeps_its_own_module() -> None:
    import maskcheck.auditing  # importing the engine must not shadow the function (it once did: same name)
    from maskcheck.api import audit

    assert maskcheck.audit is audit and callable(maskcheck.audit)
    # the public result is the JSON record plus the HTML views, which live with the report (issue 25: no cycles)
    assert issubclass(maskcheck.AuditResult, AuditResult) and maskcheck.AuditResult is not AuditResult


def test_audit_leaves_the_callers_model_and_generators_as_found() -> None:
    model = MASKED["scaled"][0](honest_cnn()).train()
    model.model.eval()  # a mixed state: the wrapper trains, the inner net does not
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    grad_owner = list(model.parameters())[1]
    grad = torch.ones_like(grad_owner)
    grad_owner.grad = grad
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    before = _rng_states()
    try:
        x, y = points()
        maskcheck.audit(model, x, y, **SMALL)
        assert [m.training for m in model.modules()] == modes
        assert [p.requires_grad for p in model.parameters()] == flags
        assert grad_owner.grad is grad and torch.equal(grad, torch.ones_like(grad))
        assert _same_rng(before, _rng_states())
    finally:
        frozen.requires_grad_(True)
        grad_owner.grad = None


class _FailsLater(nn.Module):
    """Answers the API's probe, then breaks inside the engine (as a buggy model might)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("boom")
        return self.inner(x)


def test_state_is_restored_when_the_audit_fails() -> None:
    model = _FailsLater(honest_cnn()).train()
    before = _rng_states()
    x, y = points()
    with pytest.raises(RuntimeError, match="boom"):
        maskcheck.audit(model, x, y, **SMALL)
    assert model.training and _same_rng(before, _rng_states())
    honest_cnn().eval()


def test_same_seed_same_result_and_a_new_seed_is_a_new_draw(honest_result) -> None:
    x, y = points()
    again = maskcheck.audit(honest_cnn(), x, y, **SMALL)
    assert _stable(again.to_dict()) == _stable(honest_result.to_dict())
    assert honest_result.provenance["device"] == "cpu"  # the model's own device


def test_audit_loader_reads_the_first_n_points(honest_result) -> None:
    x, y = digits().heldout_tensors(100)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    result = maskcheck.audit_loader(honest_cnn(), loader, n=40, **SMALL)
    assert result.n == 40
    assert _stable(result.to_dict()) == _stable(honest_result.to_dict())


def test_n_caps_and_numpy_inputs_work() -> None:
    x, y = points(30)
    result = maskcheck.audit(honest_cnn(), x.numpy(), y.numpy(), n=1000, **SMALL)
    assert result.n == 30


BAD = [
    (dict(eps=0), "eps"), (dict(eps=1.5), "eps"), (dict(eps="a lot"), "eps"), (dict(eps=True), "eps"),
    (dict(norm="l3"), "norm"), (dict(n=0), "n"), (dict(n=2.5), "n"), (dict(checks=["nope"]), "checks"),
    (dict(checks=[]), "checks"), (dict(seed=-1), "seed"), (dict(eot=0), "eot"), (dict(device="tpu"), "device"),
    (dict(num_classes=7), "num_classes"), (dict(square_queries=0), "square_queries"),
]


@pytest.mark.parametrize("kwargs,param", BAD, ids=[f"{p}={list(k.values())[0]!r}" for k, p in BAD])
def test_bad_arguments_raise_value_errors_naming_the_parameter(kwargs: dict, param: str) -> None:
    x, y = points(8)
    args = {**SMALL, **kwargs}
    with pytest.raises(ValueError) as info:
        maskcheck.audit(honest_cnn(), x, y, **args)
    assert isinstance(info.value, ArgumentError) and info.value.param == param
    assert str(info.value).startswith(f"{param}: ") and "--" not in str(info.value)


@pytest.mark.parametrize("case,param", [
    ("x outside [0, 1]", "x"), ("uint8 x", "x"), ("y float", "y"), ("y too short", "y"), ("label 10", "y"),
    ("not a module", "model"), ("wrong output", "model"),
])
def test_bad_data_and_models_name_the_parameter(case: str, param: str) -> None:
    x, y = points(8)
    model: object = honest_cnn()
    if case == "x outside [0, 1]":
        x = x * 4 - 2
    elif case == "uint8 x":
        x = (x * 255).to(torch.uint8)
    elif case == "y float":
        y = y.float()
    elif case == "y too short":
        y = y[:3]
    elif case == "label 10":
        y = y.clone()
        y[0] = 10
    elif case == "not a module":
        model = lambda t: t  # noqa: E731
    elif case == "wrong output":
        model = nn.Identity()
    with pytest.raises(ArgumentError) as info:
        maskcheck.audit(model, x, y, **SMALL)
    assert info.value.param == param, str(info.value)


def test_result_conveniences(honest_result, scaled_result, tmp_path) -> None:
    assert honest_result.flagged == [] and not honest_result.verdict.flagged
    names = [c.check for c in scaled_result.flagged]
    assert "logit-magnitude" in names and scaled_result.verdict.flagged  # x1e4 logits saturate
    assert names == [c.check for c in scaled_result.checks if c.flagged] and len(names) == scaled_result.verdict.n_flagged
    # robust accuracies only for the attacks the chosen checks needed (gradient-health, logit-magnitude: none)
    assert all(0.0 <= v <= 1.0 for v in scaled_result.robust_acc.values())
    saved = scaled_result.save(tmp_path / "audit.json")
    assert json.loads(scaled_result.to_json()) == json.loads(saved.read_text())  # the document save() writes
    back = AuditResult.load(saved)
    assert back.to_dict() == scaled_result.to_dict() and [c.check for c in back.flagged] == names
    reloaded = maskcheck.AuditResult.load(saved)  # the public class reads a file back with its HTML views
    assert type(reloaded) is maskcheck.AuditResult and reloaded.to_dict() == scaled_result.to_dict()
    assert reloaded.report(tmp_path / "reloaded.html").read_text().count(scaled_result.verdict.text) >= 1
    assert "logit-magnitude" in scaled_result.summary() and scaled_result.verdict.text in scaled_result.summary()


def test_report_from_memory_is_the_page_maskcheck_report_renders(scaled_result, tmp_path) -> None:
    from maskcheck.report import render_report

    path = scaled_result.save(tmp_path / "audit.json")
    from_file = render_report([path], tmp_path / "cli.html").read_text()
    from_memory = scaled_result.report(tmp_path / "api.html").read_text()

    def normal(html: str) -> str:
        html = re.sub(r"rendered [0-9T:+-]+\.", "rendered X.", html)
        # the report names its sources relative to itself (issue 17), so the file is just "audit.json"
        return (html.replace(str(path), "SOURCE").replace("<code>audit.json</code>", "<code>SOURCE</code>")
                .replace("&lt;memory&gt;", "SOURCE"))

    assert normal(from_memory) == normal(from_file)
    assert scaled_result.verdict.text in from_memory


def test_repr_html_shows_verdict_checks_and_figures_escaped(scaled_result) -> None:
    x, y = points(20)
    hostile = maskcheck.audit(honest_cnn(), x, y, name="<script>alert(1)</script>", **SMALL)
    html = hostile._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html
    html = scaled_result._repr_html_()
    assert "<table>" in html and scaled_result.verdict.text in html
    for c in scaled_result.checks:
        assert c.check in html
    n_plots = 1 + sum(len(c.plots) for c in scaled_result.checks)
    assert html.count('src="data:image/png;base64,') == n_plots


def test_assert_no_masking_lists_flagged_checks_and_summaries() -> None:
    x, y = points()
    masked = MASKED["scaled"][0](honest_cnn())
    checks = [*FAST, "autoattack-flags"]  # the last one has nothing to flag on a deterministic model
    with pytest.raises(AssertionError) as info:
        assert_no_masking(masked, x, y, eps=0.1, checks=checks, **QUICK)
    message = str(info.value)
    result = maskcheck.audit(masked, x, y, **{**SMALL, "checks": checks})
    assert result.flagged and all(f"{c.check}: {c.summary}" in message for c in result.flagged)
    assert not result.check("autoattack-flags").flagged and "autoattack-flags" not in message  # only flagged ones
    result = assert_no_masking(honest_cnn(), x, y, eps=0.1, checks=FAST, **QUICK)
    assert result.flagged == []

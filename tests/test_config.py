"""Argument parsers: every accepted value round-trips, every bad one is a one-line InputError."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskcheck.config import (
    ThreatModel, derived_seed, format_temperature, parse_eps, parse_name_list, parse_temps, resolve_device,
)
from maskcheck.errors import InputError

positive = st.floats(min_value=0.0, exclude_min=True, allow_nan=False, allow_infinity=False)
in_unit = st.floats(min_value=0.0, max_value=1.0, exclude_min=True, allow_nan=False)
fast = settings(max_examples=150, deadline=None)


def _one_line_input_error(fn, *args) -> InputError:  # noqa: ANN001
    with pytest.raises(InputError) as err:
        fn(*args)
    assert "\n" not in str(err.value)
    return err.value


# ---------------------------------------------------------------------- temperatures


@fast
@given(st.lists(positive, min_size=1, max_size=8))
def test_temps_round_trip(temps: list[float]) -> None:
    assert parse_temps(",".join(map(repr, temps))) == list(dict.fromkeys(temps))
    assert parse_temps(" , ".join(format(t, ".17g") for t in temps)) == list(dict.fromkeys(temps))


@pytest.mark.parametrize("text", ["a,b", "-1", "0", "", " ", "1,,2", "1,", "nan", "inf", "1,-inf", "2,0.0", "1;2", "5,x"])
def test_bad_temps_are_refused(text: str) -> None:
    err = _one_line_input_error(parse_temps, text)
    assert "positive" in str(err)


@fast
@given(st.text(max_size=20))
def test_temps_parser_never_crashes(text: str) -> None:
    """Any text gives positive finite temperatures or an InputError, never another exception."""
    try:
        temps = parse_temps(text)
    except InputError:
        return
    assert temps and all(math.isfinite(t) and t > 0 for t in temps)


def test_format_temperature() -> None:
    assert [format_temperature(t) for t in (5.0, 2.5, 100.0)] == ["5", "2.5", "100"]


# ------------------------------------------------------------------------------ eps


@fast
@given(in_unit)
def test_eps_in_unit_interval_round_trips(eps: float) -> None:
    assert parse_eps(repr(eps)) == eps and parse_eps(eps) == eps


@fast
@given(st.integers(1, 1000), st.integers(1, 1000))
def test_eps_fractions(a: int, b: int) -> None:
    if a <= b:
        assert parse_eps(f"{a}/{b}") == float(Fraction(a, b))
    else:
        _one_line_input_error(parse_eps, f"{a}/{b}")


@fast
@given(st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0, exclude_min=True), st.just(math.nan)))
def test_eps_outside_unit_interval_is_refused(eps: float) -> None:
    err = _one_line_input_error(parse_eps, repr(eps))
    assert "(0, 1]" in str(err)
    _one_line_input_error(parse_eps, eps)
    _one_line_input_error(ThreatModel, eps)


@pytest.mark.parametrize("text", ["", "abc", "8/0", "1/2/3", "0", "-0.1", "1.5", "inf", "nan", "255/8"])
def test_bad_eps_text(text: str) -> None:
    _one_line_input_error(parse_eps, text)


@fast
@given(st.text(max_size=12))
def test_eps_parser_never_crashes(text: str) -> None:
    try:
        eps = parse_eps(text)
    except InputError:
        return
    assert 0 < eps <= 1


def test_threat_model() -> None:
    assert ThreatModel(8 / 255).to_dict() == {"eps": 8 / 255, "norm": "linf"}
    assert ThreatModel(0.5, "l2").norm == "l2"
    err = _one_line_input_error(ThreatModel, 0.3, "l1")
    assert "linf" in str(err) and "l2" in str(err)


# ------------------------------------------------------------------------ name lists


def test_name_list() -> None:
    valid = ["dd", "trades", "ltd"]
    assert parse_name_list("ltd, dd,ltd", valid, "method") == ["ltd", "dd"]
    err = _one_line_input_error(parse_name_list, "dd,awp", valid, "method")
    assert "'awp'" in str(err) and all(v in str(err) for v in valid)
    _one_line_input_error(parse_name_list, " , ", valid, "method")


@fast
@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1))
def test_name_list_round_trips(names: list[str]) -> None:
    assert parse_name_list(",".join(names), ["a", "b", "c"], "x") == list(dict.fromkeys(names))


# --------------------------------------------------------------------------- devices


def test_resolve_device_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("") == resolve_device("auto")


@pytest.mark.parametrize("spec", ["tpu", "gpu", "mps0", "cpu:0:1"])
def test_unknown_device_is_refused(spec: str) -> None:
    assert "auto, cpu or cuda" in str(_one_line_input_error(resolve_device, spec))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_gpu_is_refused(spec: str) -> None:
    assert "--device cpu" in str(_one_line_input_error(resolve_device, spec))


@pytest.mark.parametrize("spec", ["cuda:x", "cudax", "cuda:-1", "cuda:1:2"])
def test_malformed_cuda_spec_is_refused(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a GPU visible, a malformed `cuda...` spec must still be an InputError (torch raises RuntimeError)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    _one_line_input_error(resolve_device, spec)


def test_cuda_index_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert "only 2 GPU" in str(_one_line_input_error(resolve_device, "cuda:2"))


@fast
@given(st.text(max_size=10))
def test_device_parser_never_crashes(spec: str) -> None:
    try:
        dev = resolve_device(spec)
    except InputError:
        return
    assert dev.type in ("cpu", "cuda")


# ----------------------------------------------------------------------------- seeds


def test_derived_seed_is_stable_and_separates_names() -> None:
    assert derived_seed(0, "pgd") == derived_seed(0, "pgd")
    assert len({derived_seed(0, "pgd"), derived_seed(1, "pgd"), derived_seed(0, "square")}) == 3


def test_a_stored_audit_config_answers_whether_it_is_the_same_audit() -> None:
    """Issue 25: audit.json's config, read back into AuditConfig, compares itself (no field-by-field code)."""
    from maskcheck.config import AuditConfig, ThreatModel

    asked = AuditConfig(ThreatModel(0.2), n=359, square_queries=1000)
    stored = {"threat": {"eps": 0.2, "norm": "linf"}, "n": 359, "seed": 0, "config": asked.to_dict(), "checks": []}
    assert asked.difference(AuditConfig.from_audit_json(stored)) is None
    partial = {**stored, "config": {**asked.to_dict(), "checks": ["gradient-health"], "eot": 20}}
    assert asked.difference(AuditConfig.from_audit_json(partial)) == "checks ['gradient-health'] -> None"
    assert AuditConfig(ThreatModel(0.2), n=359, square_queries=1000, checks=("gradient-health",)).difference(
        AuditConfig.from_audit_json(partial)) == "eot 20 -> None"
    assert asked.difference(AuditConfig.from_audit_json({**stored, "threat": {"eps": 0.3, "norm": "linf"}})) == "eps 0.3 -> 0.2"
    # audit.json before `config`: the seed of its provenance, Square's queries from the black-box evidence, FAB-T on
    old = {"threat": {"eps": 0.2, "norm": "linf"}, "n": 359, "seed": 3,
           "checks": [{"check": "black-box-gap", "evidence": {"square_queries": 1000}}]}
    recovered = AuditConfig.from_audit_json(old)
    assert (recovered.seed, recovered.square_queries, recovered.autoattack_standard) == (3, 1000, True)
    with pytest.raises(InputError, match="unreadable"):
        AuditConfig.from_audit_json({**stored, "config": {**asked.to_dict(), "n": "many"}})

"""`maskcheck audit` integrations: rb:<RobustBench name> offline, --data files and folders, --normalize."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from controls import digits, honest_cnn
from maskcheck import cli
from maskcheck.data import get_info, load_points, parse_normalize
from maskcheck.models import normalized
from maskcheck.errors import InputError

QUICK = ["--quiet", "--square-queries", "20", "--checks", "logit-magnitude"]
CIFAR = get_info("cifar10")


def _main(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        cli.main(["audit", *args])
    return info.value.code


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskcheck: error: "), err
    return err[0]


# ------------------------------------------------------------------------------ rb:


@pytest.fixture(scope="module")
def rb_zoo():
    from maskcheck.robustbench_models import _alias_autoattack

    _alias_autoattack()
    pytest.importorskip("robustbench", reason="pip install 'maskcheck[robustbench]'")
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")]


def test_rb_model_audits_offline_from_a_placed_checkpoint(rb_zoo, tmp_path) -> None:
    """A generated Wong2020Fast checkpoint where RobustBench looks for it; no network is used."""
    torch.manual_seed(0)
    net = rb_zoo["Wong2020Fast"]["model"]().eval()
    target = tmp_path / "models" / "cifar10" / "Linf" / "Wong2020Fast.pt"
    target.parent.mkdir(parents=True)
    torch.save(net.state_dict(), target)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    images = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()  # channels-last uint8, as users store them
    x_back = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        pred = net(x_back).argmax(1)
    y = torch.where(torch.arange(6) < 3, pred, (pred + 1) % 10)  # three points right, three wrong: clean acc 1/2
    np.savez(tmp_path / "points.npz", x=images, y=y.numpy())
    out = tmp_path / "audit.json"
    # eps 0.5 breaks an untrained network at once, so the expensive attacks have no survivor to run on
    code = _main(["rb:Wong2020Fast", "--dataset", "cifar10", "--threat", "Linf", "--eps", "0.5", "--rb-model-dir",
                  str(tmp_path / "models"), "--data", str(tmp_path / "points.npz"), "--n", "6", "--out", str(out), *QUICK])
    assert code == 0
    audit = json.loads(out.read_text())
    assert audit["model"]["name"] == "rb:Wong2020Fast" and audit["model"]["format"] == "robustbench"
    assert audit["threat"] == {"eps": 0.5, "norm": "linf"} and audit["dataset"] == "cifar10:points.npz"
    assert audit["n"] == 6 and audit["clean_acc"] == 0.5


def test_rb_threat_models_use_the_leaderboard_budgets() -> None:
    from maskcheck.robustbench_models import checkpoint_path, standard_threat

    assert standard_threat("Linf") == (8 / 255, "linf") and standard_threat("l2") == (0.5, "l2")
    assert checkpoint_path("X", "cifar100", "L2", "m").as_posix() == "m/cifar100/L2/X.pt"
    with pytest.raises(InputError, match="Linf or L2"):
        standard_threat("corruptions")


def test_rb_missing_checkpoint_says_where_to_put_it(rb_zoo, tmp_path, capsys) -> None:
    assert _main(["rb:Carmon2019Unlabeled", "--rb-model-dir", str(tmp_path), *QUICK]) == 2
    line = _one_line_error(capsys)
    assert str(tmp_path / "cifar10" / "Linf") in line and "Carmon2019Unlabeled.pt" in line


def test_rb_unknown_name_suggests_the_close_one(rb_zoo, tmp_path, capsys) -> None:
    assert _main(["rb:Wong2020Fas", "--rb-model-dir", str(tmp_path), *QUICK]) == 2
    assert "Did you mean Wong2020Fast" in _one_line_error(capsys)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # what a malicious checkpoint does: run code when unpickled
        return (open, (self.marker, "w"))


def test_rb_checkpoint_carrying_code_is_refused_without_running_it(rb_zoo, tmp_path, capsys) -> None:
    target = tmp_path / "cifar10" / "Linf" / "Wong2020Fast.pt"
    target.parent.mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    torch.save({"state_dict": _Payload(str(marker))}, target)
    assert _main(["rb:Wong2020Fast", "--rb-model-dir", str(tmp_path), *QUICK]) == 2
    assert "not plain weights" in _one_line_error(capsys) and not marker.exists()


# ---------------------------------------------------------------------------- --data


def _digits_points(n: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    return digits().heldout_tensors(n)


def test_pt_and_npz_files_give_the_same_points(tmp_path) -> None:
    x, y = _digits_points()
    torch.save({"x": x, "y": y}, tmp_path / "p.pt")
    np.savez(tmp_path / "p.npz", x=x.squeeze(1).numpy(), y=y.numpy())  # (N, H, W): one channel implied
    info = get_info("digits")
    for name in ("p.pt", "p.npz"):
        xb, yb = load_points(tmp_path / name, info)
        assert torch.equal(xb, x) and torch.equal(yb, y)
    xb, _ = load_points(tmp_path / "p.pt", info, n=5)
    assert len(xb) == 5


def test_image_folder_labels_by_integer_folder_names(tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in (0, 3, 11):  # 11 sorts before 3 as text: the number must win
        (tmp_path / "imgs" / str(label)).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "imgs" / str(label) / f"{i}.png")
    x, y = load_points(tmp_path / "imgs", get_info("cifar100"))
    assert x.shape == (6, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert sorted(y.tolist()) == [0, 0, 3, 3, 11, 11]
    x2, y2 = load_points(tmp_path / "imgs", get_info("cifar100"), n=6)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # the sample order is fixed


def _bad_files(tmp_path):
    x, y = _digits_points(4)
    cases = {}
    np.savez(tmp_path / "nokeys.npz", images=x.numpy())
    cases["nokeys.npz"] = "lacks the array(s) x, y"
    np.savez(tmp_path / "objects.npz", x=np.array([object()] * 4, dtype=object), y=y.numpy())
    cases["objects.npz"] = "need pickle"
    torch.save({"x": x * 3, "y": y}, tmp_path / "range.pt")
    cases["range.pt"] = "lie in [0, 1]"
    torch.save({"x": x, "y": y + 10}, tmp_path / "labels.pt")
    cases["labels.pt"] = "labels must lie in 0..9"
    torch.save({"x": x[:, :, :4], "y": y}, tmp_path / "shape.pt")
    cases["shape.pt"] = "(N, 1, 8, 8)"
    torch.save({"x": _Payload(str(tmp_path / "ran")), "y": y}, tmp_path / "code.pt")
    cases["code.pt"] = "not plain tensors"
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04garbage")
    cases["trunc.pt"] = "not a readable PyTorch file"
    (tmp_path / "empty").mkdir()
    cases["empty"] = "not an ImageFolder directory"
    cases["missing.npz"] = "not found"
    (tmp_path / "x.csv").write_text("1,2\n")
    cases["x.csv"] = "unknown kind"
    return cases


def test_bad_data_files_are_one_line_input_errors(tmp_path) -> None:
    for name, match in _bad_files(tmp_path).items():
        with pytest.raises(InputError) as info:
            load_points(tmp_path / name, get_info("digits"))
        assert match in str(info.value) and "\n" not in str(info.value), (name, str(info.value))
    assert not (tmp_path / "ran").exists()


def test_bad_data_exits_2_through_the_cli(tmp_path, capsys) -> None:
    from maskcheck.checkpoint import save_weights
    from maskcheck.models import build_model

    save_weights(tmp_path / "m.safetensors", build_model("small-cnn", digits().info))  # untrained: never audited
    torch.save({"x": torch.ones(2, 1, 8, 8) * 2, "y": torch.zeros(2, dtype=torch.long)}, tmp_path / "bad.pt")
    assert _main([str(tmp_path / "m.safetensors"), "--dataset", "digits", "--arch", "small-cnn",
                  "--data", str(tmp_path / "bad.pt"), *QUICK]) == 2
    assert "lie in [0, 1]" in _one_line_error(capsys)


# ------------------------------------------------------------------------ --normalize


def test_parse_normalize_forms() -> None:
    assert parse_normalize("cifar10", 3) == (CIFAR.mean, CIFAR.std)
    assert parse_normalize("0.5,0.25", 3) == ((0.5,) * 3, (0.25,) * 3)
    assert parse_normalize("0.1,0.2,0.3,1,2,3", 3) == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    for bad in ("0.5", "a,b", "0.5,0", "1,2,3", "mnist"):
        with pytest.raises(InputError):
            parse_normalize(bad, 3)


def test_normalized_model_sees_standardised_inputs() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x, _ = _digits_points(5)
    wrapped = normalized(net, 0.3, 0.38)
    assert torch.allclose(wrapped(x), net((x - 0.3) / 0.38))


def test_cli_normalize_wraps_the_model(tmp_path) -> None:
    """A raw network trained on standardised digits, audited on raw pixels through --normalize."""
    from maskcheck.checkpoint import export_model

    model = honest_cnn()  # its Classifier normalises inside; its .net expects standardised inputs
    export_model(model.net, torch.rand(2, 1, 8, 8), tmp_path / "net.pt2")
    x, y = _digits_points(30)
    torch.save({"x": x, "y": y}, tmp_path / "p.pt")
    out = tmp_path / "a.json"
    info = digits().info
    norm = ",".join(str(v) for v in (*info.mean, *info.std))
    assert _main([str(tmp_path / "net.pt2"), "--dataset", "digits", "--data", str(tmp_path / "p.pt"), "--normalize", norm,
                  "--n", "30", "--out", str(out), *QUICK]) == 0
    with torch.no_grad():
        expected = float((model(x).argmax(1) == y).float().mean())
    assert json.loads(out.read_text())["clean_acc"] == pytest.approx(expected)

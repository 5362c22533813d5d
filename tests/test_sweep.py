"""The temperature sweep: plan, manifest, skip finished runs, resume after a crash, parallel workers."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from maskcheck import checkpoint
from maskcheck.errors import InputError
from maskcheck.sweep import SWEEP_FILE, plan_jobs, run_sweep

REPO = Path(__file__).resolve().parents[1]
TINY = dict(epochs=1, max_train=64, eval_n=10, final_eval_n=20, attack_steps=2, milestones=(1,))  # a tuple, as presets have


def test_plan_has_one_shared_teacher_and_teachers_first() -> None:
    jobs = plan_jobs([1, 2, 5, 10, 15, 20], ["dd", "trades", "ltd"])
    names = [j.name for j in jobs]
    assert len(jobs) == 1 + 12 + 1 + 6 and names.count("natural") == 1 and names.count("trades") == 1
    for i, j in enumerate(jobs):
        assert set(j.depends_on) <= set(names[:i]), j
        assert j.run_dir == f"runs/{j.name}"
    assert {j.teacher for j in jobs if j.method == "ltd"} == {"natural"}
    assert next(j for j in jobs if j.name == "dd-T5").teacher == "dd-teacher-T5"
    rslad = plan_jobs([5], ["rslad", "pgd-at"])
    assert [j.name for j in rslad] == ["natural", "trades", "rslad", "pgd-at"] and rslad[2].teacher == "trades"


def test_unknown_sweep_method_is_an_input_error() -> None:
    with pytest.raises(InputError, match="valid: dd"):
        plan_jobs([1], ["dd", "mart"])


def _stamps(sweep: Path) -> dict[str, tuple[int, int]]:
    return {p.name: ((p / "run.json").stat().st_mtime_ns, (p / "model.safetensors").stat().st_mtime_ns)
            for p in sorted((sweep / "runs").iterdir()) if checkpoint.is_complete_run(p)}


def test_interrupted_sweep_resumes_without_retraining(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    kwargs = dict(temps=[1.0, 20.0], methods=["dd", "ltd"], dataset="digits", device="cpu", settings=TINY)

    def stop_at_dd_t20(msg: str) -> None:
        if msg == "dd-T20: training":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, log=stop_at_dd_t20, **kwargs)
    before = _stamps(sweep)
    assert set(before) == {"natural", "dd-teacher-T1", "dd-T1", "dd-teacher-T20"}
    log: list[str] = []
    manifest = run_sweep(sweep, log=log.append, **kwargs)
    after = _stamps(sweep)
    assert set(after) == {j["name"] for j in manifest["jobs"]} and len(after) == 7
    assert {k: after[k] for k in before} == before  # finished runs were not retrained
    assert sum(m.endswith("finished, skipped") for m in log) == 4
    on_disk = json.loads((sweep / SWEEP_FILE).read_text())
    for key in ("schema_version", "kind", "dataset", "arch", "temps", "methods", "seed", "eps", "norm", "jobs"):
        assert key in on_disk, key
    assert on_disk["kind"] == "sweep" and on_disk["temps"] == [1.0, 20.0] and on_disk["eps"] == 0.2
    assert {tuple(sorted(j)) for j in on_disk["jobs"]} == {("depends_on", "group", "method", "name", "overrides", "run_dir", "seed", "teacher", "temperature", "variant")}
    ltd = json.loads((sweep / "runs" / "ltd-T20" / "run.json").read_text())
    assert ltd["teacher"] == "natural" and ltd["temperature"] == 20.0 and ltd["model_temperature"] == 1.0
    with pytest.raises(InputError, match="seed"):
        run_sweep(sweep, seed=1, **kwargs)


def test_parallel_workers_respect_dependencies(tmp_path: Path) -> None:
    sweep = tmp_path / "par"
    run_sweep(sweep, temps=[5.0], methods=["ltd", "pgd-at"], dataset="digits", device="cpu", jobs=2, settings=TINY)
    runs = {p.name: json.loads((p / "run.json").read_text()) for p in (sweep / "runs").iterdir()}
    assert set(runs) == {"natural", "ltd-T5", "pgd-at"}
    assert runs["ltd-T5"]["teacher"] == "natural"
    # the student started after its teacher had finished: its run took less time than has passed since
    teacher_done = (sweep / "runs" / "natural" / "run.json").stat().st_mtime
    student_done = (sweep / "runs" / "ltd-T5" / "run.json").stat().st_mtime
    assert student_done - teacher_done >= runs["ltd-T5"]["metrics"]["train_seconds"] * 0.9


# ------------------------------------------------------------------- crash safety (issue 8)


def _sweep_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "maskcheck", "train-sweep", "--temps", "1,20", "--methods", "dd,ltd", "--epochs", "2",
            "--max-train", "100", "--attack-steps", "2", "--out", str(out), "--device", "cpu", "--jobs", "2", "--no-report"]


def _check_intact(sweep: Path) -> None:
    """Every file a reader might open is complete: manifests parse, weights load, checkpoints load."""
    if (sweep / SWEEP_FILE).exists():
        json.loads((sweep / SWEEP_FILE).read_text())
    for run in (sweep / "runs").iterdir() if (sweep / "runs").exists() else []:
        if (run / "run.json").exists():
            json.loads((run / "run.json").read_text())
            assert checkpoint.is_complete_run(run), f"{run}: run.json without weights"
            checkpoint.load_run(run)
        if (run / "last.ckpt").exists():
            torch.load(run / "last.ckpt", weights_only=True)


@pytest.mark.slow
def test_sweep_survives_sigkill_at_a_random_moment(tmp_path: Path) -> None:
    """Kill the sweep (parent and workers) once a random number of runs finished, plus a random delay."""
    seed = int(os.environ.get("MASKCHECK_KILL_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    after_runs, extra = rng.randint(0, 5), rng.uniform(0.0, 2.0)
    print(f"SIGKILL {extra:.2f} s after {after_runs} finished runs (MASKCHECK_KILL_SEED={seed})")
    out = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(_sweep_cmd(out), cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while len(list(out.glob("runs/*/run.json"))) < after_runs and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(extra)
    assert proc.poll() is None, "the sweep finished before it could be killed; raise its size"
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes, mid-write or not
    proc.wait()
    time.sleep(0.5)
    _check_intact(out)
    finished = _stamps(out) if (out / "runs").exists() else {}
    rerun = subprocess.run(_sweep_cmd(out), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    _check_intact(out)
    after = _stamps(out)
    assert len(after) == 7
    assert {k: after[k] for k in finished} == finished  # nothing finished was retrained
    assert not list(out.rglob("*.tmp")), "half-written temp files left behind"
    assert not list(out.rglob("last.ckpt")), "finished runs keep no resume checkpoint"

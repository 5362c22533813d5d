"""The temperature sweep: plan, manifest, skip finished runs, resume after a crash, parallel workers."""

from __future__ import annotations

import json
import operator
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
from maskcheck.sweep import (SWEEP_FILE, WorkerPlan, audit_settings_differ, audit_sweep, plan_jobs, plan_workers, run_pool,
                             run_sweep)

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


# ------------------------------------------------------------- worker planning (issue 13)


@pytest.mark.parametrize("jobs, devices, tasks, cores, workers, threads, on", [
    (1, ["cpu"], 20, 2, 1, 2, ("cpu",)),           # one worker gets every core
    (2, ["cpu"], 20, 2, 2, 1, ("cpu",)),           # cores split between workers
    (6, ["cpu"], 20, 2, 2, 1, ("cpu",)),           # never more CPU workers than cores
    (6, ["cpu"], 1, 2, 1, 2, ("cpu",)),            # never more workers than tasks
    (6, ["cuda:0"], 20, 16, 4, 4, ("cuda:0",)),    # several workers share one GPU, capped
    (2, ["cuda:0"], 20, 16, 2, 4, ("cuda:0",)),
    (6, ["cuda:0", "cuda:1"], 20, 16, 6, 2, ("cuda:0", "cuda:1")),
    (1, ["cuda:0", "cuda:1"], 20, 16, 1, 4, ("cuda:0",)),
    (6, ["cuda:0"], 20, 2, 2, 1, ("cuda:0",)),     # a GPU box with few cores: one worker per core
])
def test_plan_workers(jobs: int, devices: list[str], tasks: int, cores: int, workers: int, threads: int,
                      on: tuple[str, ...]) -> None:
    plan = plan_workers(jobs, devices, tasks, cores)
    assert (plan.workers, plan.threads, plan.devices) == (workers, threads, on)
    assert plan.workers * plan.threads <= max(cores, plan.workers)  # no oversubscription of the CPU
    assert str(plan.workers) in plan.describe() and plan.reason


def test_plan_workers_rejects_no_workers() -> None:
    with pytest.raises(InputError, match="--jobs"):
        plan_workers(0, ["cpu"], 3, 2)


def test_pool_shares_one_device_between_workers_and_keeps_dependencies() -> None:
    """Two workers on one device: both get it; a task starts only after the task it depends on."""
    order: list[str] = []
    results: dict[str, str] = {}
    deps = {"a": (), "b": ("a",), "c": ()}
    # operator.add is a top-level function a spawned worker can import: work("a", "gpu") == "agpu"
    run_pool(["a", "b", "c"], operator.add, WorkerPlan(2, ("gpu",), 1, "test"), name=str, depends_on=deps.__getitem__,
             on_start=lambda t, dev: order.append(t), on_done=lambda t, r: results.__setitem__(t, r))
    assert results == {"a": "agpu", "b": "bgpu", "c": "cgpu"}
    assert order.index("b") > order.index("a")


def _torch_threads(_task: str, _device: str) -> tuple[int, int]:
    """A pool task (top level, so a spawned worker can import it): the worker's torch thread counts."""
    return torch.get_num_threads(), torch.get_num_interop_threads()


def test_pool_workers_split_the_cores_not_oversubscribe_them() -> None:
    """Issue 23: 2 workers x 1 intra-op thread and 1 inter-op thread each on 2 cores, as planned."""
    results: dict[str, tuple[int, int]] = {}
    run_pool(["a", "b"], _torch_threads, plan_workers(2, ["cpu"], 2, 2), name=str, on_done=lambda t, r: results.__setitem__(t, r))
    assert results == {"a": (1, 1), "b": (1, 1)}


def test_usable_cores_follow_the_cpu_affinity(monkeypatch) -> None:
    """A process pinned to one core of many (taskset, a cgroup cpuset) plans for one core, not os.cpu_count()."""
    from maskcheck import sweep

    monkeypatch.setattr(sweep.os, "sched_getaffinity", lambda _pid: {3}, raising=False)
    assert sweep.usable_cores() == 1
    assert plan_workers(2, ["cpu"], 14, sweep.usable_cores()).workers == 1


def test_stage_clock_eta_scales_the_time_so_far_by_the_weight_left() -> None:
    """The ETA: wall time so far x weight left / weight done; one log line per finished task."""
    from maskcheck.sweep import StageClock, SweepTimes

    lines: list[str] = []
    clock = StageClock("audit", {"natural": 1.0, "trades": 6.0, "ltd-T1": 6.0}, lines.append)
    clock.started -= 70.0  # 70 s into the stage
    clock.begun["trades"] = clock.started + 10.0
    assert clock.eta() is None  # nothing finished: no estimate
    clock.done("trades", "no masking detected")
    assert clock.eta(clock.started + 70.0) == pytest.approx(70.0 * 7.0 / 6.0)
    assert lines == ["audit: trades: no masking detected (60 s; 1/3 done, about 82 s left)"]
    clock.done("natural"), clock.done("ltd-T1"), clock.stop()
    assert clock.eta() == 0.0 and "left" not in lines[-1]
    summary = SweepTimes(audits=clock, report=2.0).summary()
    assert summary[0].startswith("where the time went") and "audits 70 s (3 models" in summary[1] and "report 2 s" in summary[2]


def test_pool_reports_tasks_that_wait_forever() -> None:
    with pytest.raises(InputError, match="b <- missing"):
        run_pool(["b"], operator.add, WorkerPlan(1, ("cpu",), 1, "test"), name=str, depends_on=lambda t: ("missing",))


# ------------------------------------------------------- re-audit on settings (issue 15)

SAMPLE_AUDIT = REPO / "reports" / "digits" / "data" / "runs" / "s0" / "natural" / "audit.json"


@pytest.mark.parametrize("change, reason", [
    ({}, None),
    ({"n": 1000}, None),          # asked for more than the split holds: the stored audit used all of it
    ({"n": 200}, "n 359 -> 200"),
    ({"seed": 1}, "seed 0 -> 1"),
    ({"square_queries": 100}, "square queries 1000 -> 100"),  # the sample was audited with Square at 1000
    ({"eps": 0.1}, "eps"),
    ({"norm": "l2"}, "norm"),
])
def test_stored_audit_is_redone_only_when_its_settings_differ(change: dict, reason: str | None) -> None:
    audit = json.loads(SAMPLE_AUDIT.read_text())
    asked = {"n": audit["n"], "seed": 0, "square_queries": audit["config"]["square_queries"], "eps": audit["threat"]["eps"],
             "norm": "linf", **change}
    why = audit_settings_differ(audit, {"eps": asked["eps"], "norm": asked["norm"]}, asked["n"], asked["seed"],
                                asked["square_queries"], heldout_size=lambda: audit["n"],
                                autoattack_standard=audit["config"]["autoattack_standard"])
    assert why == reason if reason is None else reason in why


def test_an_audit_config_object_takes_precedence() -> None:
    audit = json.loads(SAMPLE_AUDIT.read_text())
    audit["config"] = {"n": 1000, "seed": 0, "square_queries": 300, "autoattack_standard": False}  # the default since issue 23
    same = audit_settings_differ(audit, audit["threat"], 1000, 0, 300, heldout_size=lambda: 359)
    assert same is None
    assert "n 1000 -> 200" in audit_settings_differ(audit, audit["threat"], 200, 0, 300, heldout_size=lambda: 359)


def test_audit_sweep_reaudits_on_changed_settings_not_on_file_times(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    run_sweep(sweep, temps=[1.0], methods=["pgd-at"], dataset="digits", device="cpu", settings=TINY)
    quick = dict(seed=0, square_queries=20, device="cpu", progress=False)
    log: list[str] = []
    audit_sweep(sweep, n=10, log=log.append, **quick)
    audits = {name: sweep / "runs" / name / "audit.json" for name in ("natural", "pgd-at")}
    assert all(p.is_file() for p in audits.values())
    stamps = {k: p.stat().st_mtime_ns for k, p in audits.items()}
    os.utime(sweep / "runs" / "natural" / "run.json")  # a newer run.json alone is no reason to audit again
    log.clear()
    audit_sweep(sweep, n=10, log=log.append, **quick)
    assert {k: p.stat().st_mtime_ns for k, p in audits.items()} == stamps and not any("auditing again" in m for m in log)
    audit_sweep(sweep, n=12, log=log.append, **quick)
    assert sum("settings changed (n 10 -> 12)" in m for m in log) == 2
    assert all(json.loads(p.read_text())["n"] == 12 for p in audits.values())
    log.clear()
    audit_sweep(sweep, n=12, log=log.append, autoattack_standard=True, **quick)  # FAB-T asked for: a different audit
    assert sum("autoattack standard False -> True" in m for m in log) == 2
    assert all(json.loads(p.read_text())["config"]["autoattack_standard"] is True for p in audits.values())
    assert all("autoattack-standard" in json.loads(p.read_text())["robust_acc"] for p in audits.values())


def test_a_converged_teacher_trains_at_constant_lr() -> None:
    """The dataset's lr schedule decays at a fixed epoch (MNIST after 4): a teacher trained until it
    reaches its target must not have its lr cut by it (an MNIST teacher stalled at 81% that way)."""
    from maskcheck.sweep import teacher_settings
    from maskcheck.training import lr_at, make_config

    overrides = teacher_settings(0.995, 30)
    cfg = make_config("natural", "mnist", **overrides)
    assert cfg.stop_train_acc == 0.995 and cfg.epochs == 30
    assert lr_at(cfg, 29) == lr_at(cfg, 0) == cfg.lr
    assert lr_at(make_config("natural", "mnist"), 4) < make_config("natural", "mnist").lr  # the plain run keeps its schedule


def test_a_stored_sweep_answers_whether_it_is_the_same_experiment() -> None:
    """Issue 25: sweep.json is read back into a SweepConfig; a stored sweep says itself whether a rerun belongs in its
    folder. sweep.json stores the teacher's milestones as a list; the rerun plans them as a tuple: same sweep."""
    from maskcheck.sweep import SweepConfig, _manifest, parse_arm

    asked = SweepConfig.build(temps=[1.0, 5.0], methods=["ltd", "trades"], dataset="mnist", seeds=[1, 2],
                              settings={"milestones": (80, 100), "epochs": None}, arms=[parse_arm("ltd-T5-innerkl")],
                              teacher_acc=0.995, teacher_epochs=30, select=True)
    stored = json.loads(json.dumps(_manifest(asked.plan(), asked, "cpu")))
    assert SweepConfig.from_manifest(stored) == asked  # read back into the same type, arms and seeds included
    assert asked.seed == 1 and asked.settings == {"milestones": [80, 100]}
    assert asked.difference(stored) is None
    assert SweepConfig.build(temps=[20.0], methods=["dd"], dataset="mnist", seeds=[1, 2], settings={"milestones": [80, 100]},
                             teacher_acc=0.995, teacher_epochs=30).difference(stored) is None  # more temps or methods: same folder
    other_teacher = SweepConfig.build(dataset="mnist", seeds=[1, 2], settings={"milestones": [80, 100]}, teacher_acc=0.99,
                                      teacher_epochs=30)
    assert other_teacher.difference(stored).startswith("teacher=")
    assert SweepConfig.build(dataset="mnist", seeds=[1, 2], settings={"milestones": [80, 100], "eps": 0.2},
                             teacher_acc=0.995, teacher_epochs=30).difference(stored).startswith("eps=")
    assert SweepConfig(dataset="mnist", seeds=(1, 2)).difference(stored).startswith("settings=")
    with pytest.raises(InputError, match="stored settings are unreadable"):
        SweepConfig.from_manifest({"temps": [1.0]})
    with pytest.raises(InputError, match="add ltd"):
        SweepConfig(methods=("trades",), select=True)


def test_an_audit_of_the_first_n_points_is_redone_on_a_seeded_sample() -> None:
    """Issue 22: audits before `points` used the first n held-out points; the same n is now a seeded random
    sample, so such an audit is stale unless it covered the whole split (the same set either way)."""
    audit = json.loads(SAMPLE_AUDIT.read_text())
    audit.pop("points", None)
    audit["n"] = audit["config"]["n"] = 200
    args = (audit["threat"], 200, 0, audit["config"]["square_queries"])
    aa = audit["config"]["autoattack_standard"]
    assert "seeded random sample" in audit_settings_differ(audit, *args, heldout_size=lambda: 359, autoattack_standard=aa)
    audit["points"] = {"selection": "seeded random sample", "seed": 0}
    assert audit_settings_differ(audit, *args, heldout_size=lambda: 359, autoattack_standard=aa) is None

"""The slurm launcher (issue 18): config validation, job planning, and a tiny digits sweep run through
submitit's LocalExecutor (real submitit code, local processes) with one job preempted and one cancelled.

The real-Slurm test is tests/test_slurm_cluster.py (slow; .ci/slurm-cluster.sh brings up a one-node cluster).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch
from typer.testing import CliRunner

from maskcheck import checkpoint, launch
from maskcheck.cli import app
from maskcheck.errors import InputError
from maskcheck.launch import (Backend, JobCall, SlurmConfig, Task, format_status, launch as run_launch, load_config,
                              parse_slurm_time, slurm_sweep, sweep_status, validate_config)
from maskcheck.sweep import SweepConfig, audit_sweep, run_sweep

# Tiny but real: 16 epochs of 64 digits leave a window to interrupt a run between its first last.ckpt
# and its end, however fast the machine (with 4, only 3 epochs were left after the first checkpoint).
TINY = dict(epochs=16, max_train=64, eval_n=10, final_eval_n=20, attack_steps=2, milestones=(16,))
AUDIT = dict(n=10, seed=0, square_queries=20)
LOCAL = SlurmConfig(executor="local", cpus=1, time=30)


# ------------------------------------------------------------------ config validation


@pytest.mark.parametrize("text, minutes", [("90", 90), ("4:00:00", 240), ("30:00", 30), ("1-12:00:00", 2160),
                                           ("2-0", 2880), ("0:30:01", 31)])
def test_slurm_time_formats(text: str, minutes: int) -> None:
    assert parse_slurm_time(text) == minutes


@pytest.mark.parametrize("raw, message", [
    ({"time": "soon"}, "minutes or a Slurm time"),
    ({"time": "0"}, "at least one minute"),
    ({"gpus": -1}, "gpus must be an integer >= 0"),
    ({"gpus": "two"}, "gpus must be an integer"),
    ({"cpus": 0}, "cpus must be an integer >= 1"),
    ({"mem": "lots"}, "Slurm size such as 32G"),
    ({"partiton": "gpu"}, "unknown slurm setting(s) partiton"),
    ({"executor": "pbs"}, "executor must be slurm or local"),
    ({"sbatch": {"dependency": "afterok:1"}}, "set by maskcheck itself"),
    ({"sbatch": {"Bad Key": 1}}, "not a long option name"),
    ({"sbatch": "exclusive"}, "table of extra sbatch options"),
    ({"setup": [1]}, "list of shell lines"),
    ({"partition": "a\nb"}, "one-line string"),
])
def test_bad_slurm_settings_are_one_line_input_errors(raw: dict, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        validate_config(raw, "test")
    assert "\n" not in str(info.value)


def test_config_file_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "slurm.toml"
    toml.write_text('partition = "gpu"\ntime = "8:00:00"\ngpus = 2\nmem = "64G"\nsetup = ["module load cuda"]\n'
                    '[sbatch]\nexclude = "node3"\n')
    cfg = load_config(toml, ["time=60", "sbatch.mail-type=END", "setup=source venv/bin/activate"])
    assert (cfg.partition, cfg.time, cfg.gpus, cfg.mem) == ("gpu", 60, 2, "64G")
    assert dict(cfg.sbatch) == {"exclude": "node3", "mail-type": "END"}
    assert cfg.setup == ("module load cuda", "source venv/bin/activate")
    as_json = tmp_path / "slurm.json"
    as_json.write_text(json.dumps(cfg.to_dict()))
    assert load_config(as_json, []) == cfg
    (tmp_path / "bad.toml").write_text("partition = \n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml", [])
    (tmp_path / "slurm.yaml").write_text("partition: gpu\n")
    with pytest.raises(InputError, match="expected a .json or .toml"):
        load_config(tmp_path / "slurm.yaml", [])
    with pytest.raises(InputError, match="KEY=VALUE"):
        load_config(None, ["partition"])


def _main(*args: str) -> int:
    from maskcheck.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    return int(exit_.value.code or 0)


def test_cli_refuses_bad_launcher_flags_with_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train-sweep", "--temps", "1", "--methods", "ltd", "--out", str(tmp_path / "s"), "--device", "cpu"]
    cases = [
        (base + ["--slurm", "partition=gpu"], "go with --launcher slurm"),
        (base + ["--launcher", "pbs"], "--launcher must be local or slurm"),
        (base + ["--launcher", "slurm", "--slurm", "gpus=many"], "gpus must be an integer"),
        (["audit", str(tmp_path), "--launcher", "slurm"], "audits a sweep folder"),
    ]
    monkeypatch.setattr(launch.shutil, "which", lambda _name: None)  # a machine without Slurm
    cases.append((base + ["--launcher", "slurm"], "sbatch/srun not found"))
    for args, message in cases:
        assert _main(*args) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith("maskcheck: error: ") and message in lines[-1], (args, lines)
    assert not (tmp_path / "s" / "sweep.json").exists() or "launcher" not in json.loads((tmp_path / "s" / "sweep.json").read_text())


# ------------------------------------------------------- the launcher's dependency logic


class FakeSlurm(Backend):
    """Records submissions; jobs stay queued until the test says they ended (Slurm's afterok semantics)."""

    native_dependencies = True

    def __init__(self, live: Sequence[str] = ()) -> None:
        self.submitted: list[tuple[str, list[str]]] = []
        self.live, self.cancelled, self.next_id = set(live), [], 100

    def submit(self, call: JobCall, job_name: str, after: Sequence[str]) -> tuple[str, Path, Path]:
        self.next_id += 1
        job_id = str(self.next_id)
        self.submitted.append((job_name.removeprefix("maskcheck-"), list(after)))
        self.live.add(job_id)
        return job_id, Path(f"slurm/{job_id}_0_log.out"), Path(f"slurm/{job_id}_0_result.pkl")

    def states(self, job_ids) -> dict[str, str]:
        return {j: "queued" if j in self.live else "ended" for j in job_ids}

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)
        self.live.discard(job_id)


def _tasks(done: set[str]) -> list[Task]:
    """natural -> {dd-teacher-T5 -> dd-T5, ltd-T5}, each with an audit (the sweep's shape)."""
    graph = {"train:natural": (), "train:dd-teacher-T5": (), "train:dd-T5": ("train:dd-teacher-T5",),
             "train:ltd-T5": ("train:natural",), "audit:natural": ("train:natural",), "audit:ltd-T5": ("train:ltd-T5",)}
    return [Task(k, JobCall("train", None, "cpu"), deps, (lambda k=k: k in done)) for k, deps in graph.items()]


def test_slurm_gets_every_job_at_once_with_afterok_on_its_teachers_job(tmp_path: Path) -> None:
    backend, records = FakeSlurm(), {}
    result = run_launch(_tasks(set()), backend, tmp_path, records, wait=False, max_running=1, save=lambda: None, log=lambda _m: None)
    ids = {k: r["job_id"] for k, r in records.items()}
    assert [name for name, _ in backend.submitted] == list(ids)  # teachers first, in plan order
    after = dict(backend.submitted)
    assert after["train:natural"] == [] and after["train:dd-teacher-T5"] == []
    assert after["train:dd-T5"] == [ids["train:dd-teacher-T5"]] and after["train:ltd-T5"] == [ids["train:natural"]]
    assert after["audit:ltd-T5"] == [ids["train:ltd-T5"]]
    assert result.submitted == list(ids) and not result.unfinished


def test_rerun_keeps_queued_jobs_and_resubmits_a_cancelled_teacher_with_its_students(tmp_path: Path) -> None:
    backend, records = FakeSlurm(), {}
    run_launch(_tasks(set()), backend, tmp_path, records, wait=False, max_running=1, save=lambda: None, log=lambda _m: None)
    first = {k: r["job_id"] for k, r in records.items()}
    # natural finished; dd-teacher-T5 was scancelled (its student dd-T5 still waits in the queue on the dead id)
    backend.live -= {first["train:natural"], first["train:dd-teacher-T5"]}
    backend.submitted.clear()
    result = run_launch(_tasks({"train:natural"}), backend, tmp_path, records, wait=False, max_running=1,
                        save=lambda: None, log=lambda _m: None)
    resubmitted = dict(backend.submitted)
    assert set(resubmitted) == {"train:dd-teacher-T5", "train:dd-T5"}  # nothing else is submitted twice
    assert backend.cancelled == [first["train:dd-T5"]]  # the doomed student's old job is cancelled first
    assert resubmitted["train:dd-T5"] == [records["train:dd-teacher-T5"]["job_id"]]
    assert records["train:dd-teacher-T5"]["previous_job_ids"] == [first["train:dd-teacher-T5"]]
    assert set(result.kept) == {"train:ltd-T5", "audit:natural", "audit:ltd-T5"}
    assert records["train:ltd-T5"]["job_id"] == first["train:ltd-T5"]


# ------------------------------------------- end to end through submitit's LocalExecutor


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _report_rows(sweep: Path) -> list[tuple[str, ...]]:
    with open(sweep / "report.csv", newline="") as f:
        return sorted((r["method"], r["temperature"], r["name"], r["verdict"], r["flagged_checks"], r["audit_missing"])
                      for r in csv.DictReader(f))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the interruptions read /proc")
def test_slurm_launcher_end_to_end_on_local_processes(tmp_path: Path) -> None:
    """natural -> ltd-T1, ltd-T2 and their audits as submitit jobs. ltd-T1 is preempted (SIGUSR2 to the job, as
    Slurm signals before a time limit): submitit calls JobCall.checkpoint, requeues it under the same id and it
    resumes from last.ckpt. ltd-T2 is cancelled (scancel's local twin): the launch ends unfinished; a rerun
    resubmits only it and its audit, and the report matches a local sweep's."""
    from maskcheck.report import render_report

    sweep = tmp_path / "slurm-sweep"
    ids: dict[str, str] = {}
    submitted_at: dict[str, float] = {}
    events: list[str] = []

    def on_submit(key: str, job_id: str) -> None:
        ids[key], submitted_at[key] = job_id, time.time()

    def interrupt() -> None:
        """Preempt train:ltd-T1 and cancel train:ltd-T2, each once its first epoch is checkpointed."""
        todo = {"train:ltd-T1": signal.SIGUSR2, "train:ltd-T2": signal.SIGINT}
        deadline = time.monotonic() + 600
        while todo and time.monotonic() < deadline:
            for key, sig in list(todo.items()):
                ckpt = sweep / "runs" / key.split(":")[1] / "last.ckpt"
                if key in ids and ckpt.is_file():
                    controller = int(ids[key])
                    target = _children(controller) if sig == signal.SIGUSR2 else [controller]
                    for pid in target:
                        os.kill(pid, sig)
                    events.append(f"{key}:{sig.name}:{len(target)}")
                    del todo[key]
            time.sleep(0.005)

    watcher = threading.Thread(target=interrupt, daemon=True)
    watcher.start()
    kwargs: dict[str, Any] = dict(config=LOCAL, wait=True, jobs=3, audit=True, audit_args=AUDIT, log=lambda _m: None,
                                  poll_seconds=0.2)
    planned = SweepConfig(temps=(1.0, 2.0), methods=("ltd",), dataset="digits", seed=0, settings=TINY)
    manifest, first = slurm_sweep(sweep, sweep=planned, device="cpu", on_submit=on_submit, **kwargs)
    watcher.join(timeout=5)
    assert sorted(events) == ["train:ltd-T1:SIGUSR2:1", "train:ltd-T2:SIGINT:1"], events
    records = manifest["launcher"]["tasks"]

    # preempted: requeued under the same job id, resumed from its checkpoint, finished and audited
    assert first.outcome["train:ltd-T1"] == "done" and first.outcome["audit:ltd-T1"] == "done"
    log_t1 = (sweep / records["train:ltd-T1"]["log"]).read_text()
    assert "Requeued job" in log_t1 and "ltd-T1: resuming after epoch" in log_t1
    # cancelled: no result; its audit never started; the rest finished
    assert set(first.unfinished) == {"train:ltd-T2", "audit:ltd-T2"}
    assert first.unfinished["audit:ltd-T2"].startswith("not started (train:ltd-T2")
    assert (sweep / "runs" / "ltd-T2" / "last.ckpt").is_file() and not checkpoint.is_complete_run(sweep / "runs" / "ltd-T2")
    on_disk = json.loads((sweep / "sweep.json").read_text())["launcher"]["tasks"]
    assert set(on_disk) == {"train:natural", "train:ltd-T1", "train:ltd-T2", "audit:natural", "audit:ltd-T1"}
    assert all(not Path(r["log"]).is_absolute() and (sweep / r["log"]).is_file() for r in on_disk.values())
    # a student was submitted only after its teacher's run existed
    natural_done = (sweep / "runs" / "natural" / "run.json").stat().st_mtime
    assert all(submitted_at[k] >= natural_done for k in ("train:ltd-T1", "train:ltd-T2"))

    rows, header = sweep_status(sweep)
    states = {r.task: r.state for r in rows}
    assert states["train:ltd-T2"] == "failed" and states["audit:ltd-T2"] == "not started" and states["train:ltd-T1"] == "done"
    text = format_status(sweep, rows, header, tail=3)
    assert f"--- train:ltd-T2 (job {ids['train:ltd-T2']})" in text

    stamps = {p.parent.name: p.stat().st_mtime_ns for p in sweep.glob("runs/*/run.json")}
    audit_stamps = {p.parent.name: p.stat().st_mtime_ns for p in sweep.glob("runs/*/audit.json")}
    ids.clear()
    manifest, rerun = slurm_sweep(sweep, sweep=planned, device="cpu", on_submit=on_submit, **kwargs)
    assert rerun.submitted == ["train:ltd-T2", "audit:ltd-T2"] and not rerun.unfinished
    assert {p.parent.name: p.stat().st_mtime_ns for p in sweep.glob("runs/*/run.json") if p.parent.name in stamps} == stamps
    assert {k: (sweep / "runs" / k / "audit.json").stat().st_mtime_ns for k in audit_stamps} == audit_stamps
    rec = manifest["launcher"]["tasks"]["train:ltd-T2"]
    assert rec["previous_job_ids"] == [records["train:ltd-T2"]["job_id"]]
    assert "ltd-T2: resuming after epoch" in (sweep / rec["log"]).read_text()
    assert not list(sweep.rglob("last.ckpt"))
    render_report([sweep], sweep / "report.html")

    # the same sweep with the local launcher (one thread, as the jobs had): same runs, same verdicts
    local = tmp_path / "local-sweep"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_sweep(local, planned, device="cpu")
        audit_sweep(local, device="cpu", progress=False, **AUDIT)
    finally:
        torch.set_num_threads(threads)
    render_report([local], local / "report.html")
    assert _report_rows(sweep) == _report_rows(local) and len(_report_rows(local)) == 3
    assert {r.state for r in sweep_status(sweep)[0]} == {"done"}


# ---------------------------------------------------------------------- status, guard


def _fake_sweep(tmp_path: Path, launcher: dict | None = None) -> Path:
    """A sweep folder by hand: natural finished, ltd-T5 interrupted after an epoch, its audit missing."""
    sweep = tmp_path / "s"
    jobs = [{"name": "natural", "run_dir": "runs/natural"}, {"name": "ltd-T5", "run_dir": "runs/ltd-T5"}]
    for name in ("natural", "ltd-T5"):
        (sweep / "runs" / name).mkdir(parents=True)
    for f in ("run.json", "model.safetensors", "audit.json"):
        (sweep / "runs" / "natural" / f).write_text("{}")
    (sweep / "runs" / "ltd-T5" / "last.ckpt").write_bytes(b"")
    manifest = {"schema_version": 1, "kind": "sweep", "jobs": jobs, **({"launcher": launcher} if launcher else {})}
    (sweep / "sweep.json").write_text(json.dumps(manifest))
    return sweep


def test_status_of_a_local_sweep_comes_from_its_folders(tmp_path: Path) -> None:
    sweep = _fake_sweep(tmp_path)
    res = CliRunner().invoke(app, ["sweep-status", str(sweep)])
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line.split()[1] for line in res.output.splitlines()[2:] if line.startswith(("train:", "audit:"))}
    assert lines == {"train:natural": "done", "train:ltd-T5": "interrupted", "audit:natural": "done", "audit:ltd-T5": "not"}
    assert "launcher: local" in res.output
    res = CliRunner().invoke(app, ["sweep-status", str(tmp_path)])
    assert isinstance(res.exception, InputError) and "not a sweep folder" in str(res.exception)  # main() makes it exit 2


def test_auditing_a_sweep_folder_refuses_single_model_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _fake_sweep(tmp_path)
    for args in (["--checks", "black-box"], ["--out", str(tmp_path / "a.json")], ["--fail-on-flag"]):
        assert _main("audit", str(sweep), *args) == 2
        assert "apply to a single model, not to a sweep folder" in capsys.readouterr().err


def test_local_launcher_refuses_a_sweep_whose_cluster_jobs_still_run(tmp_path: Path) -> None:
    # a stand-in for a LocalExecutor job's controller (its command line names submitit's module)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", launch.LOCAL_CONTROLLER])
    try:
        rec = {"kind": "slurm", "executor": "local",
               "tasks": {"train:ltd-T5": {"job_id": str(sleeper.pid), "log": "slurm/x.out", "result": "slurm/x.pkl"}}}
        sweep = _fake_sweep(tmp_path, rec)
        rows, _ = sweep_status(sweep)
        assert {r.task: r.state for r in rows}["train:ltd-T5"] == "running"
        with pytest.raises(InputError, match="still queued or running: train:ltd-T5"):
            launch.refuse_live_jobs(sweep)
    finally:
        sleeper.kill()
        sleeper.wait()
    launch.refuse_live_jobs(sweep)  # the job ended: a local run may go on
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # any process, e.g. a reused pid
    try:
        rec["tasks"]["train:ltd-T5"]["job_id"] = str(other.pid)
        (sweep / "sweep.json").write_text(json.dumps({**json.loads((sweep / "sweep.json").read_text()), "launcher": rec}))
        launch.refuse_live_jobs(sweep)
    finally:
        other.kill()
        other.wait()
    rows, _ = sweep_status(sweep)
    assert {r.task: r.state for r in rows}["train:ltd-T5"] == "failed"


def test_local_jobs_can_be_cancelled_when_maskcheck_runs_in_the_background() -> None:
    """A shell starts background commands (`cmd &`, nohup) with SIGINT ignored, and an ignored signal
    survives exec: the LocalExecutor's controller, cancelled by SIGINT, must still get the default."""
    from maskcheck.launch import _cancellable_children

    probe = [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"]
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip() == "False"
        with _cancellable_children():
            assert subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip() == "True"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # this process still ignores it
    finally:
        signal.signal(signal.SIGINT, before)

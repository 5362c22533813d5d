"""Run a sweep's trainings and audits as cluster jobs (Slurm, through submitit); `sweep-status`.

`--launcher local` (the default) is sweep.py's worker pool on this machine. `--launcher slurm`
turns the same plan (`sweep.prepare_sweep`, `sweep.plan_audits`) into one submitit job per task:

* `train:<job>` per unfinished run, with `afterok` dependencies on its teacher's job (dd teachers,
  the natural teacher of LTD, trades for RSLAD), so a student starts after its teacher;
* `select-temperature` (with `--select-temperature`) after the first seed's natural and ltd runs;
* `audit:<job>` per deployed model whose audit.json is missing or was made with other settings,
  after that model's training job.

Resume rule, the same as local: what a task makes (a finished run folder, a current audit.json,
`select-temperature/selected.json`) is the truth. A rerun submits only tasks whose output is
missing and whose job from an earlier submit (ids in sweep.json, `launcher.tasks`) is no longer
queued or running; finished runs are never retrained. A training job resumes from RUN/last.ckpt
(written after every epoch): on a time limit or preemption submitit calls the job's
`checkpoint()`, which requeues the same call (`JobCall`), and Slurm keeps the job id.

Job ids, log paths and submit times go to sweep.json under `launcher` (written atomically by the
submitting process, which holds the sweep lock; jobs write only their own run folders).

`executor: local` (config) runs the same code with submitit's LocalExecutor (local processes, no
cluster): the tests use it. It has no job dependencies, so the submitting process holds a
student back until its teacher is finished and therefore always waits.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from . import checkpoint
from .errors import EXIT_JOBS_UNFINISHED, InputError, MaskcheckError
from .fileio import atomic_write_json, inside, read_json
from .validate import read_sweep

if TYPE_CHECKING:  # sweep loads torch; the launcher's own helpers (status, cancel) do not need it
    from .sweep import SweepConfig

LAUNCHERS = ("local", "slurm")
JOBS_FOLDER = "slurm"  # SWEEP/slurm/: submitit's pickles and each job's log (<id>_0_log.out)
SELECTED_FILE = "select-temperature/selected.json"


class JobsUnfinishedError(MaskcheckError):
    """Cluster jobs ended without their result (failed, cancelled, timed out too often); rerun to resubmit them."""

    exit_code = EXIT_JOBS_UNFINISHED


# ------------------------------------------------------------------------ config


@dataclass(frozen=True)
class SlurmConfig:
    """Resources of every job of a sweep, from `--slurm-config FILE` and `--slurm KEY=VALUE` flags.

    `time` is in minutes (Slurm's own formats are accepted and converted); `mem` is a Slurm size
    (`32G`, `500M`); `sbatch` holds any other sbatch option (`{"exclude": "node3"}`).
    `executor: local` runs the jobs as local processes (submitit's LocalExecutor), for testing.
    """

    executor: str = "slurm"
    partition: str | None = None
    time: int = 240  # ours: a few hours suit most partitions; a run longer than this resumes after a requeue
    gpus: int = 1
    cpus: int | None = None
    mem: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = ()
    sbatch: tuple[tuple[str, Any], ...] = ()
    max_requeues: int = 20  # submitit's timeout countdown: how often one job may be requeued after its time limit

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["setup"], d["sbatch"] = list(self.setup), dict(self.sbatch)
        return d


CONFIG_KEYS = tuple(SlurmConfig.__dataclass_fields__)
# sbatch options the launcher sets itself (logs, dependencies, the requeue signal): not for users
MANAGED_SBATCH = {"output", "error", "dependency", "job-name", "array", "signal", "open-mode", "kill-on-invalid-dep",
                  "parsable", "wrap"}
TIME_PATTERN = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
MEM_PATTERN = re.compile(r"^[1-9][0-9]*[KMGT]?$")
SBATCH_KEY = re.compile(r"^[a-z][a-z0-9-]*$")


def parse_slurm_time(value: Any) -> int:
    """Minutes from an integer or a Slurm time (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`)."""
    text = str(value).strip()
    m = TIME_PATTERN.match(text)
    if isinstance(value, bool) or not m:
        raise InputError(f"slurm time must be minutes or a Slurm time such as 4:00:00 or 1-12:00:00; got {value!r}.")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        minutes = days * 1440 + a * 60 + (b or 0) + (1 if c else 0)
    elif c is not None:  # HH:MM:SS
        minutes = a * 60 + b + (1 if c else 0)
    elif b is not None:  # MM:SS
        minutes = a + (1 if b else 0)
    else:
        minutes = a
    if minutes < 1:
        raise InputError(f"slurm time must be at least one minute; got {value!r}.")
    return minutes


def _positive_int(key: str, value: Any, minimum: int) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        number = None
    if isinstance(value, bool) or number is None or number < minimum or (isinstance(value, float) and value != number):
        raise InputError(f"slurm {key} must be an integer >= {minimum}; got {value!r}.")
    return number


def _plain_string(key: str, value: Any) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value).strip() or "\n" in str(value):
        raise InputError(f"slurm {key} must be a non-empty one-line string; got {value!r}.")
    return str(value).strip()


def validate_config(raw: Mapping[str, Any], source: str) -> SlurmConfig:
    """A SlurmConfig from a mapping (file or flags); any bad key or value is a one-line InputError (exit 2)."""
    unknown = sorted(set(raw) - set(CONFIG_KEYS))
    if unknown:
        raise InputError(f"{source}: unknown slurm setting(s) {', '.join(unknown)}; valid: {', '.join(CONFIG_KEYS)} "
                         "(other sbatch options go under sbatch, e.g. --slurm sbatch.exclude=node3).")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:  # JSON null: the default (a config written by SlurmConfig.to_dict reads back)
            continue
        if key == "executor":
            if value not in ("slurm", "local"):
                raise InputError(f"{source}: slurm executor must be slurm or local (local processes, for testing); got {value!r}.")
            values[key] = value
        elif key == "time":
            values[key] = parse_slurm_time(value)
        elif key == "gpus":
            values[key] = _positive_int(key, value, 0)
        elif key in ("cpus", "max_requeues"):
            values[key] = _positive_int(key, value, 1)
        elif key == "mem":
            text = _plain_string(key, value).upper().removesuffix("B")
            if not MEM_PATTERN.match(text):
                raise InputError(f"{source}: slurm mem must be a Slurm size such as 32G or 500M; got {value!r}.")
            values[key] = text
        elif key == "setup":
            lines = [value] if isinstance(value, str) else value
            if not isinstance(lines, (list, tuple)) or not all(isinstance(x, str) and "\n" not in x for x in lines):
                raise InputError(f"{source}: slurm setup must be a list of shell lines (run before each job); got {value!r}.")
            values[key] = tuple(lines)
        elif key == "sbatch":
            if not isinstance(value, Mapping):
                raise InputError(f"{source}: slurm sbatch must be a table of extra sbatch options; got {value!r}.")
            options = []
            for opt, v in value.items():
                if not SBATCH_KEY.match(str(opt)):
                    raise InputError(f"{source}: sbatch option {opt!r} is not a long option name such as exclude or mail-type.")
                if opt in MANAGED_SBATCH:
                    raise InputError(f"{source}: sbatch option {opt} is set by maskcheck itself; remove it.")
                if not isinstance(v, (str, int, float, bool)) or "\n" in str(v):
                    raise InputError(f"{source}: sbatch option {opt} must be a one-line value; got {v!r}.")
                options.append((str(opt), v))
            values[key] = tuple(sorted(options))
        else:
            values[key] = _plain_string(key, value)
    return SlurmConfig(**values)


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a .json or .toml file (`[sbatch]` table for extra options)."""
    if not path.is_file():
        raise InputError(f"--slurm-config {path} is not a file; give a .json or .toml file of slurm settings.")
    try:
        if path.suffix == ".json":
            data = read_json(path, "slurm config")
        elif path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text(encoding="utf-8"))
        else:
            raise InputError(f"--slurm-config {path}: expected a .json or .toml file; got {path.suffix or 'no suffix'}.")
    except (UnicodeDecodeError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        if isinstance(exc, InputError):
            raise
        raise InputError(f"--slurm-config {path} is not valid {path.suffix[1:].upper()} ({exc}); fix the file.") from None
    if not isinstance(data, dict):
        raise InputError(f"--slurm-config {path} must hold a table of settings (partition, time, gpus, ...).")
    return data


def parse_flag_settings(flags: Sequence[str]) -> dict[str, Any]:
    """`--slurm partition=gpu --slurm sbatch.exclude=node3` -> {"partition": "gpu", "sbatch": {"exclude": "node3"}}."""
    out: dict[str, Any] = {}
    for flag in flags:
        key, sep, value = flag.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--slurm takes KEY=VALUE (e.g. partition=gpu, time=4:00:00, sbatch.exclude=node3); got {flag!r}.")
        if key.startswith("sbatch."):
            out.setdefault("sbatch", {})[key.removeprefix("sbatch.")] = value
        elif key == "setup":
            out.setdefault("setup", []).append(value)
        else:
            out[key] = value
    return out


def load_config(config_file: Path | None, flags: Sequence[str]) -> SlurmConfig:
    """File settings, then flags on top (sbatch options merged); validated."""
    raw = read_config_file(config_file) if config_file is not None else {}
    extra = parse_flag_settings(flags)
    if config_file is not None:
        validate_config(raw, f"--slurm-config {config_file}")
    merged = {**raw, **{k: v for k, v in extra.items() if k not in ("sbatch", "setup")}}
    if "sbatch" in extra:
        base = raw.get("sbatch", {}) if isinstance(raw.get("sbatch", {}), Mapping) else {}
        merged["sbatch"] = {**base, **extra["sbatch"]}
    if "setup" in extra:
        base_setup = raw.get("setup", [])
        merged["setup"] = ([base_setup] if isinstance(base_setup, str) else list(base_setup)) + extra["setup"]
    return validate_config(merged, "--slurm" if config_file is None else f"--slurm-config {config_file} with --slurm")


# ------------------------------------------------------------------ job callables


@dataclass(frozen=True)
class JobCall:
    """What one cluster job runs (pickled by submitit); `checkpoint` makes it requeue on a time limit.

    `stage` is train, audit or select; `task` the same object the local pool runs
    (`sweep._TrainTask`, `sweep._AuditTask`) or the select arguments; `requires` run folders that
    must be finished before it starts (Slurm's afterok already ensures it; this makes a broken
    dependency an error in the job's log, not a student trained without its teacher).
    """

    stage: str
    task: Any
    device: str
    threads: int | None = None
    requires: tuple[str, ...] = ()

    def __call__(self) -> str:
        import torch

        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0") or 0)
        if threads:
            torch.set_num_threads(threads)
        missing = [r for r in self.requires if not checkpoint.is_complete_run(r)]
        if missing:
            raise InputError(f"cannot start: {', '.join(missing)} not trained (its job did not finish); rerun the sweep command.")
        say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - the job's log
        say(f"maskcheck {self.stage} job on {self.device}")
        if self.stage == "train":
            from .sweep import execute_job

            t = self.task
            run_dir = Path(t.sweep_dir) / t.job.run_dir
            if checkpoint.is_complete_run(run_dir):  # e.g. requeued after it had finished
                return f"{t.job.name}: already finished"
            execute_job(t.job, t.sweep_dir, t.dataset, t.seed, t.settings, self.device, t.data_dir, False,
                        compile=t.compile, log=say)
            return f"{t.job.name}: trained"
        if self.stage == "audit":
            from .sweep import _audit_task

            verdict = _audit_task(self.task, self.device)
            say(f"audit {self.task.name}: {verdict}")
            return verdict
        if self.stage == "select":
            from .sweep import select_sweep_temperature

            out, plan, dataset, settings, data_dir = self.task
            result = select_sweep_temperature(Path(out), plan, dataset, settings, self.device, data_dir, say)
            atomic_write_json(Path(out) / SELECTED_FILE, result)
            return f"selected temperature: {result.get('temperature')}"
        raise ValueError(f"unknown job stage {self.stage!r}")

    def checkpoint(self) -> Any:
        """Requeue the same call after a time limit or preemption; training resumes from RUN/last.ckpt."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


# ------------------------------------------------------------------------ backends

ACTIVE = ("queued", "running")


class Backend:
    """Submit, watch and cancel jobs on one kind of executor."""

    native_dependencies = False

    def submit(self, call: JobCall, job_name: str, after: Sequence[str]) -> tuple[str, Path, Path]:
        """Submit `call`, to start after the jobs `after` succeeded; (job id, log file, result marker file)."""
        raise NotImplementedError

    def states(self, job_ids: Iterable[str]) -> dict[str, str]:
        """queued, running or ended (anything else: no longer in the queue) per job id; unknown ids: ended."""
        raise NotImplementedError

    def final_state(self, job_id: str) -> str | None:
        """Why an ended job ended (cancelled, timeout, ...) where the cluster says; None when it cannot tell."""
        return None

    def cancel(self, job_id: str) -> None:
        raise NotImplementedError


class SlurmBackend(Backend):
    """sbatch through submitit.SlurmExecutor; states from squeue (sacct only for why a job ended)."""

    native_dependencies = True

    def __init__(self, folder: Path, config: SlurmConfig) -> None:
        import submitit

        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise InputError("--launcher slurm: sbatch/srun not found on this machine; run on a Slurm login node, "
                             "or use --launcher local.")
        self.folder = folder / JOBS_FOLDER
        self.executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=config.max_requeues)
        params: dict[str, Any] = {"time": config.time, "stderr_to_stdout": True}
        if config.gpus:
            params["gpus_per_node"] = config.gpus
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(config, key) is not None:
                params[key] = getattr(config, key)
        if config.cpus is not None:
            params["cpus_per_task"] = config.cpus
        if config.setup:
            params["setup"] = list(config.setup)
        self.base = params
        self.extra = {**({"mem": config.mem} if config.mem else {}), **dict(config.sbatch)}

    def submit(self, call: JobCall, job_name: str, after: Sequence[str]) -> tuple[str, Path, Path]:
        extra = dict(self.extra)
        if after:
            # a student of a failed teacher is removed from the queue instead of waiting forever
            extra.update({"dependency": "afterok:" + ":".join(after), "kill-on-invalid-dep": "yes"})
        self.executor.update_parameters(**self.base, job_name=job_name, additional_parameters=extra)
        job = self.executor.submit(call)
        return job.job_id, job.paths.stdout, job.paths.result_pickle

    def states(self, job_ids: Iterable[str]) -> dict[str, str]:
        ids = [str(j) for j in job_ids]
        if not ids:
            return {}
        try:
            out = subprocess.run(["squeue", "-h", "-o", "%i|%T", "-u", getpass.getuser()], capture_output=True, text=True,
                                 timeout=60, check=True).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise InputError(f"cannot ask Slurm for job states (squeue: {exc}); run this on the cluster's login node.") from None
        queue = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
        running = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
        return {j: ("running" if queue[j] in running else "queued") if j in queue else "ended" for j in ids}

    def final_state(self, job_id: str) -> str | None:
        try:
            out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True,
                                 timeout=60).stdout.split()
        except (OSError, subprocess.SubprocessError):
            return None
        return out[0].lower() if out else None

    def cancel(self, job_id: str) -> None:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=60)


@contextmanager
def _cancellable_children() -> Iterator[None]:
    """Start child processes with SIGINT at its default, even when this process ignores it.

    A LocalExecutor job is cancelled by SIGINT to its controller process. An ignored signal stays
    ignored across exec, and a shell ignores SIGINT in what it starts in the background (`cmd &`,
    nohup): a controller started from there could never be cancelled and ran its job to the end.
    A handler (unlike SIG_IGN) is reset to the default at exec, so a no-op handler stands in while
    the children start; this process keeps ignoring SIGINT.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class LocalBackend(Backend):
    """submitit.LocalExecutor: the same jobs as local processes (the launcher's tests); no dependencies."""

    native_dependencies = False

    def __init__(self, folder: Path, config: SlurmConfig) -> None:
        import submitit

        self.folder = folder / JOBS_FOLDER
        self.executor = submitit.LocalExecutor(folder=self.folder, max_num_timeout=config.max_requeues)
        # gpus: CUDA_VISIBLE_DEVICES=0..gpus-1 for every job (they share the cards; 0 hides them)
        self.executor.update_parameters(timeout_min=config.time, stderr_to_stdout=True, gpus_per_node=config.gpus)
        self.jobs: dict[str, Any] = {}  # this process's jobs: their Popen reaps them

    def submit(self, call: JobCall, job_name: str, after: Sequence[str]) -> tuple[str, Path, Path]:
        assert not after, "the local executor has no dependencies; the launcher holds students back"
        with _cancellable_children():
            job = self.executor.submit(call)
        self.jobs[job.job_id] = job
        return job.job_id, job.paths.stdout, job.paths.result_pickle

    def states(self, job_ids: Iterable[str]) -> dict[str, str]:
        out = {}
        for j in job_ids:
            job = self.jobs.get(str(j))
            if job is not None:
                alive = job._process is not None and job._process.poll() is None
            else:  # a job of an earlier submit: its controller process, if it still lives
                alive = _controller_alive(int(j)) if str(j).isdigit() else False
            out[str(j)] = "running" if alive else "ended"
        return out

    def cancel(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None:
            job.cancel()
            if job._process is not None:
                job._process.wait(timeout=30)
        elif job_id.isdigit() and _controller_alive(int(job_id)):
            os.kill(int(job_id), signal.SIGINT)  # what LocalJob.cancel sends: the controller stops its task


LOCAL_CONTROLLER = "submitit.local._local"  # the module a LocalExecutor job's controller process runs


def _controller_alive(pid: int) -> bool:
    """A live (not zombie) submitit LocalExecutor controller with this pid (the local job id).

    The command line is checked too: pids are reused, and a recycled one must not look like a
    running job.
    """
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError, OverflowError):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return True  # no /proc (not Linux): trust the pid
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and LOCAL_CONTROLLER in cmdline


def make_backend(sweep_dir: Path, config: SlurmConfig) -> Backend:
    return LocalBackend(sweep_dir, config) if config.executor == "local" else SlurmBackend(sweep_dir, config)


def backend_for_record(sweep_dir: Path, record: Mapping[str, Any]) -> Backend | None:
    """A backend able to read the states of the jobs `record` lists (None: the cluster's tools are not here)."""
    if record.get("executor") == "local":
        local = LocalBackend.__new__(LocalBackend)  # states of earlier jobs need no executor
        local.jobs = {}
        return local
    if shutil.which("squeue") is None:
        return None
    return SlurmBackend.__new__(SlurmBackend)  # states and cancel need no executor


# --------------------------------------------------------------------------- tasks


@dataclass
class Task:
    """One job to run: `key` (train:<job>, audit:<job>, select-temperature), the tasks it waits for, its output check."""

    key: str
    call: JobCall
    deps: tuple[str, ...]
    finished: Callable[[], bool]


@dataclass
class LaunchResult:
    submitted: list[str] = field(default_factory=list)  # keys submitted now
    kept: list[str] = field(default_factory=list)  # keys whose earlier job is still queued or running
    outcome: dict[str, str] = field(default_factory=dict)  # key -> done | failed (...) | not started (...)
    waited: bool = False

    @property
    def unfinished(self) -> dict[str, str]:
        return {k: v for k, v in self.outcome.items() if v != "done"}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), start.resolve())).as_posix()


def live_jobs(backend: Backend | None, records: Mapping[str, Any], keys: Iterable[str]) -> dict[str, str]:
    """key -> job id of the tasks among `keys` whose recorded job is still queued or running."""
    ids = {k: str(records[k]["job_id"]) for k in keys if k in records and records[k].get("job_id")}
    if backend is None or not ids:
        return {}
    states = backend.states(ids.values())
    return {k: j for k, j in ids.items() if states.get(j) in ACTIVE}


def launch(
    tasks: Sequence[Task],
    backend: Backend,
    sweep_dir: Path,
    records: dict[str, Any],
    *,
    wait: bool,
    max_running: int,
    save: Callable[[], None],
    log: Callable[[str], None],
    poll_seconds: float = 2.0,
    on_submit: Callable[[str, str], None] = lambda _k, _j: None,
) -> LaunchResult:
    """Submit every unfinished task once, teachers before students; optionally wait for all.

    `tasks` are in dependency order. `records` (sweep.json's `launcher.tasks`) is updated in
    place and `save()` called after every round of submissions. A task whose output exists is
    done; one whose earlier job is queued or running is kept (never submitted twice), unless it
    waits on a task that has to be resubmitted (its dependency id is dead): that job is cancelled
    and submitted again. With native dependencies (Slurm) everything is submitted at once; the
    local executor gets a task only once its dependencies finished, at most `max_running` at a time.
    """
    by_key = {t.key: t for t in tasks}
    result = LaunchResult(waited=wait)
    finished = {t.key for t in tasks if t.finished()}
    for k in finished:
        result.outcome[k] = "done"
    live = live_jobs(backend, records, [t.key for t in tasks if t.key not in finished])
    for t in tasks:  # dependency order: a cancelled teacher dooms its students too
        if t.key in live and any(d in by_key and d not in finished and d not in live for d in t.deps):
            log(f"{t.key}: job {live[t.key]} waits on a job that no longer runs; cancelling it to submit it again")
            backend.cancel(live.pop(t.key))
    result.kept = list(live)
    for k, j in live.items():
        log(f"{k}: job {j} still queued or running; not submitted again")
    jobs = dict(live)  # key -> job id in this launch
    ended: set[str] = set()
    pending = [t for t in tasks if t.key not in finished and t.key not in live]

    def mark_ended(key: str) -> None:
        ended.add(key)
        if by_key[key].finished():
            finished.add(key)
            result.outcome[key] = "done"
            log(f"{key}: done (job {jobs[key]})")
        else:
            why = backend.final_state(jobs[key]) or ("failed" if Path(sweep_dir / records[key]["result"]).exists() else "ended without a result")
            result.outcome[key] = f"failed ({why}; log {records[key]['log']})"
            log(f"{key}: job {jobs[key]} {why}; log {records[key]['log']}")

    while True:
        running = [k for k in jobs if k not in ended]
        for t in list(pending):
            bad = [d for d in t.deps if d in result.outcome and result.outcome[d] != "done"]
            if bad:
                pending.remove(t)
                result.outcome[t.key] = f"not started ({bad[0]} did not finish)"
                continue
            waiting_on = [d for d in t.deps if d in by_key and d not in finished]
            if backend.native_dependencies:
                if any(d not in jobs for d in waiting_on):
                    continue  # (plan order puts teachers first, so this does not happen)
                after = [jobs[d] for d in waiting_on]
            else:
                if waiting_on or len(running) >= max_running:
                    continue
                after = []
            job_id, log_path, result_path = backend.submit(t.call, f"maskcheck-{t.key}", after)
            previous = records.get(t.key, {})
            history = list(previous.get("previous_job_ids", [])) + ([previous["job_id"]] if previous.get("job_id") else [])
            records[t.key] = {"job_id": job_id, "log": _rel(log_path, sweep_dir), "result": _rel(result_path, sweep_dir),
                              "after": after, "submitted": _now(), "previous_job_ids": history}
            jobs[t.key] = job_id
            running.append(t.key)
            pending.remove(t)
            result.submitted.append(t.key)
            log(f"{t.key}: submitted job {job_id}" + (f" (after {', '.join(after)})" if after else ""))
            on_submit(t.key, job_id)
        save()
        if not wait and backend.native_dependencies:
            return result
        if not running and not pending:
            return result
        if not running:  # nothing runs and nothing can start: only blocked tasks are left
            for t in pending:
                result.outcome[t.key] = "not started (waits on unfinished tasks)"
            return result
        time.sleep(poll_seconds)
        states = backend.states([jobs[k] for k in running])
        for k in running:
            if states.get(jobs[k]) not in ACTIVE:
                mark_ended(k)
        # a failed teacher: its students' jobs (queued with afterok) can never start
        for t in tasks:
            if t.key in jobs and t.key not in ended and any(
                    d in result.outcome and result.outcome[d] != "done" for d in t.deps):
                backend.cancel(jobs[t.key])
                mark_ended(t.key)


# ---------------------------------------------------------------- sweep commands


def _record(manifest: dict[str, Any], config: SlurmConfig) -> dict[str, Any]:
    rec = manifest.get("launcher") if isinstance(manifest.get("launcher"), dict) else {}
    if rec and rec.get("executor") not in (None, config.executor):
        raise InputError(f"this sweep's jobs were submitted with executor {rec.get('executor')}, not {config.executor}; "
                         "use the same executor, or another --out.")
    rec.update({"kind": "slurm", "executor": config.executor, "folder": JOBS_FOLDER, "config": config.to_dict()})
    rec.setdefault("tasks", {})
    manifest["launcher"] = rec
    return rec


def audit_tasks(audits: Sequence[Any], device: str, config: SlurmConfig, train_keys: Iterable[str] = ()) -> list[Task]:
    """One task per planned audit (sweep.plan_audits), after its run's training task when that is planned too."""
    train_keys = set(train_keys)
    out = []
    for a in audits:
        key = f"audit:{a.name}"
        target = Path(a.run_dir) / "audit.json"
        made_before = target.stat().st_mtime_ns if target.is_file() else None

        def finished(target: Path = target, before: int | None = made_before) -> bool:
            # planned because missing or made with other settings: done once rewritten by this task's job
            return target.is_file() and (before is None or target.stat().st_mtime_ns != before)

        deps = (f"train:{a.name}",) if f"train:{a.name}" in train_keys else ()
        out.append(Task(key, JobCall("audit", a, device, config.cpus, (a.run_dir,)), deps, finished))
    return out


def slurm_sweep(
    sweep_dir: Path,
    *,
    config: SlurmConfig,
    wait: bool,
    jobs: int,
    sweep: SweepConfig,
    device: str,
    audit: bool,
    audit_args: dict[str, Any],
    log: Callable[[str], None],
    data_dir: str | Path | None = None,
    compile: bool = False,
    poll_seconds: float = 5.0,
    on_submit: Callable[[str, str], None] = lambda _k, _j: None,
) -> tuple[dict[str, Any], LaunchResult]:
    """train-sweep --launcher slurm: plan (sweep.prepare_sweep), submit training, selection and audits; returns
    the manifest and what happened. Waits for the jobs when `wait` or with the local executor.

    `sweep`: the sweep (as `run_sweep` takes it); `audit_args`: n, seed, square_queries.
    """
    from .sweep import SWEEP_FILE, _TrainTask, plan_audits, prepare_sweep

    sweep_dir = Path(sweep_dir)
    backend = make_backend(sweep_dir, config)
    old = read_sweep(sweep_dir) if (sweep_dir / SWEEP_FILE).is_file() else {}
    old_rec = old.get("launcher") if isinstance(old.get("launcher"), dict) else {}
    still = live_jobs(backend, old_rec.get("tasks", {}), list(old_rec.get("tasks", {})))
    busy = [sweep_dir / _task_folder(old, k) for k in still]
    prepared = prepare_sweep(sweep_dir, sweep, device=device, log=log, keep_temp_in=busy)
    manifest, plan = prepared.manifest, prepared.plan
    record = _record(manifest, config)
    data = str(Path(data_dir).resolve()) if data_dir else None  # jobs may start in another folder: absolute paths
    tasks: list[Task] = []
    for j in prepared.todo:
        run = sweep_dir / j.run_dir
        teacher_dirs = tuple(str((sweep_dir / next(p.run_dir for p in plan if p.name == d)).resolve()) for d in j.depends_on)
        call = JobCall("train", _TrainTask(j, str(sweep_dir.resolve()), sweep.dataset, sweep.seed, dict(sweep.settings),
                                           data, False, compile),
                       device, config.cpus, teacher_dirs)
        tasks.append(Task(f"train:{j.name}", call, tuple(f"train:{d}" for d in j.depends_on),
                          lambda run=run: checkpoint.is_complete_run(run)))
    if sweep.select and not (sweep_dir / SELECTED_FILE).is_file():
        first = plan[0].seed
        needs = [j for j in plan if j.seed == first and (j.method == "natural" or (j.method == "ltd" and j.variant is None))]
        call = JobCall("select", (str(sweep_dir.resolve()), plan, sweep.dataset, dict(sweep.settings), data), device,
                       config.cpus)
        tasks.append(Task("select-temperature", call, tuple(f"train:{j.name}" for j in needs if j in prepared.todo),
                          lambda: (sweep_dir / SELECTED_FILE).is_file()))
    if audit:
        audits, _done = plan_audits(sweep_dir, data_dir=data_dir, progress=False, include_untrained=True, log=log, **audit_args)
        tasks += audit_tasks([type(a)(**{**asdict(a), "run_dir": str(Path(a.run_dir).resolve())}) for a in audits],
                             device, config, [t.key for t in tasks])
    if backend.native_dependencies and jobs != 1:
        log("--jobs is not used by the slurm launcher: the cluster decides how many jobs run at once")

    def save() -> None:
        atomic_write_json(sweep_dir / SWEEP_FILE, manifest)

    result = launch(tasks, backend, sweep_dir, record["tasks"], wait=wait or not backend.native_dependencies,
                    max_running=max(1, jobs), save=save, log=log, poll_seconds=poll_seconds, on_submit=on_submit)
    finish_manifest(sweep_dir, manifest, plan)
    save()
    return manifest, result


def _task_folder(manifest: Mapping[str, Any], key: str) -> str:
    """The folder (relative to the sweep) a task writes into."""
    if key == "select-temperature":
        return "select-temperature"
    name = key.split(":", 1)[1]
    return next((j["run_dir"] for j in manifest.get("jobs", []) if j.get("name") == name), "runs")


def finish_manifest(sweep_dir: Path, manifest: dict[str, Any], plan: Sequence[Any]) -> None:
    """What the local sweep records after training, from the files the jobs wrote: teachers, selected temperature."""
    from .sweep import teacher_facts

    manifest["teachers"] = teacher_facts(sweep_dir, list(plan))
    if (sweep_dir / SELECTED_FILE).is_file():
        manifest["selected_temperature"] = read_json(sweep_dir / SELECTED_FILE, "selected temperature")


def slurm_audit(sweep_dir: Path, *, config: SlurmConfig, wait: bool, jobs: int, device: str, data_dir: Path | None,
                audit_args: dict[str, Any], log: Callable[[str], None], poll_seconds: float = 5.0) -> LaunchResult:
    """audit SWEEP --launcher slurm: one job per finished run whose audit.json is missing or stale."""
    from .sweep import SWEEP_FILE, hold_sweep_lock, plan_audits

    sweep_dir = Path(sweep_dir)
    hold_sweep_lock(sweep_dir)
    backend = make_backend(sweep_dir, config)
    manifest = read_sweep(sweep_dir)
    record = _record(manifest, config)
    audits, _done = plan_audits(sweep_dir, data_dir=data_dir, progress=False, log=log, **audit_args)
    tasks = audit_tasks([type(a)(**{**asdict(a), "run_dir": str(Path(a.run_dir).resolve())}) for a in audits],
                        device, config)
    return launch(tasks, backend, sweep_dir, record["tasks"], wait=wait or not backend.native_dependencies,
                  max_running=max(1, jobs), save=lambda: atomic_write_json(sweep_dir / SWEEP_FILE, manifest), log=log,
                  poll_seconds=poll_seconds)


def refuse_live_jobs(sweep_dir: Path) -> None:
    """Before a local run: cluster jobs of this sweep still queued or running would race it; refuse (exit 2)."""
    from .sweep import SWEEP_FILE

    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        return
    rec = read_sweep(Path(path).parent).get("launcher")
    if not isinstance(rec, dict) or not rec.get("tasks"):
        return
    backend = backend_for_record(Path(sweep_dir), rec)
    try:
        live = live_jobs(backend, rec["tasks"], list(rec["tasks"]))
    except InputError:
        live = {}  # no cluster here to ask (a copied folder): nothing of ours can be running on it
    if live:
        ids = ", ".join(f"{k} ({j})" for k, j in list(live.items())[:5])
        raise InputError(f"{sweep_dir} has cluster jobs still queued or running: {ids}{' ...' if len(live) > 5 else ''}; "
                         "wait for them (maskcheck sweep-status), cancel them, or rerun with --launcher slurm.")


def unfinished_message(result: LaunchResult) -> str:
    items = list(result.unfinished.items())
    shown = "; ".join(f"{k}: {v}" for k, v in items[:4]) + (f"; and {len(items) - 4} more" if len(items) > 4 else "")
    return (f"{len(items)} job(s) did not finish: {shown}. `maskcheck sweep-status` shows their logs; "
            "rerun the same command to resubmit only those.")


# -------------------------------------------------------------------------- status


@dataclass(frozen=True)
class StatusRow:
    task: str
    state: str  # done, queued, running, failed, interrupted, not started
    job: str  # job id or "-"
    detail: str  # log path, or what is on disk


def _lock_holder(sweep_dir: Path) -> str | None:
    """The pid holding the sweep lock (a running train-sweep or audit), or None."""
    from .sweep import LOCK_FILE

    try:
        import fcntl
    except ImportError:
        return None
    path = sweep_dir / LOCK_FILE
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return os.pread(fd, 20, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)  # also drops the shared lock if we got it
    return None


def sweep_status(sweep_dir: Path) -> tuple[list[StatusRow], list[str]]:
    """A row per training, selection and audit task of the sweep, from the folders and (if any) the jobs; header lines."""
    from .sweep import LAST_CKPT, SWEEP_FILE

    sweep_dir = Path(sweep_dir)
    path = sweep_dir / SWEEP_FILE
    if not path.is_file():
        raise InputError(f"{sweep_dir} is not a sweep folder (no {SWEEP_FILE}); give the --out of a train-sweep.")
    manifest = read_sweep(Path(path).parent)
    rec = manifest.get("launcher") if isinstance(manifest.get("launcher"), dict) else {}
    records = rec.get("tasks", {}) if rec else {}
    header = []
    holder = _lock_holder(sweep_dir)
    header.append(f"launcher: {('slurm (' + rec.get('executor', 'slurm') + ' executor)') if rec else 'local'}; "
                  + (f"a maskcheck process (pid {holder}) is working on this sweep" if holder else "no maskcheck process holds this sweep"))
    backend = backend_for_record(sweep_dir, rec) if records else None
    if records and backend is None:
        header.append("squeue is not available here: job states come from the run folders only")
    states: dict[str, str] = {}
    if backend is not None:
        try:
            states = backend.states(str(r["job_id"]) for r in records.values() if r.get("job_id"))
        except InputError as exc:
            header.append(str(exc))
    rows = []

    def row(key: str, done: bool, on_disk: str) -> StatusRow:
        r = records.get(key, {})
        job = str(r.get("job_id", "-"))
        state = states.get(job)
        if state in ACTIVE:  # e.g. a re-audit with other settings while the old audit.json is still there
            return StatusRow(key, state, job, r.get("log", ""))
        if done:
            return StatusRow(key, "done", job, r.get("log", "") or on_disk)
        if r:  # a job ran and left no result
            if state is None and backend is None:
                return StatusRow(key, "unknown", job, r.get("log", ""))
            why = "failed" if (sweep_dir / r.get("result", "-")).exists() else "ended without a result"
            return StatusRow(key, "failed", job, f"{why}; log {r.get('log', '?')}")
        if on_disk:
            return StatusRow(key, "running" if holder else "interrupted", "-", on_disk)
        return StatusRow(key, "not started", "-", "")

    jobs = manifest.get("jobs", [])
    for j in jobs:
        run = sweep_dir / j["run_dir"]
        partial = "last.ckpt (resumes)" if (run / LAST_CKPT).is_file() else ""
        rows.append(row(f"train:{j['name']}", checkpoint.is_complete_run(run), j["run_dir"] if checkpoint.is_complete_run(run) else partial))
    if manifest.get("select_temperature"):
        sel = (sweep_dir / SELECTED_FILE).is_file() or "selected_temperature" in manifest
        rows.append(row("select-temperature", sel, "select-temperature" if sel else ""))
    for j in jobs:
        if j["name"].startswith("dd-teacher") and f"audit:{j['name']}" not in records:
            continue
        target = sweep_dir / j["run_dir"] / "audit.json"
        rows.append(row(f"audit:{j['name']}", target.is_file(), f"{j['run_dir']}/audit.json" if target.is_file() else ""))
    return rows, header


def log_tail(sweep_dir: Path, log_path: str, lines: int) -> list[str]:
    """The last `lines` lines of a job's log (relative to the sweep), or a note that it is missing."""
    path = inside(sweep_dir, log_path, "the task log")  # a log named by sweep.json stays inside the sweep
    if not path.is_file():
        return [f"(no log at {log_path})"]
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64 * 1024))
        text = f.read().decode("utf-8", errors="replace")
    return text.splitlines()[-lines:]


def format_status(sweep_dir: Path, rows: Sequence[StatusRow], header: Sequence[str], tail: int) -> str:
    widths = [max(len(h), *(len(getattr(r, a)) for r in rows)) if rows else len(h)
              for h, a in (("TASK", "task"), ("STATE", "state"), ("JOB", "job"))]
    lines = list(header)
    lines.append(f"{'TASK':<{widths[0]}}  {'STATE':<{widths[1]}}  {'JOB':<{widths[2]}}  LOG / FILES")
    for r in rows:
        lines.append(f"{r.task:<{widths[0]}}  {r.state:<{widths[1]}}  {r.job:<{widths[2]}}  {r.detail}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    manifest = read_sweep(Path(sweep_dir))
    records = (manifest.get("launcher") or {}).get("tasks", {})
    for r in rows:
        if r.state == "failed" and tail > 0 and records.get(r.task, {}).get("log"):
            lines.append(f"--- {r.task} (job {r.job}): last {tail} lines of {records[r.task]['log']}")
            lines += ["    " + x for x in log_tail(sweep_dir, records[r.task]["log"], tail)]
    return "\n".join(lines)

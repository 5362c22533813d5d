"""The temperature sweep: plan the jobs, share teachers, resume, run independent jobs in parallel.

Jobs (ARCHITECTURE.md, "Sweep folder"):
* `natural` once: the baseline and the teacher every LTD run shares;
* `dd`: per T a teacher `dd-teacher-T{T}` (CE on logits / T) and a student `dd-T{T}` trained on its
  soft labels (methods/dd.py);
* `trades` once (it has no temperature); `ltd-T{T}` per T, teacher `natural`;
* optional `rslad` (teacher: the sweep's `trades` model) and `pgd-at`.

Rerunning the same command skips finished runs (`checkpoint.is_complete_run`) and resumes a
half-finished one from its `last.ckpt`. With `jobs > 1` independent jobs run on spawned worker
processes, a job starting once the runs it depends on are finished. How many workers, on which
devices and with how many CPU threads each is decided by one pure function, `plan_workers`, and
logged; the same pool helper (`run_pool`) runs both the training jobs and the audits. On CUDA a
job goes to the least busy GPU; several workers may share one GPU (small models leave a GPU
mostly idle, so a few processes fill it). A single run bigger than one GPU is a `torchrun` job of
its own (`torchrun --nproc-per-node N -m maskcheck train ...`), not something this module schedules.

The sweep also owns its audits (`audit_sweep`): every deployed model gets RUN/audit.json, and a
model is re-audited when the settings asked for (n, seed, Square queries, threat model) differ
from the ones its audit.json records, not because a file is older.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from . import checkpoint
from .config import DEFAULT_N, DEFAULT_SQUARE_QUERIES, DEFAULT_SWEEP_METHODS, DEFAULT_SWEEP_TEMPS, AuditConfig, ThreatModel, format_temperature, provenance, resolve_device
from .errors import InputError
from .fileio import atomic_write_json, read_json
from .validate import SWEEP_SCHEMA_VERSION, read_sweep, validate_run
from .methods import METHODS
from .training import DATASET_DEFAULTS, LAST_CKPT, make_config, train_run

SWEEP_FILE = "sweep.json"


def sweep_methods() -> tuple[str, ...]:
    """Every registered method but the natural one, which every sweep trains first (the teacher of LTD)."""
    return tuple(name for name in METHODS if name != "natural")


@dataclass(frozen=True)
class Job:
    """One run of the sweep. `teacher` and `depends_on` name other jobs of the same sweep.

    `seed` is the run's seed (None: the sweep's); `group` is the name shared by the same job over
    seeds (`ltd-T5` for `ltd-T5-s0`, `ltd-T5-s1`, ...); `variant` names an ablation or reference
    arm (`beta1`, `innerkl`) and `overrides` its TrainConfig settings.
    """

    name: str
    method: str
    temperature: float | None
    teacher: str | None
    run_dir: str  # relative to the sweep folder
    depends_on: tuple[str, ...] = ()
    seed: int | None = None
    group: str | None = None
    variant: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["depends_on"] = list(self.depends_on)
        d["overrides"] = dict(self.overrides)
        return d


def _job(name: str, method: str, temperature: float | None = None, teacher: str | None = None) -> Job:
    return Job(name, method, temperature, teacher, f"runs/{name}", (teacher,) if teacher else ())


# Reference-recipe arms and ablations (issue 17), selectable with `train-sweep --arms`: a name is
# `<method>[-T<t>]-<change>`; an ltd arm without -T<t> is trained at every temperature of the sweep.
#   trades-beta1     the TRADES authors' MNIST script (yaodongyu/TRADES train_trades_mnist.py: beta 1.0)
#   trades-innerce   TRADES with LTD's inner attack (PGD-CE on the hard label)
#   ltd-innerkl      LTD with TRADES' inner attack (KL to the clean prediction); ltd-T5-innerkl: at T = 5 only
ARM_PATTERN = re.compile(r"^(trades|ltd)(?:-T([0-9]+(?:\.[0-9]+)?))?-(beta([0-9]+(?:\.[0-9]+)?)|inner(ce|kl))$")
ARM_EXAMPLES = "trades-beta1, trades-innerce, ltd-innerkl, ltd-T5-innerkl"


@dataclass(frozen=True)
class Arm:
    method: str
    temperature: float | None  # ltd: one T, or None for every T of the sweep
    variant: str  # "beta1", "innerce", ...
    overrides: tuple[tuple[str, Any], ...]


def parse_arm(text: str) -> Arm:
    """`trades-beta1` -> Arm("trades", None, "beta1", (("beta", 1.0),)); bad names are one-line InputErrors."""
    m = ARM_PATTERN.match(text.strip())
    if not m:
        raise InputError(f"unknown arm {text!r}; an arm is <trades|ltd>[-T<t>]-<beta<x>|innerce|innerkl>, e.g. {ARM_EXAMPLES}.")
    method, temp, variant, beta, inner = m.groups()
    if temp is not None and method != "ltd":
        raise InputError(f"arm {text!r}: only ltd arms take a temperature (-T<t>).")
    overrides = (("beta", float(beta)),) if beta is not None else (("inner", inner),)
    return Arm(method, float(temp) if temp is not None else None, variant, overrides)


def parse_arms(text: str | None) -> list[Arm]:
    return [parse_arm(p) for p in str(text or "").split(",") if p.strip()]


def parse_seeds(text: str) -> list[int]:
    """`0,1,2` -> [0, 1, 2]: non-negative integers, no repeats."""
    try:
        seeds = [int(p) for p in str(text).split(",")]
    except ValueError:
        raise InputError(f"--seeds must be comma-separated non-negative integers such as 0,1,2; got {text!r}.") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds must be distinct non-negative integers such as 0,1,2; got {text!r}.")
    return seeds


def plan_jobs(temps: Iterable[float], methods: Iterable[str] = DEFAULT_SWEEP_METHODS, *, seeds: Iterable[int] | None = None,
              arms: Iterable[Arm] = (), teacher: Mapping[str, Any] | None = None) -> list[Job]:
    """The sweep's jobs in an order where every teacher comes before its students.

    `seeds`: None (one seed, the historical layout `runs/<name>`) or a list; with a list every job
    is trained once per seed as `<name>-s<seed>` in `runs/s<seed>/<name>`, each seed with its own
    natural teacher. `arms`: extra reference / ablation jobs (`parse_arm`). `teacher`: TrainConfig
    overrides of the natural job, e.g. {"stop_train_acc": 0.995, "epochs": 40} (converged teacher).
    """
    temps, methods, arms = list(temps), list(methods), list(arms)
    valid = sweep_methods()
    unknown = [m for m in methods if m not in valid]
    if unknown:
        raise InputError(f"unknown sweep method(s) {', '.join(unknown)}; valid: {', '.join(valid)}.")
    base = plan_base(temps, methods, arms, teacher)
    if seeds is None:
        return base
    jobs = []
    for seed in seeds:
        suffix, folder = f"-s{seed}", f"runs/s{seed}"
        for j in base:
            jobs.append(Job(j.name + suffix, j.method, j.temperature, j.teacher and j.teacher + suffix,
                            f"{folder}/{j.name}", tuple(d + suffix for d in j.depends_on), seed, j.name, j.variant,
                            j.overrides))
    return jobs


def plan_base(temps: list[float], methods: list[str], arms: list[Arm], teacher: Mapping[str, Any] | None) -> list[Job]:
    """One seed's jobs (names without a seed suffix)."""
    natural = _job("natural", "natural")
    if teacher:
        natural = replace(natural, overrides=tuple(sorted(teacher.items())))
    jobs = [natural]
    wanted = set(methods)
    for method in methods:  # a method taught by another sweep method (rslad <- trades) brings that one along
        teacher_method = METHODS[method].sweep_teacher
        while teacher_method in METHODS and teacher_method != "natural":  # natural is always planned
            wanted.add(teacher_method)
            teacher_method = METHODS[teacher_method].sweep_teacher
    for name in sweep_methods():  # registry order: a teacher's jobs come before its students'
        if name in wanted:
            jobs += [_job(job, name, t, teacher=by) for job, t, by in METHODS[name].sweep_jobs(temps)]
    for arm in arms:  # the arm's method's own jobs (at the arm's T when it names one), renamed <job>-<variant>
        for job, t, by in METHODS[arm.method].sweep_jobs([arm.temperature] if arm.temperature is not None else temps):
            jobs.append(replace(_job(f"{job}-{arm.variant}", arm.method, t, teacher=by), variant=arm.variant,
                                overrides=arm.overrides))
    names = [j.name for j in jobs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"the sweep plans {', '.join(dupes)} twice; give each arm once.")
    return jobs


def arm_name(arm: Arm) -> str:
    """The arm as `--arms` spells it (`trades-beta1`, `ltd-T5-innerkl`); `parse_arm` reads it back."""
    temp = "" if arm.temperature is None else f"-T{format_temperature(arm.temperature)}"
    return f"{arm.method}{temp}-{arm.variant}"


# The fields that make a sweep folder one experiment: a rerun may add temperatures, methods or arms, never change these.
SWEEP_IDENTITY = ("dataset", "arch", "seed", "eps", "norm", "settings", "seeds", "teacher")


@dataclass(frozen=True)
class SweepConfig:
    """One sweep, built once at its boundary (the CLI, the Slurm launcher, `run_sweep`'s keywords) and passed down.

    sweep.json stores it (`manifest_fields`) and `from_manifest` reads it back, so a stored sweep
    answers "may this folder take this sweep?" itself (`difference`). `settings` are TrainConfig
    overrides shared by every job, kept in their JSON form (None values dropped), as sweep.json has them.
    `teacher`: the natural job's overrides for a converged teacher (`teacher_settings`), or None.
    """

    temps: tuple[float, ...] = DEFAULT_SWEEP_TEMPS
    methods: tuple[str, ...] = DEFAULT_SWEEP_METHODS
    dataset: str = "digits"
    seed: int = 0
    seeds: tuple[int, ...] | None = None  # None: one seed, the historical layout runs/<name>
    settings: Mapping[str, Any] = field(default_factory=dict)
    arms: tuple[Arm, ...] = ()
    teacher: Mapping[str, Any] | None = None
    select: bool = False  # the paper's temperature search after training (needs ltd)

    def __post_init__(self) -> None:
        object.__setattr__(self, "temps", tuple(float(t) for t in self.temps))
        object.__setattr__(self, "methods", tuple(dict.fromkeys(self.methods)))
        object.__setattr__(self, "arms", tuple(self.arms))
        object.__setattr__(self, "settings", _as_json({k: v for k, v in dict(self.settings or {}).items() if v is not None}))
        if self.teacher is not None:
            object.__setattr__(self, "teacher", _as_json(dict(self.teacher)))
        if self.seeds is not None:
            object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
            object.__setattr__(self, "seed", self.seeds[0])  # the first seed names the sweep's own randomness
        if self.select and "ltd" not in self.methods:
            raise InputError("--select-temperature searches LTD's teacher temperature; add ltd to --methods.")

    @classmethod
    def build(cls, *, teacher_acc: float | None = None, teacher_epochs: int | None = None, **values: Any) -> "SweepConfig":
        """From the CLI's / API's words: `--teacher-acc` and `--teacher-epochs` become the teacher's overrides."""
        return cls(teacher=teacher_settings(teacher_acc, teacher_epochs), **values)

    def plan(self) -> list[Job]:
        return plan_jobs(self.temps, self.methods, seeds=self.seeds, arms=self.arms, teacher=self.teacher)

    def identity(self) -> dict[str, Any]:
        """SWEEP_IDENTITY's values, as sweep.json stores them (arch, eps and norm from the shared settings)."""
        probe = make_config("natural", self.dataset, seed=self.seed, **self.settings)
        values = {"dataset": self.dataset, "arch": probe.arch, "seed": self.seed, "eps": probe.eps, "norm": probe.norm,
                  "settings": self.settings, "seeds": self.seeds, "teacher": self.teacher}
        return _as_json(values)

    def manifest_fields(self) -> dict[str, Any]:
        """What sweep.json records of this config (besides provenance and the jobs)."""
        return {**self.identity(), "temps": list(self.temps), "methods": list(self.methods),
                "arms": [arm_name(a) for a in self.arms], "select_temperature": self.select}

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> "SweepConfig":
        """The config a stored sweep.json was planned with; InputError if it cannot be read back."""
        try:
            return cls(temps=tuple(manifest.get("temps") or ()), methods=tuple(manifest.get("methods") or ()),
                       dataset=manifest["dataset"], seed=int(manifest.get("seed") or 0), seeds=manifest.get("seeds"),
                       settings=manifest.get("settings") or {}, arms=tuple(parse_arm(a) for a in manifest.get("arms") or ()),
                       teacher=manifest.get("teacher"), select=bool(manifest.get("select_temperature")))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the sweep's stored settings are unreadable ({exc}); use another --out.") from None

    def difference(self, stored: Mapping[str, Any]) -> str | None:
        """Why a folder whose sweep.json holds `stored` cannot take this sweep: 'key=stored, not asked' (None: it can).

        Compared on SWEEP_IDENTITY as sweep.json stores it, so a sweep.json of any earlier version, which
        recorded those keys from the start, is judged by what it says, not by what today's defaults would fill in.
        """
        asked = self.identity()
        for key in SWEEP_IDENTITY:
            if _as_json(stored.get(key)) != asked[key]:
                return f"{key}={stored.get(key)!r}, not {asked[key]!r}"
        return None


def _as_json(value: Any) -> Any:
    """`value` as sweep.json holds it (tuples become lists), so a stored and a planned value compare equal."""
    return json.loads(json.dumps(value))


def _manifest(jobs: list[Job], config: SweepConfig, device: str) -> dict[str, Any]:
    return {
        "schema_version": SWEEP_SCHEMA_VERSION,
        "kind": "sweep",
        **provenance(device, config.seed),
        **config.manifest_fields(),
        "jobs": [j.to_dict() for j in jobs],
    }


def remove_stale_temp_files(folder: Path, keep: Iterable[Path] = ()) -> list[Path]:
    """Delete `.NAME.*.tmp` files that a killed process left behind (fileio.atomic_write's pattern).

    They are never read (the real file is only replaced once the temp file is complete), so
    removing them on the next start loses nothing. Folders in `keep` (and below) are left alone:
    a Slurm job still running there may be writing.
    """
    keep = [Path(k).resolve() for k in keep]
    stale = [p for p in folder.rglob(".*.tmp") if p.is_file()] if folder.is_dir() else []
    stale = [p for p in stale if not any(p.resolve().is_relative_to(k) for k in keep)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when the sweep process dies (e.g. killed with SIGKILL).

    Without it, orphaned workers keep training into the sweep folder after the user stopped it,
    and a rerun races them. Elsewhere it is a no-op (workers then end with their current job).
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except OSError:
            pass


# ------------------------------------------------------------------ worker planning

# Ours, not measured on every card: beyond a few processes per GPU the CUDA contexts only take
# turns; benchmarks/gpu_check.sh measures --jobs 1 against --jobs 6 on one GPU.
MAX_WORKERS_PER_GPU = 4
MAX_THREADS_PER_GPU_WORKER = 4  # a GPU worker's CPU threads only run the host side of small ops


@dataclass(frozen=True)
class WorkerPlan:
    """How a pool runs: `workers` processes (1 = in this process), placed on `devices`, each with `threads` CPU threads."""

    workers: int
    devices: tuple[str, ...]
    threads: int
    reason: str

    def describe(self) -> str:
        return f"{self.workers} worker(s) on {', '.join(self.devices)}, {self.threads} CPU thread(s) each ({self.reason})"


def plan_workers(jobs: int, devices: Sequence[str], n_tasks: int, cpu_count: int) -> WorkerPlan:
    """Pure: the pool for `n_tasks` tasks when `jobs` workers are asked for on `devices` with `cpu_count` cores.

    * never more workers than tasks;
    * CPU: at most one worker per core, the cores split evenly between them (small models use one
      core poorly, so two workers on two cores are nearly twice as fast as one);
    * CUDA: at most MAX_WORKERS_PER_GPU per GPU and at most one per core, each with
      cores / workers threads (at most MAX_THREADS_PER_GPU_WORKER).
    """
    if jobs < 1:
        raise InputError(f"--jobs must be a positive number of worker processes; got {jobs}.")
    cpu_count = max(1, cpu_count)
    devices = tuple(devices) or ("cpu",)
    workers = max(1, min(jobs, n_tasks))
    reasons = [f"{jobs} asked, {n_tasks} task(s)"]
    if devices[0] == "cpu":
        if workers > cpu_count:
            workers, reasons = cpu_count, reasons + [f"one per CPU core ({cpu_count})"]
        threads = max(1, cpu_count // workers)
    else:
        cap = MAX_WORKERS_PER_GPU * len(devices)
        if workers > cap:
            workers, reasons = cap, reasons + [f"at most {MAX_WORKERS_PER_GPU} per GPU"]
        if workers > cpu_count:
            workers, reasons = cpu_count, reasons + [f"at most one per CPU core ({cpu_count})"]
        threads = max(1, min(MAX_THREADS_PER_GPU_WORKER, cpu_count // workers))
        devices = devices[:workers]  # more GPUs than workers: use the first ones
    return WorkerPlan(workers, devices, threads, "; ".join(reasons))


def sweep_devices(spec: str | torch.device) -> list[str]:
    """`auto`/`cuda` on a machine with GPUs: every GPU (the pool spreads jobs over them); else the one device."""
    dev = resolve_device(spec)
    if dev.type == "cuda" and str(spec).strip().lower() in ("auto", "cuda"):
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [str(dev)]


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, cgroup cpusets), else os.cpu_count().

    os.cpu_count() counts the machine's cores even where the process is pinned to fewer, and a
    pool sized from it oversubscribes them (issue 23)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _worker_init(threads: int) -> None:
    """Pin a worker to its share of the cores: `threads` intra-op threads and one inter-op thread,
    so `workers x threads` never exceeds the cores (2 workers x 1 thread on 2 cores)."""
    die_with_parent()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran in this process
        pass


def run_pool(
    tasks: Sequence[Any],
    work: Callable[..., Any],
    plan: WorkerPlan,
    *,
    name: Callable[[Any], str],
    depends_on: Callable[[Any], Iterable[str]] = lambda _t: (),
    ready_elsewhere: Callable[[str], bool] = lambda _n: False,
    on_start: Callable[[Any, str], None] = lambda _t, _d: None,
    on_done: Callable[[Any, Any], None] = lambda _t, _r: None,
) -> None:
    """Run `work(task, device)` for every task, each once the tasks it depends on are done.

    The one pool of the sweep, for training and audits alike. `work` must be a top-level
    function (spawned workers import it). With one worker everything runs in this process, in
    order. A dependency that is not among `tasks` counts as done if `ready_elsewhere(name)`.
    A worker's error is raised here after the queued tasks are cancelled.
    """
    pending = list(tasks)
    names = {name(t) for t in tasks}
    done: set[str] = set()

    def ready(t: Any) -> bool:
        return all(d in done or (d not in names and ready_elsewhere(d)) for d in depends_on(t))

    def stuck() -> InputError:
        return InputError("sweep jobs wait on teachers that cannot be trained: "
                          + ", ".join(f"{name(t)} <- {', '.join(depends_on(t))}" for t in pending))

    if plan.workers == 1:
        while pending:
            t = next((t for t in pending if ready(t)), None)
            if t is None:
                raise stuck()
            pending.remove(t)
            on_start(t, plan.devices[0])
            on_done(t, work(t, plan.devices[0]))
            done.add(name(t))
        return
    load = {d: 0 for d in plan.devices}
    running: dict[Future, tuple[Any, str]] = {}
    with ProcessPoolExecutor(max_workers=plan.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(plan.threads,)) as pool:
        try:
            while pending or running:
                for t in list(pending):
                    if len(running) >= plan.workers:
                        break
                    if ready(t):
                        dev = min(load, key=load.get)
                        load[dev] += 1
                        on_start(t, dev)
                        running[pool.submit(work, t, dev)] = (t, dev)
                        pending.remove(t)
                if not running:
                    raise stuck()
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    t, dev = running.pop(fut)
                    load[dev] -= 1
                    result = fut.result()  # re-raise a worker's error here
                    done.add(name(t))
                    on_done(t, result)
        except BaseException:
            for fut in running:
                fut.cancel()
            raise


# ------------------------------------------------------------------------ training


@dataclass(frozen=True)
class _TrainTask:
    """Everything a worker needs to train one job (picklable)."""

    job: Job
    sweep_dir: str
    dataset: str
    seed: int
    settings: dict[str, Any]
    data_dir: str | None
    progress: bool
    compile: bool = False


def _train_task(task: _TrainTask, device: str) -> dict[str, Any]:
    return execute_job(task.job, task.sweep_dir, task.dataset, task.seed, task.settings, device, task.data_dir,
                       task.progress, compile=task.compile)


def execute_job(job: Job, sweep_dir: str, dataset: str, seed: int, settings: dict[str, Any], device: str,
                data_dir: str | None, progress: bool, compile: bool = False,
                log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train one job (top-level so a spawned worker can run it); returns its run.json record."""
    run_dir = Path(sweep_dir) / job.run_dir
    cfg = make_config(job.method, dataset, name=job.name, temperature=job.temperature,
                      seed=seed if job.seed is None else job.seed, **{**settings, **dict(job.overrides)})
    teacher_dir = Path(sweep_dir) / _teacher_dir(job) if job.teacher else None
    return train_run(cfg, run_dir, device=device, teacher_dir=teacher_dir, data_dir=data_dir, progress=progress,
                     compile=compile, log=log)


def _teacher_dir(job: Job) -> str:
    """The teacher's run folder, relative to the sweep: beside the student (`runs/` or `runs/s<seed>/`)."""
    folder = job.run_dir.rsplit("/", 1)[0]
    name = job.teacher.removesuffix(f"-s{job.seed}") if job.group is not None else job.teacher
    return f"{folder}/{name}"



LOCK_FILE = ".maskcheck-sweep.lock"
_HELD_LOCKS: dict[str, int] = {}  # resolved folder -> fd holding its flock, in this process


def hold_sweep_lock(folder: str | Path) -> None:
    """Lock a sweep folder for this process: a second train-sweep on it stops with one line, exit 2.

    An flock on SWEEP/.maskcheck-sweep.lock, which the kernel releases when the holder dies, so
    the lock of a killed run (a dead pid) is simply taken over. The file holds the holder's pid
    for the message. Held until `release_sweep_lock` or the process exits; taking it again in the
    same process is a no-op. Without fcntl (Windows) there is no lock.
    """
    try:
        import fcntl
    except ImportError:
        return
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _HELD_LOCKS:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise InputError(f"cannot use the sweep folder {folder} ({exc.strerror}); choose a writable --out.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 20, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise InputError(f"the sweep folder {folder} is in use by another maskcheck train-sweep (pid {holder}); "
                         "wait for it to finish, or choose another --out.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD_LOCKS[key] = fd


def release_sweep_lock(folder: str | Path) -> None:
    fd = _HELD_LOCKS.pop(str(Path(folder).resolve()), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def run_sweep(
    out: str | Path,
    config: SweepConfig | None = None,
    *,
    device: str = "auto",
    jobs: int = 1,
    data_dir: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
    compile: bool = False,
    times: SweepTimes | None = None,
    **sweep: Any,
) -> dict[str, Any]:
    """Plan, write SWEEP/sweep.json, train every unfinished job; returns the manifest.

    The sweep is `config`, or built here from SweepConfig.build's keywords (`temps`, `methods`,
    `dataset`, `seed`, `seeds`, `settings`, `arms`, `teacher_acc`, `teacher_epochs`, `select`):
    `settings` are TrainConfig overrides shared by every job (epochs, eps, lr, arch, ...);
    `seeds` trains every job once per seed (see `plan_jobs`); `arms` adds reference / ablation jobs;
    `teacher_acc` trains the natural teacher until its eval-mode training accuracy reaches this, for
    at most `teacher_epochs` epochs (default TEACHER_EPOCH_CAP), its facts recorded in sweep.json
    (`teachers`) and in every student's run.json (`teacher_info`); `select` runs the paper's Sec. 4.2
    temperature search (temperature.py) after training with the first seed's teacher, reusing the
    sweep's own ltd runs as the step-2 probes (`selected_temperature` in sweep.json).
    `compile`: train with torch.compile (speed only; not part of the sweep's identity). `times`: filled
    with the training stage's clock (an ETA is logged as each job finishes).
    """
    if config is None:
        config = SweepConfig.build(**sweep)
    elif sweep:
        raise TypeError(f"run_sweep takes a SweepConfig or its keywords, not both ({', '.join(sweep)})")
    if jobs < 1:
        raise InputError(f"--jobs must be a positive number of worker processes; got {jobs}.")
    out = Path(out)
    prepared = prepare_sweep(out, config, device=device, log=log)
    manifest, plan, todo, path = prepared.manifest, prepared.plan, prepared.todo, prepared.path
    dataset, settings, seed = config.dataset, dict(config.settings), config.seed
    plan_ = plan_workers(jobs, sweep_devices(device), len(todo), usable_cores())
    if todo:
        log(f"training: {plan_.describe()}")
    tasks = [_TrainTask(j, str(out), dataset, seed, settings, str(data_dir) if data_dir else None,
                        progress and plan_.workers == 1, compile) for j in todo]
    run_dirs = {j.name: j.run_dir for j in plan}  # seed folders: a teacher is not always runs/<name>
    clock = StageClock("training", {j.name: estimate_seconds(j, dataset, settings) or 1.0 for j in todo}, log)

    def started(t: _TrainTask, dev: str) -> None:
        clock.start(t.job.name)
        log(f"{t.job.name}: training" + (f" on {dev}" if plan_.workers > 1 else ""))

    run_pool(tasks, _train_task, plan_, name=lambda t: t.job.name, depends_on=lambda t: t.job.depends_on,
             ready_elsewhere=lambda d: d in run_dirs and checkpoint.is_complete_run(out / run_dirs[d]),
             on_start=started, on_done=lambda t, _r: clock.done(t.job.name))
    clock.stop()
    if times is not None:
        times.training = clock
    log(f"sweep finished in {clock.wall:.1f} s ({len(todo)} trained, {len(plan) - len(todo)} skipped)")
    manifest["teachers"] = teacher_facts(out, plan)
    if config.select:
        manifest["selected_temperature"] = select_sweep_temperature(out, plan, dataset, settings, device, data_dir, log)
    atomic_write_json(path, manifest)
    return manifest


@dataclass
class PreparedSweep:
    """What `prepare_sweep` decided: the manifest (written), the plan and the unfinished jobs."""

    manifest: dict[str, Any]
    plan: list[Job]
    todo: list[Job]
    path: Path


def prepare_sweep(out: Path, config: SweepConfig, *, device: str, log: Callable[[str], None],
                  keep_temp_in: Iterable[Path] = ()) -> PreparedSweep:
    """Lock the folder, plan, merge with and write SWEEP/sweep.json; the jobs still to train (any launcher).

    A folder whose sweep.json was planned with another identity (SweepConfig.difference) is refused.
    `keep_temp_in`: folders where a cluster job may be writing right now (launch.py), whose temp
    files are not stale.
    """
    out = Path(out)
    hold_sweep_lock(out)  # before anything touches the folder (stale temp files are removed below)
    plan = config.plan()
    manifest = _manifest(plan, config, device)
    path = out / SWEEP_FILE
    if path.is_file():
        old = read_sweep(out, SWEEP_SCHEMA_VERSION)
        why = config.difference(old)
        if why is not None:
            raise InputError(f"{path} was planned with {why}; use another --out or the original settings.")
        known = {j["name"] for j in manifest["jobs"]}
        manifest["jobs"] = [j for j in old.get("jobs", []) if j["name"] not in known] + manifest["jobs"]
        for key in ("teachers", "selected_temperature", "launcher"):
            if key in old:
                manifest[key] = old[key]
    remove_stale_temp_files(out, keep=keep_temp_in)
    atomic_write_json(path, manifest)
    log(f"estimated cost: {estimate_cost(plan, config.dataset, config.settings)}")
    todo = [j for j in plan if not checkpoint.is_complete_run(out / j.run_dir)]
    for j in plan:
        if j not in todo:
            # a kill between save_run and the checkpoint's removal leaves a stale resume file
            (out / j.run_dir / LAST_CKPT).unlink(missing_ok=True)
            log(f"{j.name}: finished, skipped")
    return PreparedSweep(manifest, plan, todo, path)


TEACHER_EPOCH_CAP = 40  # ours: digits and MNIST natural teachers reach 99.5% training accuracy well before


def teacher_settings(target: float | None, cap: int | None) -> dict[str, Any] | None:
    """TrainConfig overrides of the natural job for a converged teacher; None keeps the plain natural run."""
    if target is None:
        if cap is not None:
            raise InputError("--teacher-epochs caps a converged teacher; give --teacher-acc too (e.g. 0.995).")
        return None
    if not 0 < target <= 1:
        raise InputError(f"--teacher-acc must be a training accuracy in (0, 1], e.g. 0.995; got {target}.")
    if cap is not None and cap < 1:
        raise InputError(f"--teacher-epochs must be a positive number of epochs; got {cap}.")
    # Constant lr (no milestones): the dataset's schedule decays at a fixed epoch (MNIST: after 4), which
    # left an MNIST teacher at 81% training accuracy after 30 epochs; a teacher trained "until it
    # reaches the target" should not have its lr cut by a schedule made for another length (ours).
    return {"stop_train_acc": float(target), "epochs": int(cap or TEACHER_EPOCH_CAP), "milestones": ()}


def teacher_facts(out: Path, plan: list[Job]) -> dict[str, Any]:
    """Per natural teacher of the sweep: epochs trained, eval-mode training accuracy, held-out accuracy."""
    facts = {}
    for j in plan:
        if j.method != "natural" or not checkpoint.is_complete_run(out / j.run_dir):
            continue
        run = read_json(out / j.run_dir / "run.json", "run.json")
        m = run.get("metrics", {})
        facts[j.name] = {"epochs": run.get("epochs"), "train_acc": m.get("train_acc_eval", (m.get("history") or [{}])[-1].get("train_acc")),
                         "train_acc_measure": "eval" if "train_acc_eval" in m else "running", "converged": m.get("converged"),
                         "clean_acc": m.get("clean_acc"), "target": run.get("config", {}).get("stop_train_acc")}
    return facts


def select_sweep_temperature(out: Path, plan: list[Job], dataset: str, settings: dict[str, Any], device: str,
                             data_dir: str | Path | None, log: Callable[[str], None]) -> dict[str, Any]:
    """The paper's two-step search (temperature.py) on the first seed, reusing the sweep's ltd runs for step 2."""
    from .temperature import select_temperature

    first = plan[0].seed
    ltd = [j for j in plan if j.method == "ltd" and j.variant is None and j.seed == first]
    natural = next(j for j in plan if j.method == "natural" and j.seed == first)
    step2 = {j.temperature: out / j.run_dir for j in ltd if checkpoint.is_complete_run(out / j.run_dir)}
    seed = 0 if first is None else first
    try:
        result = select_temperature(out / "select-temperature", dataset=dataset, temps=sorted(step2), teacher_dir=out / natural.run_dir,
                                    device=device, seed=seed, data_dir=data_dir, settings=settings, step2_dirs=step2, log=log)
    except InputError as exc:  # e.g. no T passes step 1: a finding to record, not a reason to drop the sweep's audits
        log(f"temperature search: {exc}")
        return {"temperature": None, "error": str(exc)}
    log(f"selected temperature: T = {result['chosen_temperature']:g} (upper bound {result['upper_bound']:g})")
    return {"temperature": result["chosen_temperature"], "upper_bound": result["upper_bound"],
            "threshold": result["threshold"], "file": "select-temperature/temperature.json"}


# Seconds per epoch on 2 shared CPU cores at each dataset's default settings, from the committed
# reports' run.json train_seconds (digits: trades/ltd 12-14 s for 8 epochs, natural 3.9 s; MNIST:
# trades/ltd 500-720 s for 5 epochs, natural 101 s, both including the per-epoch held-out PGD).
# Ours; used only to print an estimate before a sweep starts.
SECONDS_PER_EPOCH_CPU = {"digits": {"natural": 0.5, "adversarial": 1.7}, "mnist": {"natural": 20.0, "adversarial": 120.0}}


def estimate_seconds(job: Job, dataset: str, settings: Mapping[str, Any]) -> float | None:
    """A rough CPU estimate of one job's training time, from SECONDS_PER_EPOCH_CPU (None: no rate for `dataset`)."""
    rates = SECONDS_PER_EPOCH_CPU.get(dataset)
    if rates is None:
        return None
    cfg = make_config(job.method, dataset, temperature=job.temperature, **{**settings, **dict(job.overrides)})
    frac = 1.0 if cfg.max_train is None else min(1.0, cfg.max_train / {"digits": 1438, "mnist": 8000}[dataset])
    kind = "adversarial" if METHODS[job.method].adversarial else "natural"
    return rates[kind] * cfg.epochs * frac * (cfg.attack_steps / DATASET_DEFAULTS[dataset]["attack_steps"] if kind == "adversarial" else 1)


def estimate_cost(plan: list[Job], dataset: str, settings: Mapping[str, Any]) -> str:
    """A rough CPU estimate of the training time (no audit), from SECONDS_PER_EPOCH_CPU."""
    if dataset not in SECONDS_PER_EPOCH_CPU:
        return f"{len(plan)} runs (no CPU estimate for {dataset})"
    total = sum(estimate_seconds(j, dataset, settings) or 0.0 for j in plan)
    return f"{len(plan)} runs, about {total / 60:.0f} min of training on 2 CPU cores (ours; audits extra)"


# ------------------------------------------------------------------ ETA and where the time went

# Relative audit cost of an adversarially trained model to a natural or dd one, for the ETA only
# (ours: in the committed digits reports' audit.json timings the natural and dd audits took 3-100 s,
# the trades/ltd ones 130-370 s; their points stand, so every attack runs on all of them).
AUDIT_WEIGHT_ADVERSARIAL = 6.0


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


@dataclass
class StageClock:
    """Wall time of one pool stage (training, audits) and of each of its tasks, and an ETA.

    The ETA is the stage's wall time so far scaled by the weight of the tasks left over the weight
    of those done (a task's weight: its expected relative cost), so it holds for any number of
    workers and sharpens as tasks finish. `log` gets one line per finished task.
    """

    stage: str
    weights: dict[str, float]
    log: Callable[[str], None] = lambda _msg: None
    started: float = field(default_factory=time.perf_counter)
    begun: dict[str, float] = field(default_factory=dict)
    took: dict[str, float] = field(default_factory=dict)
    ended: float | None = None

    def start(self, name: str) -> None:
        self.begun[name] = time.perf_counter()

    def done(self, name: str, what: str = "done") -> None:
        now = time.perf_counter()
        self.took[name] = now - self.begun.get(name, self.started)
        eta = self.eta(now)
        left = f", about {_fmt_s(eta)} left" if eta else ""
        self.log(f"{self.stage}: {name}: {what} ({_fmt_s(self.took[name])}; {len(self.took)}/{len(self.weights)} done{left})")

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left in this stage (None before any task has finished)."""
        done = sum(self.weights.get(n, 1.0) for n in self.took)
        left = sum(w for n, w in self.weights.items() if n not in self.took)
        if done <= 0:
            return None
        return ((now or time.perf_counter()) - self.started) * left / done

    def stop(self) -> None:
        self.ended = time.perf_counter()

    @property
    def wall(self) -> float:
        return (self.ended or time.perf_counter()) - self.started


@dataclass
class SweepTimes:
    """Where a sweep's time went: training, each audit, the report (wall seconds), for its last lines."""

    training: StageClock | None = None
    audits: StageClock | None = None
    report: float | None = None
    started: float = field(default_factory=time.perf_counter)

    def summary(self) -> list[str]:
        lines = []
        if self.training is not None and self.training.took:
            t = self.training
            slow = max(t.took, key=t.took.get)
            lines.append(f"training {_fmt_s(t.wall)} ({len(t.took)} runs; longest {slow} {_fmt_s(t.took[slow])})")
        if self.audits is not None and self.audits.took:
            a = self.audits
            each = ", ".join(f"{n} {v:.0f}" for n, v in sorted(a.took.items(), key=lambda kv: -kv[1]))
            lines.append(f"audits {_fmt_s(a.wall)} ({len(a.took)} models, seconds each: {each})")
        if self.report is not None:
            lines.append(f"report {_fmt_s(self.report)}")
        total = time.perf_counter() - self.started
        return [f"where the time went ({_fmt_s(total)} in all):", *(f"  {line}" for line in lines)]



# -------------------------------------------------------------------------- audits

def audit_settings_differ(audit: dict[str, Any], threat: dict[str, Any], n: int, seed: int, square_queries: int,
                          heldout_size: Callable[[], int], autoattack_standard: bool = False) -> str | None:
    """Why a stored audit.json does not answer the audit asked for (None: it does).

    The stored config (`AuditConfig.from_audit_json`) answers for every setting but `n`, which may be capped
    by the held-out split: a stored n below the one asked for is current only when it is the
    whole split (`heldout_size`, called only then, since it loads the data set).
    """
    asked = AuditConfig(ThreatModel(float(threat["eps"]), threat.get("norm", "linf")), n=n, seed=seed,
                        square_queries=square_queries, autoattack_standard=autoattack_standard)
    try:
        why = asked.difference(AuditConfig.from_audit_json(audit), ignore=("n",))  # n: capped by the split, below
    except InputError as exc:
        return str(exc)
    if why is not None:
        return why
    config = audit.get("config") if isinstance(audit.get("config"), dict) else {}
    stored_n = audit.get("n")
    whole_split = isinstance(stored_n, int) and min(n, config.get("n") or n) >= stored_n == heldout_size()
    if config.get("n") is not None and config["n"] != n and not whole_split:  # both asks capped to the same split: same audit
        return f"n {config['n']} -> {n}"
    if stored_n != n and not (isinstance(stored_n, int) and stored_n < n and stored_n == heldout_size()):
        return f"n {stored_n} -> {n}"
    if not isinstance(audit.get("points"), dict) and isinstance(stored_n, int) and stored_n < heldout_size():
        return "points: the first n -> a seeded random sample"  # audit.json before issue 22 (the whole split is the same set)
    return None


@dataclass(frozen=True)
class _AuditTask:
    name: str
    run_dir: str
    n: int
    seed: int
    square_queries: int
    data_dir: str | None
    progress: bool
    label: str | None = None  # the model path audit.json records: the run folder relative to the sweep
    autoattack_standard: bool = False  # also run FAB-T for the AutoAttack-standard figure (no check needs it)
    method: str | None = None  # the job's training method (sweep.json), for the ETA's audit weight


def _audit_task(task: _AuditTask, device: str) -> str:
    """Audit one finished run into RUN/audit.json (a pool task); returns the verdict text."""
    from .auditing import run_audit, run_threat
    from .checkpoint import load_model
    from .data import load_dataset

    loaded = load_model(task.run_dir, device=device)
    loaded.extra.setdefault("path", task.label or str(task.run_dir))  # relative: committed audits name no machine's folders
    eps, norm = run_threat(loaded)
    result = run_audit(loaded, load_dataset(loaded.info.name, task.data_dir), eps=eps, norm=norm, n=task.n, seed=task.seed,
                       square_queries=task.square_queries, autoattack_standard=task.autoattack_standard,
                       device=device, progress=task.progress)
    result.save(Path(task.run_dir) / "audit.json")
    return result.verdict.text


def audit_sweep(
    sweep_dir: str | Path,
    *,
    n: int = DEFAULT_N,
    seed: int = 0,
    square_queries: int = DEFAULT_SQUARE_QUERIES,
    device: str | torch.device = "cpu",
    data_dir: str | Path | None = None,
    jobs: int = 1,
    progress: bool = True,
    include_teachers: bool = False,
    autoattack_standard: bool = False,
    log: Callable[[str], None] = lambda msg: None,
    times: SweepTimes | None = None,
) -> list[Path]:
    """Audit every finished run of a sweep into RUN/audit.json, on the sweep's worker pool.

    A run whose audit.json was made with the settings asked for is kept, so this resumes like the
    sweep does; one audited with other settings (n, seed, Square queries, threat model) is
    audited again. dd teachers are intermediates (their students are the sweep's dd models) and
    are skipped unless `include_teachers`. `autoattack_standard=True` adds FAB-T, which only the
    AutoAttack-standard figure uses (about a third of a robust model's audit on CPU; no check needs it).
    An ETA is logged as each audit finishes; `times` gets the stage's clock (each audit's wall time).
    """
    todo, done = plan_audits(sweep_dir, n=n, seed=seed, square_queries=square_queries, data_dir=data_dir, progress=progress,
                             include_teachers=include_teachers, autoattack_standard=autoattack_standard, log=log)
    plan = plan_workers(jobs, sweep_devices(device), len(todo), usable_cores())
    if todo:
        log(f"audit: {plan.describe()}")
    if plan.workers > 1:
        todo = [_AuditTask(**{**asdict(t), "progress": False}) for t in todo]
    clock = StageClock("audit", {t.name: _audit_weight(t) for t in todo}, log)
    run_pool(todo, _audit_task, plan, name=lambda t: t.name, on_start=lambda t, _dev: clock.start(t.name),
             on_done=lambda t, verdict: clock.done(t.name, verdict))
    clock.stop()
    if times is not None:
        times.audits = clock
    return done + [Path(t.run_dir) / "audit.json" for t in todo]


def _audit_weight(task: _AuditTask) -> float:
    """A model's expected audit cost relative to a natural one, for the ETA (AUDIT_WEIGHT_ADVERSARIAL)."""
    return AUDIT_WEIGHT_ADVERSARIAL if task.method in METHODS and METHODS[task.method].adversarial else 1.0


def plan_audits(
    sweep_dir: str | Path,
    *,
    n: int,
    seed: int,
    square_queries: int,
    data_dir: str | Path | None,
    progress: bool,
    include_teachers: bool = False,
    include_untrained: bool = False,
    autoattack_standard: bool = False,
    log: Callable[[str], None] = lambda msg: None,
) -> tuple[list[_AuditTask], list[Path]]:
    """The audits `audit_sweep` would run (and the audit.json files that are current), for any launcher.

    `include_untrained`: also plan audits of runs not trained yet (a cluster launcher submits them
    to start after their training job); otherwise those are skipped with a log line.
    """
    from .checkpoint import RUN_FILE, is_complete_run

    sweep_dir = Path(sweep_dir)
    manifest = read_sweep(sweep_dir, SWEEP_SCHEMA_VERSION)
    sizes: dict[str, int] = {}

    def heldout_size(dataset: str) -> int:
        if dataset not in sizes:
            from .data import load_dataset

            sizes[dataset] = len(load_dataset(dataset, data_dir).heldout)
        return sizes[dataset]

    def task_for(job: Mapping[str, Any]) -> _AuditTask:
        return _AuditTask(job["name"], str(sweep_dir / job["run_dir"]), n, seed, square_queries,
                          str(data_dir) if data_dir else None, progress, label=job["run_dir"],
                          autoattack_standard=autoattack_standard, method=job.get("method"))

    todo, done = [], []
    for job in manifest.get("jobs", []):
        run_dir = sweep_dir / job["run_dir"]
        out = run_dir / "audit.json"
        if job["name"].startswith("dd-teacher") and not include_teachers:
            continue
        if not is_complete_run(run_dir):
            if include_untrained:
                todo.append(task_for(job))
            else:
                log(f"audit: {job['name']} is not trained yet; skipped")
            continue
        if out.is_file():
            run = read_json(run_dir / RUN_FILE, "run record")
            validate_run(run, str(run_dir / RUN_FILE), 1)
            if not isinstance(run.get("dataset"), str):
                raise InputError(f"{run_dir / RUN_FILE} lacks its dataset; retrain that run or remove its folder.")
            from .data import get_info

            threat = run.get("threat") or {"eps": get_info(run["dataset"]).default_eps, "norm": "linf"}
            why = audit_settings_differ(read_json(out, "audit result"), threat, n, seed, square_queries,
                                        lambda: heldout_size(run["dataset"]), autoattack_standard)
            if why is None:
                done.append(out)
                continue
            log(f"audit: {job['name']}: settings changed ({why}); auditing again")
        todo.append(task_for(job))
    return todo, done

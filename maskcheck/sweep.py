"""The temperature sweep: plan the jobs, share teachers, resume, run independent jobs in parallel.

Jobs (ARCHITECTURE.md, "Sweep folder"):
* `natural` once: the baseline and the teacher every LTD run shares;
* `dd`: per T a teacher `dd-teacher-T{T}` (CE on logits / T) and a student `dd-T{T}` trained on its
  soft labels (methods/dd.py);
* `trades` once (it has no temperature); `ltd-T{T}` per T, teacher `natural`;
* optional `rslad` (teacher: the sweep's `trades` model) and `pgd-at`.

Rerunning the same command skips finished runs (`checkpoint.is_complete_run`) and resumes a
half-finished one from its `last.ckpt`. With `jobs > 1` independent jobs run on that many spawned
worker processes, a job starting once the runs it depends on are finished; on CUDA each job gets
one GPU (the least busy). A single run bigger than one GPU is a `torchrun` job of its own
(`torchrun --nproc-per-node N -m maskcheck train ...`), not something this module schedules.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from . import checkpoint
from .config import format_temperature, provenance, resolve_device
from .errors import InputError
from .fileio import atomic_write_json, read_json
from .training import LAST_CKPT, make_config, train_run

SWEEP_FILE = "sweep.json"
SWEEP_SCHEMA_VERSION = 1
SWEEP_METHODS = ("dd", "trades", "ltd", "rslad", "pgd-at")
DEFAULT_METHODS = ("dd", "trades", "ltd")


@dataclass(frozen=True)
class Job:
    """One run of the sweep. `teacher` and `depends_on` name other jobs of the same sweep."""

    name: str
    method: str
    temperature: float | None
    teacher: str | None
    run_dir: str  # relative to the sweep folder
    depends_on: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["depends_on"] = list(self.depends_on)
        return d


def _job(name: str, method: str, temperature: float | None = None, teacher: str | None = None) -> Job:
    return Job(name, method, temperature, teacher, f"runs/{name}", (teacher,) if teacher else ())


def plan_jobs(temps: Iterable[float], methods: Iterable[str] = DEFAULT_METHODS) -> list[Job]:
    """The sweep's jobs in an order where every teacher comes before its students."""
    temps, methods = list(temps), list(methods)
    unknown = [m for m in methods if m not in SWEEP_METHODS]
    if unknown:
        raise InputError(f"unknown sweep method(s) {', '.join(unknown)}; valid: {', '.join(SWEEP_METHODS)}.")
    jobs = [_job("natural", "natural")]
    if "dd" in methods:
        for t in temps:
            tag = format_temperature(t)
            jobs += [_job(f"dd-teacher-T{tag}", "dd", t), _job(f"dd-T{tag}", "dd", t, teacher=f"dd-teacher-T{tag}")]
    if "trades" in methods or "rslad" in methods:
        jobs.append(_job("trades", "trades"))
    if "ltd" in methods:
        jobs += [_job(f"ltd-T{format_temperature(t)}", "ltd", t, teacher="natural") for t in temps]
    if "rslad" in methods:
        jobs.append(_job("rslad", "rslad", teacher="trades"))
    if "pgd-at" in methods:
        jobs.append(_job("pgd-at", "pgd-at"))
    return jobs


def _manifest(jobs: list[Job], dataset: str, temps: list[float], methods: list[str], seed: int,
              settings: dict[str, Any], device: str) -> dict[str, Any]:
    probe = make_config("natural", dataset, seed=seed, **settings)
    return {
        "schema_version": SWEEP_SCHEMA_VERSION,
        "kind": "sweep",
        **provenance(device, seed),
        "dataset": dataset,
        "arch": probe.arch,
        "temps": temps,
        "methods": methods,
        "seed": seed,
        "eps": probe.eps,
        "norm": probe.norm,
        "settings": settings,
        "jobs": [j.to_dict() for j in jobs],
    }


def _check_compatible(old: dict[str, Any], new: dict[str, Any], path: Path) -> None:
    """A sweep folder holds one experiment: refuse a rerun with other data, model, seed or settings."""
    for key in ("dataset", "arch", "seed", "eps", "norm", "settings"):
        if old.get(key) != new.get(key):
            raise InputError(f"{path} was planned with {key}={old.get(key)!r}, not {new.get(key)!r}; "
                             "use another --out or the original settings.")


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete `.NAME.*.tmp` files that a killed process left behind (fileio.atomic_write's pattern).

    They are never read (the real file is only replaced once the temp file is complete), so
    removing them on the next start loses nothing.
    """
    stale = [p for p in folder.rglob(".*.tmp") if p.is_file()] if folder.is_dir() else []
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


def _worker_init(threads: int) -> None:
    die_with_parent()
    torch.set_num_threads(threads)


def execute_job(job: Job, sweep_dir: str, dataset: str, seed: int, settings: dict[str, Any], device: str,
                data_dir: str | None, progress: bool) -> dict[str, Any]:
    """Train one job (top-level so a spawned worker can run it); returns its run.json record."""
    run_dir = Path(sweep_dir) / job.run_dir
    cfg = make_config(job.method, dataset, name=job.name, temperature=job.temperature, seed=seed, **settings)
    teacher_dir = Path(sweep_dir) / "runs" / job.teacher if job.teacher else None
    return train_run(cfg, run_dir, device=device, teacher_dir=teacher_dir, data_dir=data_dir, progress=progress)


def _devices(device: str) -> list[str]:
    """One entry per GPU for `auto`/`cuda` on a multi-GPU machine; otherwise the single device."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [str(dev)]


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
    *,
    temps: list[float],
    methods: Iterable[str] = DEFAULT_METHODS,
    dataset: str = "digits",
    seed: int = 0,
    device: str = "auto",
    jobs: int = 1,
    settings: dict[str, Any] | None = None,
    data_dir: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Plan, write SWEEP/sweep.json, train every unfinished job; returns the manifest.

    `settings` are TrainConfig overrides shared by every job (epochs, eps, lr, arch, ...).
    """
    out = Path(out)
    # JSON round trip: the manifest stores settings as JSON, so compare them in that form on rerun
    settings = json.loads(json.dumps({k: v for k, v in (settings or {}).items() if v is not None}))
    methods = list(dict.fromkeys(methods))
    if jobs < 1:
        raise InputError(f"--jobs must be a positive number of worker processes; got {jobs}.")
    hold_sweep_lock(out)  # before anything touches the folder (stale temp files are removed below)
    plan = plan_jobs(temps, methods)
    manifest = _manifest(plan, dataset, list(temps), methods, seed, settings, device)
    path = out / SWEEP_FILE
    if path.is_file():
        old = read_json(path, "sweep manifest")
        _check_compatible(old, manifest, path)
        known = {j["name"] for j in manifest["jobs"]}
        manifest["jobs"] = [j for j in old.get("jobs", []) if j["name"] not in known] + manifest["jobs"]
    remove_stale_temp_files(out)
    atomic_write_json(path, manifest)
    todo = [j for j in plan if not checkpoint.is_complete_run(out / j.run_dir)]
    for j in plan:
        if j not in todo:
            # a kill between save_run and the checkpoint's removal leaves a stale resume file
            (out / j.run_dir / LAST_CKPT).unlink(missing_ok=True)
            log(f"{j.name}: finished, skipped")
    args = (str(out), dataset, seed, settings, str(data_dir) if data_dir else None)
    started = time.perf_counter()
    if jobs == 1:
        for j in todo:
            log(f"{j.name}: training")
            execute_job(j, *args[:4], device=_devices(device)[0], data_dir=args[4], progress=progress)
            log(f"{j.name}: done")
    else:
        _run_parallel(todo, args, _devices(device), jobs, log)
    log(f"sweep finished in {time.perf_counter() - started:.1f} s ({len(todo)} trained, {len(plan) - len(todo)} skipped)")
    return manifest


def _run_parallel(todo: list[Job], args: tuple, devices: list[str], jobs: int, log: Callable[[str], None]) -> None:
    """Run `todo` on `jobs` spawned workers, each job once all its dependencies are finished."""
    sweep_dir = Path(args[0])
    done: set[str] = set()  # names finished in this call
    pending = list(todo)
    pending_names = {j.name for j in todo}
    running: dict[Future, tuple[Job, str]] = {}
    load = {d: 0 for d in devices}
    threads = max(1, (os.cpu_count() or 1) // jobs) if devices[0] == "cpu" else 2
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as pool:
        try:
            while pending or running:
                for j in list(pending):
                    if len(running) >= jobs:
                        break
                    if all(d in done or (d not in pending_names and checkpoint.is_complete_run(sweep_dir / "runs" / d))
                           for d in j.depends_on):
                        dev = min(load, key=load.get)
                        load[dev] += 1
                        log(f"{j.name}: training on {dev}")
                        running[pool.submit(execute_job, j, *args[:4], dev, args[4], False)] = (j, dev)
                        pending.remove(j)
                if not running:
                    raise InputError("sweep jobs wait on teachers that cannot be trained: "
                                     + ", ".join(f"{j.name} <- {', '.join(j.depends_on)}" for j in pending))
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    j, dev = running.pop(fut)
                    load[dev] -= 1
                    fut.result()  # re-raise a worker's error here
                    done.add(j.name)
                    log(f"{j.name}: done")
        except BaseException:
            for fut in running:
                fut.cancel()
            raise

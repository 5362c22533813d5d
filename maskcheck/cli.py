"""The `maskcheck` command line: parse, build configs, call the library, write files.

This is the only module that prints. User mistakes raise `MaskcheckError` anywhere below;
`main()` turns them into one line on stderr and the documented exit code (docs/failure-modes.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from . import __version__
from .config import DEFAULT_N, DEFAULT_SQUARE_QUERIES, DEFAULT_SWEEP_METHODS, DEFAULT_SWEEP_TEMPS, check_norm
from .errors import EXIT_FLAGGED, EXIT_INTERNAL, EXIT_INTERRUPTED, MaskcheckError
from .limits import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_UNPACKED_BYTES, DEFAULT_TIMEOUT_PER_BATCH, GIB
from .validate import check_out_folder, check_out_path

if TYPE_CHECKING:
    from .checkpoint import LoadedModel
    from .launch import LaunchResult, SlurmConfig

app = typer.Typer(
    name="maskcheck",
    help="Tell real adversarial robustness from gradient masking: train temperature sweeps, audit models, render reports.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

MAX_LIMIT_FLAG = 1e6  # ours: --max-*-gib (a PiB) and --timeout-per-batch (11 days) beyond any real need
DEVICE_HELP = "auto (CUDA if present, else CPU), cpu, or cuda[:n]."
DATA_DIR_HELP = "Folder holding downloaded datasets (default: $MASKCHECK_DATA_DIR or ~/.cache/maskcheck/data)."
LAUNCHER_HELP = "local: this machine's worker pool (--jobs); slurm: one Slurm job per run and per audit (docs/slurm.md)."
SLURM_HELP = "Slurm setting KEY=VALUE, repeatable: partition, time, gpus, cpus, mem, account, qos, constraint, setup, sbatch.<option>."
SLURM_CONFIG_HELP = "JSON or TOML file of Slurm settings (the --slurm keys; extra sbatch options in an sbatch table)."
AUTOATTACK_STANDARD_HELP = ("Also run FAB-T for the AutoAttack-standard robust accuracy, to compare with papers (off by default: "
                            "no check needs it and it was a third of a robust model's audit on CPU; --no-autoattack-standard "
                            "is the default, kept for scripts).")
WAIT_HELP = "--launcher slurm: wait for the jobs, then report (default: submit and return; rerun to collect)."


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"maskcheck {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """Exit codes: 0 ok; 1 masking flagged (with --fail-on-flag) or a regression diff; 2 usage or input error; 3 internal error (a bug); 130 interrupted."""


def info(msg: str) -> None:
    typer.echo(msg, err=True)


# ============================================================================ train
# (training issue) maskcheck train / train-sweep / select-temperature


PRECISION_HELP = ("Autocast dtype of every forward, the inner attack's included: fp32, bf16 or fp16 "
                  "(default: bf16 AMP on CUDA, else fp16 + GradScaler; fp32 on CPU). Recorded in run.json.")


def _train_settings(**values: object) -> dict:
    """CLI overrides shared by `train` and `train-sweep` (None = the dataset's default)."""
    from .config import parse_eps

    import math

    for flag, key, low, strict in (("--lr", "lr", 0.0, True), ("--weight-decay", "weight_decay", 0.0, False),
                                   ("--beta", "beta", 0.0, False), ("--tau", "tau", 0.0, True),
                                   ("--teacher-acc", "teacher_acc", 0.0, True)):
        value = values.get(key)
        if value is not None and not (math.isfinite(value) and (value > low if strict else value >= low)):
            raise MaskcheckError(f"{flag} must be a finite number {'>' if strict else '>='} {low:g}; got {value}.")
    eps = values.pop("eps")
    step = values.pop("attack_step_size")
    return {**values, "eps": parse_eps(eps) if eps is not None else None,
            "attack_step_size": parse_eps(step) if step is not None else None}


@app.command("train")
def train_cmd(
    method: str = typer.Option(..., "--method", help="Training method, a name of maskcheck/methods/ (the table in docs/cli.md; an unknown name lists them)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Distillation temperature T (dd, ltd)."),
    tau: float = typer.Option(1.0, "--tau", help="ltd: fixed student temperature inside forward, train and test."),
    awp: bool = typer.Option(False, "--awp", help="Adversarial weight perturbation (trades, ltd, pgd-at)."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="Teacher run folder (dd student, ltd, rslad)."),
    dataset: str = typer.Option("digits", "--dataset"),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture (default: the dataset's)."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    eps: Optional[str] = typer.Option(None, "--eps", help="Linf budget, e.g. 0.2 or 8/255 (default: the dataset's)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adam or sgd."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay"),
    attack_steps: Optional[int] = typer.Option(None, "--attack-steps", help="PGD steps of the inner maximisation."),
    attack_step_size: Optional[str] = typer.Option(None, "--attack-step-size"),
    beta: Optional[float] = typer.Option(None, "--beta", help="TRADES / LTD robustness weight (default 6)."),
    inner: Optional[str] = typer.Option(None, "--inner", help="trades/ltd inner attack loss: ce or kl (default: trades kl, ltd ce)."),
    max_train: Optional[int] = typer.Option(None, "--max-train", help="Train on the first N training points only."),
    preset: Optional[str] = typer.Option(None, "--preset", help="paper: the LTD paper's CIFAR-10 recipe."),
    precision: Optional[str] = typer.Option(None, "--precision", help=PRECISION_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<dataset>-<name>)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    seed: int = typer.Option(0, "--seed"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    compile_model: bool = typer.Option(False, "--compile", help="Train with torch.compile (faster steps after a compile of about a minute; GPU)."),
) -> None:
    """Train one model into a run folder (resumes from RUN/last.ckpt; works under torchrun)."""
    _check_seed(seed)
    from .training import make_config, train_run

    settings = _train_settings(arch=arch, epochs=epochs, eps=eps, batch_size=batch_size, lr=lr, optimizer=optimizer,
                               weight_decay=weight_decay, attack_steps=attack_steps, attack_step_size=attack_step_size,
                               beta=beta, max_train=max_train, tau=tau, awp=awp, inner=inner, precision=precision)
    cfg = make_config(method, dataset, preset=preset, temperature=temperature, seed=seed, **settings)
    run_dir = out or Path("runs") / f"{dataset}-{cfg.name}"
    check_out_folder(run_dir, "--out")  # before training, which may take hours (an existing file is refused)
    record = train_run(cfg, run_dir, device=device, teacher_dir=teacher, data_dir=data_dir, progress=progress, log=info,
                       compile=compile_model)
    m = record["metrics"]
    if m["clean_acc"] == m["clean_acc"]:  # NaN on non-zero torchrun ranks, which print nothing
        typer.echo(f"{run_dir}: clean_acc {m['clean_acc']:.3f} pgd_acc {m['pgd_acc']:.3f} ({m['train_seconds']:.1f} s)")


@app.command("train-sweep")
def train_sweep_cmd(
    temps: str = typer.Option(",".join(f"{t:g}" for t in DEFAULT_SWEEP_TEMPS), "--temps", help="Comma-separated positive temperatures, or 'paper' (1,2,3,5,8,10,12,15,20: LTD Table IV)."),
    methods: str = typer.Option(",".join(DEFAULT_SWEEP_METHODS), "--methods", help="Comma-separated training methods besides the natural teacher (the table in docs/cli.md; an unknown name lists them)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Train every job per seed, e.g. 0,1,2 (runs/s<seed>/<name>, names <name>-s<seed>; one natural teacher per seed). Overrides --seed."),
    arms: Optional[str] = typer.Option(None, "--arms", help="Reference/ablation arms, each its own report row: trades-beta1, trades-innerce, ltd-innerkl (every T) or ltd-T5-innerkl."),
    teacher_acc: Optional[float] = typer.Option(None, "--teacher-acc", help="Train the natural teacher until its training accuracy reaches this (e.g. 0.995)."),
    teacher_epochs: Optional[int] = typer.Option(None, "--teacher-epochs", help="Epoch cap of the --teacher-acc teacher (default 40)."),
    select_temperature: bool = typer.Option(False, "--select-temperature", help="After training, run LTD's Sec. 4.2 temperature search with the sweep's teacher and mark the chosen T."),
    dataset: str = typer.Option("digits", "--dataset"),
    out: Optional[Path] = typer.Option(None, "--out", help="Sweep folder (default runs/sweep-<dataset>)."),
    jobs: int = typer.Option(1, "--jobs", help="Parallel worker processes for training and audits (capped by tasks, cores and 4 per GPU; the plan is logged)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    seed: int = typer.Option(0, "--seed"),
    arch: Optional[str] = typer.Option(None, "--arch"),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    eps: Optional[str] = typer.Option(None, "--eps"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    attack_steps: Optional[int] = typer.Option(None, "--attack-steps"),
    attack_step_size: Optional[str] = typer.Option(None, "--attack-step-size"),
    max_train: Optional[int] = typer.Option(None, "--max-train"),
    preset: Optional[str] = typer.Option(None, "--preset"),
    precision: Optional[str] = typer.Option(None, "--precision", help=PRECISION_HELP),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    audit: bool = typer.Option(True, "--audit/--no-audit", help="Audit every trained model (RUN/audit.json) after training."),
    audit_n: int = typer.Option(DEFAULT_N, "--audit-n", help="Held-out points per audit (capped at the split's size)."),
    square_queries: int = typer.Option(DEFAULT_SQUARE_QUERIES, "--square-queries", help="Square attack queries per audit (AutoAttack standard's)."),
    autoattack_standard: bool = typer.Option(False, "--autoattack-standard/--no-autoattack-standard",
                                             help=AUTOATTACK_STANDARD_HELP),
    report: bool = typer.Option(True, "--report/--no-report", help="Render the HTML report of the sweep and its audits."),
    report_out: Optional[Path] = typer.Option(None, "--report-out", help="Report path (default SWEEP/report.html)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
    compile_model: bool = typer.Option(False, "--compile", help="Train with torch.compile (faster steps after a compile of about a minute; GPU)."),
    launcher: str = typer.Option("local", "--launcher", help=LAUNCHER_HELP),
    slurm: list[str] = typer.Option([], "--slurm", help=SLURM_HELP),
    slurm_config: Optional[Path] = typer.Option(None, "--slurm-config", help=SLURM_CONFIG_HELP),
    wait: bool = typer.Option(False, "--wait/--no-wait", help=WAIT_HELP),
) -> None:
    """Train natural, dd, trades and ltd over a temperature sweep, audit them and render the report; rerun to resume."""
    from .config import parse_name_list, parse_temps
    from .sweep import SweepConfig, hold_sweep_lock, parse_arms, parse_seeds, run_sweep, sweep_methods
    from .training import PRESETS

    _check_seed(seed)
    temp_list = parse_temps(temps)
    seed_list = parse_seeds(seeds) if seeds is not None else None
    for s in seed_list or []:
        _check_seed(s, "--seeds")
    arm_list = parse_arms(arms)
    method_list = parse_name_list(methods, sweep_methods(), "--methods")
    if audit_n <= 0:
        raise MaskcheckError(f"--audit-n must be a positive number of points; got {audit_n}.")
    settings = _train_settings(arch=arch, epochs=epochs, eps=eps, batch_size=batch_size, lr=lr, attack_steps=attack_steps,
                               attack_step_size=attack_step_size, max_train=max_train, precision=precision)
    if preset is not None:
        if preset not in PRESETS:
            raise MaskcheckError(f"unknown --preset {preset!r}; valid: {', '.join(PRESETS)}.")
        settings = {**PRESETS[preset], **{k: v for k, v in settings.items() if v is not None}}
    slurm_cfg = _launcher_config(launcher, slurm, slurm_config, wait)
    sweep_dir = out or Path("runs") / f"sweep-{dataset}"
    check_out_folder(sweep_dir, "--out")
    if report_out is not None:
        check_out_path(report_out, "--report-out")
    sweep = SweepConfig.build(temps=temp_list, methods=method_list, dataset=dataset, seed=seed, settings=settings,
                              seeds=seed_list, arms=arm_list, teacher_acc=teacher_acc, teacher_epochs=teacher_epochs,
                              select=select_temperature)
    hold_sweep_lock(sweep_dir)  # for training, audits and report; released when this process exits
    if slurm_cfg is not None:
        from .launch import slurm_sweep

        _, result = slurm_sweep(sweep_dir, config=slurm_cfg, wait=wait, jobs=jobs, sweep=sweep, device=device,
                                data_dir=data_dir, compile=compile_model, audit=audit,
                                audit_args=dict(n=audit_n, seed=seed, square_queries=square_queries, autoattack_standard=autoattack_standard), log=info)
        typer.echo(f"{sweep_dir / 'sweep.json'}")
        if _launch_finished(sweep_dir, result) and report:
            from .report import render_report

            typer.echo(str(render_report([sweep_dir], report_out or sweep_dir / "report.html")))
        return
    from .launch import refuse_live_jobs
    from .sweep import SweepTimes

    refuse_live_jobs(sweep_dir)
    times = SweepTimes()
    run_sweep(sweep_dir, sweep, device=device, jobs=jobs, data_dir=data_dir, progress=progress, log=info,
              compile=compile_model, times=times)
    typer.echo(f"{sweep_dir / 'sweep.json'}")
    if audit:
        from .sweep import audit_sweep

        audit_sweep(sweep_dir, n=audit_n, seed=seed, square_queries=square_queries, device=device,
                    data_dir=data_dir, jobs=jobs, progress=progress, autoattack_standard=autoattack_standard, log=info,
                    times=times)
    if report:
        import time

        from .report import render_report

        r0 = time.perf_counter()
        typer.echo(str(render_report([sweep_dir], report_out or sweep_dir / "report.html")))
        times.report = time.perf_counter() - r0
    for line in times.summary():
        info(line)


MAX_SEED = 2**63 - 1  # torch.manual_seed and numpy take seeds in [0, 2**64); one bit kept for int64 records


def _check_seed(seed: int | None, flag: str = "--seed") -> None:
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise MaskcheckError(f"{flag} must be an integer in 0..2**63-1; got {seed}.")


def _launcher_config(launcher: str, flags: list[str], config_file: Optional[Path], wait: bool) -> "SlurmConfig | None":
    """None for --launcher local (after refusing slurm-only flags); the validated SlurmConfig for slurm."""
    from .launch import LAUNCHERS, load_config

    if launcher not in LAUNCHERS:
        raise MaskcheckError(f"--launcher must be {' or '.join(LAUNCHERS)}; got {launcher!r}.")
    if launcher == "local":
        if flags or config_file is not None or wait:
            raise MaskcheckError("--slurm, --slurm-config and --wait go with --launcher slurm; add it, or drop them.")
        return None
    return load_config(config_file, flags)


def _launch_finished(sweep_dir: Path, result: "LaunchResult") -> bool:
    """Say what the slurm launcher did; True when every task is done (the report can be rendered)."""
    from .launch import JobsUnfinishedError, unfinished_message

    if result.unfinished:
        raise JobsUnfinishedError(unfinished_message(result))
    if not result.waited and (result.submitted or result.kept):
        info(f"{len(result.submitted)} job(s) submitted, {len(result.kept)} still queued or running; "
             f"follow them with `maskcheck sweep-status {sweep_dir}`; rerun this command once they are done to report.")
        return False
    return True


@app.command("select-temperature")
def select_temperature_cmd(
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="Natural teacher run folder (trained if omitted)."),
    dataset: str = typer.Option("digits", "--dataset"),
    temps: str = typer.Option("1,2,3,5,8,10,15,20,50", "--temps", help="Candidate temperatures."),
    min_acc: Optional[float] = typer.Option(None, "--min-acc", help="Step 1 threshold (default 0.95 x teacher accuracy)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs of each substitute / LTD probe."),
    max_train: Optional[int] = typer.Option(None, "--max-train"),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for temperature.json (default runs/select-<dataset>)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    seed: int = typer.Option(0, "--seed"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """LTD's two-step temperature search (paper Sec. 4.2); prints and saves the curve and the chosen T."""
    _check_seed(seed)
    from .config import parse_temps
    from .temperature import select_temperature

    out_dir = out or Path("runs") / f"select-{dataset}"
    result = select_temperature(out_dir, dataset=dataset, temps=parse_temps(temps), teacher_dir=teacher, min_acc=min_acc,
                                epochs=epochs, max_train=max_train, device=device, seed=seed, data_dir=data_dir, log=info)
    for row in result["step1"]:
        typer.echo(f"step 1  T={row['temperature']:g}  substitute clean_acc {row['clean_acc']:.3f}")
    for row in result["step2"]:
        typer.echo(f"step 2  T={row['temperature']:g}  held-out LTD objective {row['ltd_objective']:.4f}")
    typer.echo(f"chosen T = {result['chosen_temperature']:g} (upper bound {result['upper_bound']:g}); saved {result['path']}")


# ============================================================================ audit
# (audit issue) maskcheck audit


@app.command("audit")
def audit_cmd(
    model: Path = typer.Argument(..., help="Run folder, .safetensors/.pt state dict, TorchScript or torch.export archive."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset (required for model files; a run folder knows it)."),
    arch: Optional[str] = typer.Option(None, "--arch", "--model", help="Architecture for bare weights, e.g. small-cnn."),
    eps: Optional[str] = typer.Option(None, "--eps", help="Budget in (0, 1], e.g. 0.3 or 8/255 (default: the run's or the dataset's)."),
    norm: Optional[str] = typer.Option(None, "--norm", help="linf or l2 (default: the run's, else linf)."),
    n: int = typer.Option(DEFAULT_N, "--n", help="Number of held-out points to audit."),
    checks: Optional[str] = typer.Option(None, "--checks", help="Comma-separated checks to run (default: all)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Audit JSON (default: MODEL/audit.json for a run folder, else audit.json)."),
    fail_on_flag: bool = typer.Option(False, "--fail-on-flag", help="Exit 1 when the verdict is 'masked' (same as --fail-on masked)."),
    fail_on: Optional[str] = typer.Option(None, "--fail-on", help="Exit 1 at this grade or worse: masked, or warn (any grade but 'no masking detected': attack-sensitive, inconclusive, masked)."),
    eot: Optional[int] = typer.Option(None, "--eot", help="EOT draws per gradient and prediction (default: 20 if the model is randomised, else 1)."),
    seed: int = typer.Option(0, "--seed", help="Seed for every attack's randomness."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    trust_code: bool = typer.Option(False, "--trust-code", "--allow-pickle", "--unsafe-pickle",
                                    help="Load formats that can carry code (TorchScript, pickles, .pt2 with pickled entries): runs that code!"),
    max_file_gib: float = typer.Option(DEFAULT_MAX_FILE_BYTES / GIB, "--max-file-gib", help="Refuse model and --data files larger than this."),
    max_unpacked_gib: float = typer.Option(DEFAULT_MAX_UNPACKED_BYTES / GIB, "--max-unpacked-gib",
                                           help="Refuse model and --data files that unpack or allocate more than this (zip bombs; default a quarter of RAM, at most 8)."),
    timeout_per_batch: float = typer.Option(DEFAULT_TIMEOUT_PER_BATCH, "--timeout-per-batch",
                                            help="Stop (exit 2) when one forward pass takes longer than this many seconds."),
    square_queries: int = typer.Option(DEFAULT_SQUARE_QUERIES, "--square-queries", help="Square attack queries (AutoAttack standard's)."),
    autoattack_standard: bool = typer.Option(False, "--autoattack-standard/--no-autoattack-standard",
                                             help=AUTOATTACK_STANDARD_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    bpda: Optional[str] = typer.Option(None, "--bpda", help="BPDA-PGD with a replaced backward: 'identity:<submodule path>' (e.g. identity:model.0, a non-differentiable preprocessing you know) or 'surrogate' (a distilled smooth model's gradient). Default: BPDA through the surrogate only when input gradients vanish."),
    data: Optional[Path] = typer.Option(None, "--data", help="Audit these points instead of the dataset's held-out split: a .pt/.npz file with x in [0, 1] and int y, or an ImageFolder directory."),
    normalize: Optional[str] = typer.Option(None, "--normalize", help="Wrap a model that expects normalised inputs: a dataset name, MEAN,STD, or C means then C stds."),
    threat: Optional[str] = typer.Option(None, "--threat", help="rb: models: RobustBench threat model, Linf or L2 (sets the leaderboard's eps and norm)."),
    rb_model_dir: Optional[Path] = typer.Option(None, "--rb-model-dir", help="rb: models: RobustBench's model folder (default ./models, as RobustBench)."),
    download: bool = typer.Option(False, "--download", help="rb: models: download a missing checkpoint."),
    launcher: str = typer.Option("local", "--launcher", help="A sweep folder as MODEL: " + LAUNCHER_HELP),
    slurm: list[str] = typer.Option([], "--slurm", help=SLURM_HELP),
    slurm_config: Optional[Path] = typer.Option(None, "--slurm-config", help=SLURM_CONFIG_HELP),
    wait: bool = typer.Option(False, "--wait/--no-wait", help=WAIT_HELP),
    jobs: int = typer.Option(1, "--jobs", help="A sweep folder as MODEL: audits on this many worker processes (as train-sweep --jobs)."),
) -> None:
    """Run the gradient-masking checks on a model (or rb:<RobustBench name>) and write the audit JSON.

    MODEL may also be a sweep folder (train-sweep --out): every model of the sweep is audited into
    RUN/audit.json (those whose audit.json has the settings asked for are kept), on this machine or
    with --launcher slurm as one Slurm job each."""
    from .api import audit as run_api_audit
    from .auditing import default_out, resolve_checks, run_threat
    from .checkpoint import load_model
    from .config import parse_eps, resolve_device
    from .data import load_dataset, load_points
    from .errors import LimitError
    from .robustbench_models import is_robustbench, load_robustbench, standard_threat

    _check_seed(seed)
    if n <= 0:
        raise MaskcheckError(f"--n must be a positive number of points; got {n}.")
    if norm is not None:
        check_norm(norm)
    for flag, value in (("--max-file-gib", max_file_gib), ("--max-unpacked-gib", max_unpacked_gib),
                        ("--timeout-per-batch", timeout_per_batch)):
        if not 0 < value <= MAX_LIMIT_FLAG:
            raise MaskcheckError(f"{flag} must be a positive number of at most {MAX_LIMIT_FLAG:g}; got {value}.")
    if fail_on not in (None, "masked", "warn", "attack-sensitive"):
        raise MaskcheckError(f"--fail-on must be masked or warn (= attack-sensitive); got {fail_on!r}.")
    if bpda is not None:
        from .config import parse_bpda

        parse_bpda(bpda)  # a usage error before any model is loaded
    slurm_cfg = _launcher_config(launcher, slurm, slurm_config, wait)
    if (model / "sweep.json").is_file():
        _audit_sweep_folder(model, slurm_cfg, n=n, seed=seed, square_queries=square_queries, jobs=jobs,
                            autoattack_standard=autoattack_standard, device=device, data_dir=data_dir,
                            quiet=quiet, wait=wait, ignored={"--checks": checks, "--out": out, "--fail-on": fail_on or (fail_on_flag or None),
                                                  "--eot": eot, "--bpda": bpda, "--data": data, "--normalize": normalize, "--threat": threat})
        return
    if slurm_cfg is not None:
        raise MaskcheckError(f"--launcher slurm audits a sweep folder (with sweep.json); {model} is not one. "
                             "Audit a single model with the default --launcher local.")
    if jobs != 1:
        raise MaskcheckError(f"--jobs runs a sweep folder's audits in parallel; {model} is a single model: drop --jobs.")
    names = resolve_checks(checks)
    out_path = out or default_out(model)
    check_out_path(out_path, "--out")  # before the audit, which may take hours
    dev = resolve_device(device)
    if is_robustbench(model):
        loaded = load_robustbench(str(model), dataset or "cifar10", threat or "Linf", model_dir=rb_model_dir, device=dev,
                                  download=download)
    else:
        loaded = load_model(model, dataset=dataset, arch=arch, device=dev, trust_code=trust_code,
                            max_file_bytes=int(max_file_gib * GIB), max_unpacked_bytes=int(max_unpacked_gib * GIB),
                            timeout_per_batch=timeout_per_batch)
    loaded.extra.setdefault("path", str(model))
    guarded = loaded.model  # the GuardedModel that times each forward (--normalize wraps it below)
    if normalize is not None:
        _wrap_normalization(loaded, normalize)
    given_eps, norm = (parse_eps(eps) if eps is not None else None), norm
    if threat is not None:  # RobustBench's budget for that threat model unless --eps / --norm say otherwise
        rb_eps, rb_norm = standard_threat(threat)
        given_eps, norm = (rb_eps if given_eps is None else given_eps), norm or rb_norm
    eps_value, norm = run_threat(loaded, given_eps, norm)
    points = None
    if data is not None:
        x, y = load_points(data, loaded.info, n, max_file_bytes=int(max_file_gib * GIB),
                           max_unpacked_bytes=int(max_unpacked_gib * GIB))  # the model's limits, shared
    else:  # a sample of the held-out split seeded by --seed, as run_audit and the sweep draw it (issue 22)
        from .auditing import audit_points

        x, y, points = audit_points(load_dataset(loaded.info.name, data_dir), n, seed)
    result = run_api_audit(loaded, x, y, eps=eps_value, norm=norm, checks=names, seed=seed, eot=eot,
                           square_queries=square_queries, autoattack_standard=autoattack_standard, device=dev,
                           progress=not quiet, bpda=bpda)
    if points is not None:
        result.points = points
    if getattr(guarded, "timed_out", None):  # a check may have caught the error and gone on: the audit is void
        raise LimitError(guarded.timed_out)
    if data is not None:
        result.dataset = f"{loaded.info.name}:{data.name}"  # the model's dataset, audited on the user's points
    path = result.save(out_path)
    for c in result.checks:
        info(f"  {c.severity.value:7s} {c.check:22s} {c.summary}")
    acc = ", ".join(f"{k} {100 * v:.1f}%" for k, v in result.robust_acc.items())
    info(f"clean {100 * result.clean_acc:.1f}%; robust: {acc}")
    typer.echo(f"{result.verdict.text} ({path})")
    from .results import NO_MASKING

    strict = fail_on in ("warn", "attack-sensitive") and result.verdict.grade != NO_MASKING  # inconclusive fails too
    if strict or ((fail_on_flag or fail_on == "masked") and result.verdict.flagged):
        raise typer.Exit(EXIT_FLAGGED)


def _audit_sweep_folder(sweep_dir: Path, slurm_cfg: "SlurmConfig | None", *, n: int, seed: int, square_queries: int,
                        jobs: int, autoattack_standard: bool, device: str,
                        data_dir: Optional[Path], quiet: bool, wait: bool, ignored: dict) -> None:
    """`maskcheck audit SWEEP`: the sweep's own audit stage, locally or as Slurm jobs."""
    given = [flag for flag, value in ignored.items() if value is not None]
    if given:
        raise MaskcheckError(f"{', '.join(given)} apply to a single model, not to a sweep folder; drop them "
                             "(a sweep's audits run every check and write RUN/audit.json).")
    from .sweep import hold_sweep_lock

    audit_args = dict(n=n, seed=seed, square_queries=square_queries, autoattack_standard=autoattack_standard)
    if slurm_cfg is None:
        from .launch import refuse_live_jobs
        from .sweep import audit_sweep

        hold_sweep_lock(sweep_dir)
        refuse_live_jobs(sweep_dir)
        paths = audit_sweep(sweep_dir, device=device, data_dir=data_dir, jobs=jobs, progress=not quiet, log=info, **audit_args)
        typer.echo(f"{len(paths)} audit(s) current in {sweep_dir}; render them with `maskcheck report {sweep_dir}`")
        return
    from .launch import slurm_audit

    result = slurm_audit(sweep_dir, config=slurm_cfg, wait=wait, jobs=jobs, device=device, data_dir=data_dir,
                         audit_args=audit_args, log=info)
    if _launch_finished(sweep_dir, result):
        typer.echo(f"every audit of {sweep_dir} is current; render them with `maskcheck report {sweep_dir}`")


def _wrap_normalization(loaded: "LoadedModel", text: str) -> None:
    """--normalize: put the model behind (x - mean) / std so the audit feeds it pixels in [0, 1]."""
    from .data import parse_normalize
    from .models import normalized

    if loaded.format == "run":
        raise MaskcheckError("--normalize: a maskcheck run folder normalises inside the model already; drop --normalize.")
    mean, std = parse_normalize(text, loaded.info.input_shape[0])
    loaded.model = normalized(loaded.model, mean, std)  # no .eval(): a torch.export module refuses it; the audit sets it
    loaded.extra["normalize"] = {"mean": list(mean), "std": list(std)}


@app.command("sweep-status")
def sweep_status_cmd(
    sweep: Path = typer.Argument(..., help="A sweep folder (train-sweep --out)."),
    tail: int = typer.Option(10, "--tail", help="Lines of each failed job's log to show."),
) -> None:
    """A table of the sweep's tasks (training, temperature search, audits): done, queued, running, failed, with log tails.

    Works for both launchers: Slurm jobs are looked up by the ids in sweep.json; local runs by their
    folders (a run with last.ckpt and no run.json is interrupted, or running while a maskcheck
    process holds the sweep). Exit 0 whenever the table is printed, whatever the jobs' states."""
    from .launch import format_status, sweep_status

    if tail < 0:
        raise MaskcheckError(f"--tail must be a number of lines >= 0; got {tail}.")
    rows, header = sweep_status(sweep)
    typer.echo(format_status(sweep, rows, header, tail))


# =========================================================================== report
# (report issue) maskcheck report


@app.command("report")
def report_cmd(
    inputs: list[Path] = typer.Argument(..., help="Sweep folders (with sweep.json) and/or audit.json files.", show_default=False),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="HTML file to write (default: <first sweep folder>/report.html, else ./report.html). The matrix goes beside it as .csv and .md."),
) -> None:
    """Render one self-contained HTML report (JSON in; no model, no GPU) and print its path."""
    from .report import render_report  # pandas/matplotlib only load for this command

    if out is None:
        first_dir = next((p for p in inputs if p.is_dir()), None)
        out = first_dir / "report.html" if first_dir is not None else Path("report.html")
    for path in (out, out.with_suffix(".csv"), out.with_suffix(".md"), out.with_suffix(".seeds.csv"),
                 out.with_suffix(".seeds.md")):
        check_out_path(path, "--out")
    typer.echo(render_report(inputs, out))


# ========================================================================== regress
# (regression issue) maskcheck regress


@app.command("regress")
def regress_cmd(
    inputs: list[Path] = typer.Argument(..., help="Sweep folders (runs/*/audit.json) and/or audit JSON files."),
    baseline: Path = typer.Option(..., "--baseline", "-b", help="The expected flags (JSON written by --write-baseline)."),
    write_baseline: bool = typer.Option(False, "--write-baseline", help="Write or overwrite the baseline from INPUTS instead of comparing."),
) -> None:
    """Compare every check's flag with a stored baseline; exit 1 on any change (a new flag or a lost one)."""
    from . import regress

    if write_baseline:
        check_out_path(baseline, "--baseline")
    audits = regress.collect_audits(inputs)
    if write_baseline:
        path = regress.write_baseline(baseline, audits)
        info(f"baseline of {len(audits)} model(s) written to {path}")
        return
    changes = regress.compare(regress.load_baseline(baseline), audits)
    typer.echo(regress.format_diff(changes))
    if changes:
        raise typer.Exit(EXIT_FLAGGED)


# ============================================================================= main


INTERRUPTED = "maskcheck: interrupted; finished runs are kept, rerun the same command to resume."


def crash_log_dir() -> Path:
    """Where tracebacks of internal errors go: $MASKCHECK_LOG_DIR, else the system temp folder."""
    import os
    import tempfile

    return Path(os.environ.get("MASKCHECK_LOG_DIR") or Path(tempfile.gettempdir()) / "maskcheck-logs")


def _report_crash(exc: BaseException) -> str:
    """Write the traceback to a log file; return the one line to print (it names the file)."""
    import os
    import time
    import traceback

    summary = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200]
    text = f"maskcheck {__version__}, argv {sys.argv!r}\n" + "".join(traceback.format_exception(exc))
    try:
        folder = crash_log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        log.write_text(text, encoding="utf-8")
        where = f"traceback in {log}"
    except OSError as err:
        where = f"the traceback could not be saved ({err.strerror})"
    return (f"maskcheck: internal error (a bug in maskcheck, not a finding about the model): {summary}; "
            f"{where}. Please report it with that file.")


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: every outcome is one documented exit code, never a bare traceback.

    0/1 come from the commands; a `MaskcheckError` (user input) prints one line, exit 2; Click's
    own usage errors (unknown command or option) already print one line and exit 2; any other
    exception is a bug: one line naming a log file with the traceback, exit 3; Ctrl-C exits 130.
    """
    try:
        app(args=argv, standalone_mode=True)
    except MaskcheckError as exc:
        typer.echo(f"maskcheck: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except SystemExit as exc:
        if exc.code == EXIT_INTERRUPTED:  # Typer turns Ctrl-C inside a command into a silent exit 130
            typer.echo(INTERRUPTED, err=True)
        raise
    except KeyboardInterrupt:  # Ctrl-C before a command started
        typer.echo(INTERRUPTED, err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - anything else is a bug; it must never look like exit 1 (a finding)
        typer.echo(_report_crash(exc), err=True)
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()

"""The `maskcheck` command line: parse, build configs, call the library, write files.

This is the only module that prints. User mistakes raise `MaskcheckError` anywhere below;
`main()` turns them into one line on stderr and the documented exit code (README, "Exit codes").
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .errors import MaskcheckError

app = typer.Typer(
    name="maskcheck",
    help="Tell real adversarial robustness from gradient masking: train temperature sweeps, audit models, render reports.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

DEVICE_HELP = "auto (CUDA if present, else CPU), cpu, or cuda[:n]."
DATA_DIR_HELP = "Folder holding downloaded datasets (default: $MASKCHECK_DATA_DIR or ~/.cache/maskcheck/data)."


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"maskcheck {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """Exit codes: 0 ok; 1 masking flagged (with --fail-on-flag) or a regression diff; 2 usage or input error."""


def info(msg: str) -> None:
    typer.echo(msg, err=True)


# ============================================================================ train
# (training issue) maskcheck train / train-sweep / select-temperature


@app.command("train")
def train_cmd() -> None:
    """Train one model into a run folder (not built yet: see the training issue)."""
    raise MaskcheckError("maskcheck train is not available in this version yet.")


@app.command("train-sweep")
def train_sweep_cmd() -> None:
    """Train dd / trades / ltd over a temperature sweep (not built yet)."""
    raise MaskcheckError("maskcheck train-sweep is not available in this version yet.")


# ============================================================================ audit
# (audit issue) maskcheck audit


@app.command("audit")
def audit_cmd(
    model: Path = typer.Argument(..., help="Run folder, .safetensors/.pt state dict, TorchScript or torch.export archive."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset (required for model files; a run folder knows it)."),
    arch: Optional[str] = typer.Option(None, "--arch", "--model", help="Architecture for bare weights, e.g. small-cnn."),
    eps: Optional[str] = typer.Option(None, "--eps", help="Budget in (0, 1], e.g. 0.3 or 8/255 (default: the run's or the dataset's)."),
    norm: Optional[str] = typer.Option(None, "--norm", help="linf or l2 (default: the run's, else linf)."),
    n: int = typer.Option(1000, "--n", help="Number of held-out points to audit."),
    checks: Optional[str] = typer.Option(None, "--checks", help="Comma-separated checks to run (default: all)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Audit JSON (default: MODEL/audit.json for a run folder, else audit.json)."),
    fail_on_flag: bool = typer.Option(False, "--fail-on-flag", help="Exit 1 when any check flags masking."),
    eot: int = typer.Option(1, "--eot", help="Rerun gradient attacks with expectation over K draws."),
    seed: int = typer.Option(0, "--seed", help="Seed for every attack's randomness."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", "--unsafe-pickle", help="Load full pickled modules (runs their code!)."),
    square_queries: int = typer.Option(5000, "--square-queries", help="Square attack queries (AutoAttack default 5000)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run the gradient-masking checks on a model and write the audit JSON."""
    from .audit import default_out, resolve_checks, run_audit
    from .checkpoint import load_model
    from .config import parse_eps, resolve_device
    from .data import load_dataset

    if n <= 0:
        raise MaskcheckError(f"--n must be a positive number of points; got {n}.")
    names = resolve_checks(checks)
    dev = resolve_device(device)
    loaded = load_model(model, dataset=dataset, arch=arch, device=dev, allow_pickle=allow_pickle)
    loaded.extra.setdefault("path", str(model))
    threat = (loaded.run or {}).get("threat") or {}
    eps_value = parse_eps(eps) if eps is not None else float(threat.get("eps", loaded.info.default_eps))
    splits = load_dataset(loaded.info.name, data_dir)
    result = run_audit(loaded, splits, eps=eps_value, norm=norm or threat.get("norm", "linf"), n=n, checks=names, seed=seed,
                       eot=eot, square_queries=square_queries, device=dev, progress=not quiet)
    path = result.save(out or default_out(model))
    for c in result.checks:
        info(f"  {c.severity.value:7s} {c.check:22s} {c.summary}")
    acc = ", ".join(f"{k} {100 * v:.1f}%" for k, v in result.robust_acc.items())
    info(f"clean {100 * result.clean_acc:.1f}%; robust: {acc}")
    typer.echo(f"{result.verdict.text} ({path})")
    if fail_on_flag and result.verdict.flagged:
        raise typer.Exit(1)


# =========================================================================== report
# (report issue) maskcheck report


@app.command("report")
def report_cmd() -> None:
    """Render the HTML report of a sweep and its audits (not built yet)."""
    raise MaskcheckError("maskcheck report is not available in this version yet.")


# ============================================================================= main


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: user errors become one line and an exit code, never a traceback.

    Click's own usage errors (unknown command or option) already print one line and exit 2.
    """
    try:
        app(args=argv, standalone_mode=True)
    except MaskcheckError as exc:
        typer.echo(f"maskcheck: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("maskcheck: interrupted; finished runs are kept, rerun the same command to resume.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

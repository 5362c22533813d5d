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
from .errors import EXIT_FLAGGED, MaskcheckError

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
def audit_cmd() -> None:
    """Run the gradient-masking checks on a model (not built yet)."""
    raise MaskcheckError("maskcheck audit is not available in this version yet.")


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


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: user errors become one line and an exit code, never a traceback.

    Click's own usage errors (unknown command or option) already print one line and exit 2.
    """
    try:
        app(args=argv, standalone_mode=True)
    except MaskcheckError as exc:
        typer.echo(f"maskcheck: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except SystemExit as exc:
        if exc.code == 130:  # Typer turns Ctrl-C inside a command into a silent exit 130
            typer.echo(INTERRUPTED, err=True)
        raise
    except KeyboardInterrupt:  # Ctrl-C before a command started
        typer.echo(INTERRUPTED, err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

"""User-facing errors and the exit-code contract.

A `MaskcheckError` is a mistake in what the user gave us (a file, a flag, data): the CLI
prints its message as one line and exits with `exit_code`, never with a traceback. Any other
exception is a bug in maskcheck: the CLI prints one line saying so, writes the traceback to a
log file and exits with `EXIT_INTERNAL`, so a crash can never be read as a finding.
Messages say what was expected, what was got, and what to do.
"""

from __future__ import annotations

# Exit codes, documented in docs/failure-modes.md (0: success, a command that returns normally).
EXIT_FLAGGED = 1  # masking flagged (with --fail-on-flag) or a regression against a baseline
EXIT_USAGE = 2  # usage or input error, a refused file, a limit hit
EXIT_INTERNAL = 3  # an unexpected exception: a bug in maskcheck (traceback in a log file)
EXIT_JOBS_UNFINISHED = 4  # --launcher slurm --wait: cluster jobs ended without their result (launch.JobsUnfinishedError)
EXIT_INTERRUPTED = 130  # Ctrl-C


class MaskcheckError(Exception):
    """An error caused by user input; carries its CLI exit code."""

    exit_code: int = EXIT_USAGE


class InputError(MaskcheckError, ValueError):
    """Bad file, bad data or bad argument value.

    Also a `ValueError`, so Python API callers can catch it the way they catch any bad value.
    """


class UnsafeModelFileError(InputError):
    """A model file can carry code (pickle, TorchScript, opaque objects): refused without --trust-code."""


class LimitError(InputError):
    """A resource limit was hit (file size, decompressed size, time per forward pass)."""

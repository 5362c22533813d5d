"""User-facing errors.

A `MaskcheckError` is a mistake in what the user gave us (a file, a flag, data): the CLI
prints its message as one line and exits with `exit_code`, never with a traceback.
Messages say what was expected, what was got, and what to do.
"""

from __future__ import annotations

# Exit codes, documented in the README ("Exit codes").
EXIT_OK = 0
EXIT_FLAGGED = 1  # masking flagged (with --fail-on-flag) or a regression against a baseline
EXIT_USAGE = 2  # usage or input error


class MaskcheckError(Exception):
    """An error caused by user input; carries its CLI exit code."""

    exit_code: int = EXIT_USAGE


class InputError(MaskcheckError):
    """Bad file, bad data or bad argument value."""


class UnsafeModelFileError(InputError):
    """A model file would need arbitrary code execution (pickle) to load."""

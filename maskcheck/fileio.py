"""Atomic file writes: a reader never sees a half-written file.

Every artefact (weights, run configs, audit JSON, reports, manifests) goes through here:
write to a temporary file in the same folder, fsync, then `os.replace` over the target.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import InputError


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {folder}: {exc.strerror}. Choose a writable location.") from None
    if not os.access(folder, os.W_OK):
        raise InputError(f"output folder {folder} is not writable. Choose a writable location.")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | Path, write: Callable[[Any], None], *, binary: bool = True) -> Path:
    """Call `write(fileobj)` on a temp file next to `path`, then rename it over `path`.

    An existing `path` that is not a regular file (a device, FIFO, socket, or a link to one) is
    refused, never replaced. An OS error (disk full, the folder replaced mid-run, permissions)
    becomes an `InputError` naming the path; the temp file is removed and an existing `path` is
    left as it was. The finished result is not lost: it is written again to a fallback file in
    the working folder (`fallback_path`), and the error says where.
    """
    path = Path(path)
    if os.path.lexists(path) and not path.is_file() and not path.is_dir():
        raise InputError(f"{path} exists and is not a regular file (a device, FIFO or socket?); refused to replace it. "
                         "Choose another output path.")
    try:
        return _write_replace(path, write, binary)
    except InputError as exc:
        kept = _write_fallback(path, write, binary)
        if kept is None:
            raise
        raise InputError(f"{exc} The finished result is kept in {kept}.") from None


def fallback_path(path: Path) -> Path:
    """Where a result goes when its own path cannot be written: the working folder (or $MASKCHECK_UNSAVED_DIR),
    under a name that says so."""
    folder = Path(os.environ.get("MASKCHECK_UNSAVED_DIR") or Path.cwd())
    return folder / f"maskcheck-unsaved-{os.getpid()}-{path.name}"


def _write_fallback(path: Path, write: Callable[[Any], None], binary: bool) -> Path | None:
    target = fallback_path(path)
    if target.resolve() == path.resolve():
        return None
    try:
        with open(target, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        return target
    except OSError:
        try:
            target.unlink()
        except OSError:
            pass
        return None


def _write_replace(path: Path, write: Callable[[Any], None], binary: bool) -> Path:
    _check_writable(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InputError(f"cannot write in {path.parent}: {exc.strerror}. Choose a writable location.") from None
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give results the usual permissions
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if os.path.lexists(path) and not path.is_file() and not path.is_dir():  # swapped in while we wrote
            raise InputError(f"{path} became a non-regular file while maskcheck wrote it; refused to replace it.")
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise InputError(f"could not write {path}: {exc.strerror or exc}. Check the path and free space.") from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON (NaN/Inf are refused: JSON has no such numbers)."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def inside(folder: str | Path, relpath: Any, what: str) -> Path:
    """`folder / relpath`, refused (exit 2) unless it stays inside `folder` once resolved, symlinks included.

    Every path read from a JSON file (sweep.json's run_dir, launch records' log and result,
    task logs) goes through here: a hostile sweep folder must not make maskcheck read or write
    outside itself (`"../victim/run"`, an absolute path, or a symlink pointing out).
    """
    folder = Path(folder)
    if not isinstance(relpath, str) or not relpath or "\0" in relpath or Path(relpath).is_absolute():
        raise InputError(f"{what} must be a relative path inside {folder}; got {str(relpath)[:80]!r}. "
                         "Regenerate the file with maskcheck.")
    target = folder / relpath
    try:
        real, base = target.resolve(), folder.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise InputError(f"{what} {relpath[:80]!r} cannot be resolved ({exc}); regenerate the file.") from None
    if real == base or not real.is_relative_to(base):
        raise InputError(f"{what} {relpath[:80]!r} leads outside {folder} (to {real}); refused. "
                         "A sweep folder's files may only name paths inside it; regenerate the file with maskcheck.")
    return target


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} overflows to infinity")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


MAX_JSON_BYTES = 256 * 1024**2  # ours: a full audit JSON with plots is under 1 MB


def _read_regular(path: Path, what: str, limit: int) -> bytes:
    """The bytes of a regular file (a FIFO or device is refused without blocking), at most `limit`."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}.") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a folder, not a JSON file.") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}.") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"{what} {path} is a folder, not a JSON file.")
        if not stat.S_ISREG(mode):
            raise InputError(f"{what} {path} is not a regular file (a FIFO or device?); pass the file itself.")
        try:
            data = f.read(limit + 1)
        except OSError as exc:  # e.g. /proc/self/mem
            raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}.") from None
    if len(data) > limit:
        raise InputError(f"{what} {path} is over {limit // 1024**2} MiB; that is no maskcheck JSON file.")
    return data


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file strictly: NaN, Infinity and numbers that overflow to inf are refused.

    (Python's json module accepts all three by default; maskcheck never writes them.)
    """
    path = Path(path)
    data = _read_regular(path, what, MAX_JSON_BYTES)
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path} is not valid UTF-8 JSON ({exc.reason}). Was it truncated? Regenerate it.") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} {path} is not valid JSON ({exc}). Was it truncated? Regenerate it.") from None
    except ValueError as exc:  # from the two hooks above
        raise InputError(f"{what} {path} holds a non-finite number ({exc}); regenerate it.") from None
    except RecursionError:
        obj = None
    if obj is None and data.strip() != b"null" or _depth_over(obj, MAX_JSON_DEPTH):
        raise InputError(f"{what} {path} nests deeper than {MAX_JSON_DEPTH} levels; that is no maskcheck JSON file.")
    return obj


MAX_JSON_DEPTH = 64  # ours: maskcheck writes at most 6 levels; deep nesting only breaks recursive readers


def _depth_over(obj: Any, limit: int) -> bool:
    """True when `obj` nests lists/objects more than `limit` deep (iterative: no recursion to exhaust)."""
    stack = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth >= limit:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False

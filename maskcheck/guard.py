"""Defences against untrusted inputs: model files, JSON files and output paths.

People who audit a model hold a stranger's file by the nature of the job. This module holds
what keeps such a file from running code or exhausting the machine (README, "Loading policy"):

* `read_model_bytes`: regular files only (no FIFO, device, or link to one), read once into
  memory under a size cap, so what is inspected is exactly what is loaded;
* `check_zip_limits` / `inspect_pt2`: a zip archive's declared sizes are capped before anything
  is unpacked, and a `torch.export` archive is checked entry by entry to hold plain tensor
  data only (torch itself unpickles several kinds of entry with `weights_only=False`);
* `GuardedModel`: the wrapper every loaded model is audited through (eval/train never reach a
  foreign program, which may refuse them; each forward is timed against a limit);

JSON inputs and output paths are checked in `validate.py` (no torch, so the report can use it).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import stat
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import InputError, LimitError, UnsafeModelFileError
from .limits import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_UNPACKED_BYTES, GIB  # noqa: F401 - re-exported for checkpoint.py

TRUST_FLAG = "--trust-code"
PICKLE_MAGIC = b"\x80"  # pickle protocol 2+ starts with PROTO (0x80)
ZIP_MAGIC = b"PK\x03\x04"


# ------------------------------------------------------------------------------- model files


def read_model_bytes(path: Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The content of `path`, refused unless it is a regular file of at most `max_bytes`.

    The file is opened non-blocking and checked on the open descriptor (fstat), so a FIFO or a
    device (or a symlink to one, e.g. `/dev/zero`) is refused without ever blocking or reading
    forever, and nothing can be swapped in between the check and the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise InputError(f"cannot open model file {path}: {exc.strerror}.") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path} is not a regular file (a FIFO, device or socket, or a link to one); "
                             "pass the model file itself.")
        if st.st_size > max_bytes:
            raise LimitError(f"{path} is {st.st_size / GIB:.2f} GiB, over the {max_bytes / GIB:g} GiB limit; "
                             "raise it with --max-file-gib if you expect a model this large.")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while we read it
        raise LimitError(f"{path} is over the {max_bytes / GIB:g} GiB limit; raise it with --max-file-gib.")
    return data


def is_zip(data: bytes) -> bool:
    return data[:4] == ZIP_MAGIC


def zip_infos(data: bytes, source: str) -> list[zipfile.ZipInfo] | None:
    """The entries of a zip archive held in `data`, or None when it is no readable zip."""
    if not is_zip(data):
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return z.infolist()
    except Exception:  # noqa: BLE001 - a damaged zip raises BadZipFile, ValueError, NotImplementedError...
        return None  # torch then reports the file as unreadable


def check_zip_limits(infos: list[zipfile.ZipInfo], source: str, max_unpacked: int) -> None:
    """Refuse an archive whose entries unpack to more than `max_unpacked` bytes in total (a zip bomb)."""
    total = sum(i.file_size for i in infos)
    if total > max_unpacked:
        raise LimitError(f"{source} unpacks to {total / GIB:.2f} GiB, over the {max_unpacked / GIB:g} GiB limit "
                         "(a zip bomb?); raise it with --max-unpacked-gib if you trust the file.")


def _refuse(source: str, entry: str, why: str) -> UnsafeModelFileError:
    return UnsafeModelFileError(
        f"{source}: entry {entry} {why}, which can run code when loaded; refused. Re-export the model with "
        f"torch.export.save from plain tensors, or pass {TRUST_FLAG} if you trust whoever made this file."
    )


_DTYPE_BYTES = {  # torch._export.serde.schema.ScalarType -> bytes per element (unknown codes: 8, the widest)
    1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 9: 4, 10: 8, 11: 16, 12: 1, 13: 2,
}


def _tensor_bytes(meta: Any, where: str, source: str) -> int:
    """Bytes a serialized tensor_meta asks for: torch allocates them even for an empty record."""
    try:
        sizes = [int(s["as_int"]) for s in meta["sizes"]]
        nbytes = _DTYPE_BYTES.get(int(meta["dtype"]), 8)
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{source}: {where} has a tensor_meta without integer sizes and dtype; "
                         "re-export the model with torch.export.save.") from None
    if any(s < 0 for s in sizes):
        raise InputError(f"{source}: {where} declares a negative tensor size.")
    return math.prod(sizes) * nbytes


def inspect_pt2(data: bytes, infos: list[zipfile.ZipInfo], source: str, max_unpacked: int) -> None:
    """Refuse a `torch.export` archive unless every entry is plain data; raise, never return False.

    `torch.export.load` unpickles with weights_only=False: weights and constants marked
    `use_pickle`, legacy `data/weights/<model>.pt` / `data/constants/<model>.pt`, `opaque_obj_*`
    and `custom_obj_*` constants, and the sample inputs when the safe unpickler fails on them; and
    it loads AOTInductor shared libraries. So: an allowlist of entry names, every payload config
    read, tensor sizes (which torch allocates even for empty records) added to the unpacked total,
    and the sample inputs loaded here with `weights_only=True`.
    """
    names = [i.filename for i in infos]
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise InputError(f"{source} is not a torch.export archive (entries outside one top folder).")
    root = roots.pop() + "/"
    rel = {n[len(root):]: n for n in names if not n.endswith("/")}
    z = zipfile.ZipFile(io.BytesIO(data))
    fixed = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id", "version"}
    models = sorted(m[len("models/"):-len(".json")] for m in rel if re.fullmatch(r"models/[\w.-]+\.json", m))
    if not models:
        raise InputError(f"{source} is not a torch.export archive (no models/*.json); re-export it with torch.export.save.")
    allowed: set[str] = set(fixed)
    total = sum(i.file_size for i in infos)
    for m in models:
        allowed |= {f"models/{m}.json", f"data/sample_inputs/{m}.pt"}
        for kind, prefix in (("weights", "weight_"), ("constants", "tensor_")):
            legacy = f"data/{kind}/{m}.pt"
            if legacy in rel:
                raise _refuse(source, legacy, "is a legacy pickled state file")
            cfg_name = f"data/{kind}/{m}_{kind}_config.json"
            if cfg_name not in rel:
                raise InputError(f"{source} lacks {cfg_name}; re-export the model with torch.export.save.")
            allowed.add(cfg_name)
            try:
                config = json.loads(z.read(rel[cfg_name]))["config"]
                items = list(config.items())
            except (ValueError, KeyError, TypeError, AttributeError):
                raise InputError(f"{source}: {cfg_name} is not a payload config; re-export the model.") from None
            for fqn, meta in items:
                path_name = meta.get("path_name") if isinstance(meta, dict) else None
                entry = f"data/{kind}/{path_name}"
                if not isinstance(path_name, str) or not re.fullmatch(rf"{prefix}\d+", path_name):
                    why = "is an opaque or custom object" if isinstance(path_name, str) and "obj_" in path_name \
                        else f"is not a plain tensor file ({path_name!r})"
                    raise _refuse(source, entry, f"(for {fqn}) {why}")
                if meta.get("use_pickle") is not False:
                    raise _refuse(source, entry, f"(for {fqn}) is marked use_pickle")
                if entry not in rel:
                    raise InputError(f"{source} lacks {entry} named by {cfg_name}; was it truncated?")
                allowed.add(entry)
                total += _tensor_bytes(meta.get("tensor_meta"), entry, source)
    extra = sorted(n for n in rel if n not in allowed and not n.startswith("extra/"))
    if extra:
        raise _refuse(source, extra[0], "is not part of a plain torch.export archive (compiled code or pickles?)")
    if total > max_unpacked:
        raise LimitError(f"{source} asks for {total / GIB:.2f} GiB of tensors, over the {max_unpacked / GIB:g} GiB "
                         "limit; raise it with --max-unpacked-gib if you trust the file.")
    for m in models:
        entry = f"data/sample_inputs/{m}.pt"
        if entry not in rel:
            raise InputError(f"{source} lacks {entry}; re-export the model with torch.export.save.")
        check_plain_pickle(z.read(rel[entry]), f"{source}: entry {entry}", max_unpacked)


def check_plain_pickle(blob: bytes, where: str, max_unpacked: int) -> None:
    """Refuse a nested `torch.save` blob unless torch's weights-only unpickler reads it.

    torch.export falls back to a full unpickle when the safe one fails, so "the safe one
    succeeds here" is the condition; the unsafe globals are named from a static scan.
    """
    if blob[:1] == PICKLE_MAGIC:  # a bare pickle, not a torch.save archive
        raise UnsafeModelFileError(f"{where} is a raw pickle, which can run code when loaded; refused. "
                                   f"Pass {TRUST_FLAG} if you trust whoever made this file.")
    infos = zip_infos(blob, where)
    if infos is None:
        raise InputError(f"{where} is not a torch.save archive; re-export the model with torch.export.save.")
    check_zip_limits(infos, where, max_unpacked)
    try:
        torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - the weights-only unpickler runs no code; any failure means refuse
        names = unsafe_globals(blob)
        raise UnsafeModelFileError(
            f"{where} " + (f"pickles {', '.join(names[:3])}" if names else "is not plain tensor data")
            + f", which can run code when loaded; refused. Pass {TRUST_FLAG} if you trust whoever made this file."
        ) from None


def unsafe_globals(blob: bytes) -> list[str]:
    """Globals a `torch.save` blob imports that torch's weights-only unpickler does not allow."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(blob)))
    except Exception:  # noqa: BLE001 - a static scan of a damaged file: no names, the caller says so
        return []


def is_torchscript(infos: list[zipfile.ZipInfo]) -> bool:
    names = [i.filename for i in infos]
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def is_pt2(infos: list[zipfile.ZipInfo]) -> bool:
    return any(i.filename.endswith("/archive_format") or i.filename.endswith("/models/model.json") for i in infos)


# ------------------------------------------------------------------------------ the wrapper


class ForwardTimeoutError(LimitError):
    """A forward pass took longer than --timeout-per-batch."""


class GuardedModel(nn.Module):
    """The model an audit runs: `inner` called as is, with two guards.

    * `eval()` / `train()` only set this wrapper's flag: a `torch.export` program refuses them
      (its graph has fixed train/eval behaviour), TorchScript modules may not expect them, and
      every loader has already put its model in eval mode.
    * Each forward is timed; one that takes longer than `timeout` seconds raises
      `ForwardTimeoutError`, and so does every later call (so a check that catches exceptions
      cannot go on with a model already known to be too slow). A forward cannot be interrupted
      safely from inside its own thread, so the limit is checked after each forward returns:
      the slow batch finishes, nothing after it runs. On CUDA the time is that of launching
      the kernels (no synchronisation), so the limit is a guard against runaway models, not a
      profiler.

    Attributes the wrapper does not have (e.g. a Classifier's `temperature`) are read from `inner`.
    """

    def __init__(self, inner: nn.Module, timeout: float | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.timeout = timeout
        self.timed_out: str | None = None  # the message, once a forward was too slow

    def train(self, mode: bool = True) -> "GuardedModel":
        self.training = mode
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.timed_out:
            raise ForwardTimeoutError(self.timed_out)
        start = time.perf_counter()
        out = self.inner(*args, **kwargs)
        elapsed = time.perf_counter() - start
        if self.timeout is not None and elapsed > self.timeout:
            self.timed_out = (f"one forward pass of the model took {elapsed:.1f} s, over the --timeout-per-batch "
                              f"limit of {self.timeout:g} s; raise the limit or lower the batch size if the model is "
                              "simply slow.")
            raise ForwardTimeoutError(self.timed_out)
        return out

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "inner":
                raise
            return getattr(super().__getattr__("inner"), name)


def unwrap(model: nn.Module) -> nn.Module:
    return model.inner if isinstance(model, GuardedModel) else model

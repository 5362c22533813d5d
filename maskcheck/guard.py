"""Defences against untrusted inputs: model files, JSON files and output paths.

People who audit a model hold a stranger's file by the nature of the job. This module holds
what keeps such a file from running code or exhausting the machine (docs/loading-policy.md):

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

import ast
import io
import json
import math
import os
import re
import stat
import struct
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .errors import InputError, LimitError, UnsafeModelFileError
from .limits import (  # noqa: F401 - the defaults are re-exported for checkpoint.py
    DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_UNPACKED_BYTES, DEFLATE_RATIO_FLOOR, DEFLATE_RATIO_LIMIT, GIB,
)

TRUST_FLAG = "--trust-code"
PICKLE_MAGIC = b"\x80"  # pickle protocol 2+ starts with PROTO (0x80)
ZIP_MAGIC = b"PK\x03\x04"


# ------------------------------------------------------------------------------- model files


def read_model_bytes(path: Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES, what: str = "model file") -> bytes:
    """The content of `path`, refused unless it is a regular file of at most `max_bytes`.

    The file is opened non-blocking and checked on the open descriptor (fstat), so a FIFO or a
    device (or a symlink to one, e.g. `/dev/zero`) is refused without ever blocking or reading
    forever, and nothing can be swapped in between the check and the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise InputError(f"cannot open {what} {path}: {exc.strerror}.") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path} is not a regular file (a FIFO, device or socket, or a link to one); "
                             f"pass the {what} itself.")
        if st.st_size > max_bytes:
            raise LimitError(f"{path} is {st.st_size / GIB:.2f} GiB, over the {max_bytes / GIB:g} GiB limit; "
                             "raise it with --max-file-gib if you expect a model this large.")
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:  # e.g. /proc/self/mem: "regular", but no readable content
            raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}; pass a {what}.") from None
    if len(data) > max_bytes:  # grew while we read it
        raise LimitError(f"{path} is over the {max_bytes / GIB:g} GiB limit; raise it with --max-file-gib.")
    return data


def is_zip(data: bytes) -> bool:
    return data[:4] == ZIP_MAGIC


# ------------------------------------------------------------------------------ strict zip


_EOCD, _EOCD64, _LOC64 = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
_CENTRAL, _LOCAL = b"PK\x01\x02", b"PK\x03\x04"
_ALLOWED_FLAGS = 0x080E  # bits 1-2 (deflate level), 3 (data descriptor, torch sets it) and 11 (UTF-8); encryption etc. refused
_MAX_ENTRIES = 100_000  # ours: a torch.save of a WRN-34-10 has a few hundred entries


def _bad_zip(source: str, why: str) -> InputError:
    return InputError(f"{source} is a damaged or ambiguous zip archive ({why}); refused. Save it again with torch.")


def _zip64_extra(extra: bytes, fields: list[int], source: str) -> list[int]:
    """Replace the 0xFFFFFFFF values of `fields` (sizes, offset) by those of the zip64 extra field, in order."""
    pos, values = 0, None
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        if tag == 1:
            values = extra[pos + 4:pos + 4 + size]
        pos += 4 + size
    out, k = [], 0
    for v in fields:
        if v == 0xFFFFFFFF:
            if values is None or len(values) < 8 * (k + 1):
                raise _bad_zip(source, "a zip64 size without its extra field")
            v = struct.unpack_from("<Q", values, 8 * k)[0]
            k += 1
        out.append(v)
    return out


def _descriptor(data: bytes, pos: int, expected: tuple[int, int, int], name: str, source: str) -> int:
    """Length of the data descriptor at `pos`, refused unless it repeats the central directory's CRC and sizes."""
    sig = 4 if data[pos:pos + 4] == b"PK\x07\x08" else 0
    for fmt, size in (("<III", 12), ("<IQQ", 20)):
        if pos + sig + size <= len(data) and struct.unpack_from(fmt, data, pos + sig) == expected:
            return sig + size
    raise _bad_zip(source, f"entry {name[:60]!r}: its data descriptor and the central directory disagree")


def _entry_name(raw: bytes, source: str) -> str:
    """A name both readers agree on: UTF-8, no NUL or control character, no absolute or `..` part."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_zip(source, f"an entry name that is not UTF-8: {raw[:40]!r}") from None
    parts = name.rstrip("/").split("/")
    if (not name or any(ord(c) < 32 or c in "\\\x7f" for c in name) or name.startswith("/")
            or any(p in ("", ".", "..") for p in parts)):
        raise _bad_zip(source, f"an odd entry name {name[:60]!r}")
    return name


def _find_eocd(data: bytes, source: str) -> tuple[int, int, int, int]:
    """(entries, central directory size, offset, where it must end) from the end-of-central-directory records."""
    pos = data.rfind(_EOCD, max(0, len(data) - 22 - 0xFFFF))
    if pos < 0 or pos + 22 > len(data):
        raise _bad_zip(source, "no end-of-central-directory record")
    disk, cd_disk, n_disk, n, cd_size, cd_off, comment = struct.unpack_from("<HHHHIIH", data, pos + 4)
    if pos + 22 + comment != len(data):
        raise _bad_zip(source, "bytes after the end record")
    end = pos
    if 0xFFFF in (n, n_disk) or 0xFFFFFFFF in (cd_size, cd_off):
        loc = pos - 20
        if loc < 0 or data[loc:loc + 4] != _LOC64:
            raise _bad_zip(source, "a zip64 end record without its locator")
        (rec,) = struct.unpack_from("<Q", data, loc + 8)
        if data[rec:rec + 4] != _EOCD64 or rec + 56 > loc:
            raise _bad_zip(source, "a misplaced zip64 end record")
        disk, cd_disk, n_disk, n, cd_size, cd_off = struct.unpack_from("<IIQQQQ", data, rec + 16)
        end = rec
    if disk or cd_disk or n_disk != n:
        raise _bad_zip(source, "a multi-disk archive")
    if n > _MAX_ENTRIES or cd_off + cd_size > end:
        raise _bad_zip(source, "a central directory out of place")
    return n, cd_size, cd_off, end


def read_zip(data: bytes, source: str, max_unpacked: int) -> dict[str, bytes] | None:
    """Every entry of the zip archive in `data`, unpacked, or None when `data` is no zip archive.

    Python's zipfile and torch's reader (miniz) disagree on ambiguous archives: the last or the
    first of two entries with one name, a name cut at a NUL byte, local headers that contradict
    the central directory. So this one reader is the strictest of both: it refuses duplicate or
    odd names, encrypted entries, local headers that differ from the central directory, entries
    that overlap each other or the directory, sizes or CRCs that do not match the bytes; and it
    checks the declared sizes against `max_unpacked` before inflating anything (a deflate bomb
    is refused before it costs memory). What torch later reads is `rebuild_zip` of this result,
    so the bytes inspected are the bytes loaded.
    """
    if data[:4] != _LOCAL:
        return None
    n, cd_size, cd_off, cd_end = _find_eocd(data, source)
    entries: list[tuple[str, int, int, int, int, int]] = []  # name, method, crc, csize, usize, data start
    pos, seen, spans = cd_off, set(), []
    for _ in range(n):
        if data[pos:pos + 4] != _CENTRAL or pos + 46 > cd_off + cd_size:
            raise _bad_zip(source, "a broken central directory")
        (flags, method, _, _, crc, csize, usize, nlen, elen, clen, disk, _, _,
         off) = struct.unpack_from("<HHHHIIIHHHHHII", data, pos + 8)
        raw = data[pos + 46:pos + 46 + nlen]
        name = _entry_name(raw, source)
        extra = data[pos + 46 + nlen:pos + 46 + nlen + elen]
        usize, csize, off = _zip64_extra(extra, [usize, csize, off], source)  # the spec's order
        pos += 46 + nlen + elen + clen
        if name in seen:
            raise _bad_zip(source, f"two entries named {name[:60]!r}")
        seen.add(name)
        if flags & ~_ALLOWED_FLAGS or method not in (0, 8) or disk:
            raise _bad_zip(source, f"entry {name[:60]!r} is encrypted, streamed or compressed with method {method}")
        if method == 0 and csize != usize:
            raise _bad_zip(source, f"entry {name[:60]!r} is stored with two different sizes")
        if data[off:off + 4] != _LOCAL or off + 30 > cd_off:
            raise _bad_zip(source, f"entry {name[:60]!r} has no local header where the directory says")
        (_, lflags, lmethod, _, _, lcrc, lcsize, lusize, lnlen, lelen) = struct.unpack_from("<HHHHHIIIHH", data, off + 4)
        lextra = data[off + 30 + lnlen:off + 30 + lnlen + lelen]
        lusize, lcsize = _zip64_extra(lextra, [lusize, lcsize], source) if 0xFFFFFFFF in (lcsize, lusize) \
            else (lusize, lcsize)
        streamed = flags & 8 and (lcrc, lcsize, lusize) == (0, 0, 0)  # sizes in a descriptor after the data (torch)
        if (data[off + 30:off + 30 + lnlen] != raw or (lflags, lmethod) != (flags, method)
                or not streamed and (lcrc, lcsize, lusize) != (crc, csize, usize)):
            raise _bad_zip(source, f"entry {name[:60]!r}: local header and central directory disagree")
        start = off + 30 + lnlen + lelen
        end = start + csize + (_descriptor(data, start + csize, (crc, csize, usize), name, source) if flags & 8 else 0)
        if end > cd_off:
            raise _bad_zip(source, f"entry {name[:60]!r} runs past the end of the data")
        spans.append((off, end))
        entries.append((name, method, crc, csize, usize, start))
    if pos != cd_off + cd_size:
        raise _bad_zip(source, "a central directory of the wrong size")
    spans.sort()
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        raise _bad_zip(source, "overlapping entries")
    total = sum(e[4] for e in entries)
    if total > max_unpacked:
        raise LimitError(f"{source} unpacks to {total / GIB:.2f} GiB, over the {max_unpacked / GIB:g} GiB limit "
                         "(a zip bomb?); raise it with --max-unpacked-gib if you trust the file.")
    for name, method, _, csize, usize, _ in entries:
        if method == 8 and usize > DEFLATE_RATIO_FLOOR and usize > DEFLATE_RATIO_LIMIT * max(csize, 1):
            raise LimitError(f"{source}: entry {name[:60]!r} inflates {usize // max(csize, 1)}-fold to "
                             f"{usize / GIB:.2f} GiB (a deflate bomb?); refused. Store it uncompressed.")
    out: dict[str, bytes] = {}
    for name, method, crc, csize, usize, start in entries:
        blob = data[start:start + csize]
        if method == 8:
            inflater = zlib.decompressobj(-15)
            try:
                blob = inflater.decompress(blob, usize + 1)
            except zlib.error:
                raise _bad_zip(source, f"entry {name[:60]!r} does not inflate") from None
            if not inflater.eof or inflater.unconsumed_tail:
                raise _bad_zip(source, f"entry {name[:60]!r} inflates to more than its declared size")
        if len(blob) != usize or zlib.crc32(blob) != crc:
            raise _bad_zip(source, f"entry {name[:60]!r} does not match its declared size and CRC")
        out[name] = blob
    return out


def rebuild_zip(entries: dict[str, bytes]) -> bytes:
    """A plain stored archive of exactly `entries`: what torch is given after `read_zip` checked them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, blob in entries.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, blob)
    return buf.getvalue()


def _refuse(source: str, entry: str, why: str) -> UnsafeModelFileError:
    return UnsafeModelFileError(
        f"{source}: entry {entry} {why}, which can run code when loaded; refused. Re-export the model with "
        f"torch.export.save from plain tensors, or pass {TRUST_FLAG} if you trust whoever made this file."
    )


_DTYPE_BYTES = {  # torch._export.serde.schema.ScalarType -> bytes per element (unknown codes: 8, the widest)
    1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 9: 4, 10: 8, 11: 16, 12: 1, 13: 2,
}


def _ints(items: Any) -> list[int]:
    values = [s["as_int"] for s in items]
    if not all(type(v) is int for v in values):
        raise TypeError
    return values


def _tensor_bytes(meta: Any, where: str, source: str, stored: int) -> int:
    """Bytes torch allocates for one serialized weight: refused unless the view fits the stored bytes.

    torch views a stored record through `as_strided(sizes, strides, offset)` (so the view must
    lie inside the record: no negative stride, no reach past its end) and allocates
    `zeros(sizes)` for an empty record (so an empty record must declare no element).
    """
    try:
        sizes, strides = _ints(meta["sizes"]), _ints(meta["strides"])
        offset = meta["storage_offset"]["as_int"]
        nbytes = _DTYPE_BYTES.get(int(meta["dtype"]), 8)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InputError(f"{source}: {where} has a tensor_meta without integer sizes, strides and dtype; "
                         "re-export the model with torch.export.save.") from None
    if any(s < 0 for s in sizes) or any(s < 0 for s in strides) or len(strides) != len(sizes) or type(offset) is not int \
            or offset < 0:
        raise InputError(f"{source}: {where} declares a negative or inconsistent tensor size, stride or offset.")
    numel = math.prod(sizes)
    extent = 0 if numel == 0 else (offset + sum((s - 1) * t for s, t in zip(sizes, strides)) + 1) * nbytes
    if extent > stored:
        raise InputError(f"{source}: {where} declares a tensor of {extent} bytes over a record of {stored} bytes; "
                         "refused (a forged size). Re-export the model with torch.export.save.")
    return numel * nbytes


# sympy.sympify evaluates its string as Python: torch hands it every `expr_str` of models/*.json.
_SYM_CALLS = {"Symbol", "Integer", "Mod", "PythonMod", "FloorDiv", "CleanDiv", "CeilDiv", "IntTrueDiv", "Max", "Min",
              "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "TruncToInt", "FloorToInt", "CeilToInt"}
_SYM_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Name, ast.Constant, ast.Call,
              ast.keyword, ast.Load, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub,
              ast.UAdd, ast.Not, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.And, ast.Or)
_SYMBOL_NAME = re.compile(r"[a-z]{1,6}\d{1,9}")  # torch's s0, u3, zuf0, ...
MAX_EXPR_CHARS = 2000  # ours: torch's longest for a reshape of a dynamic batch is under 200


def plain_sym_expr(text: Any) -> bool:
    """True when `text` is plain arithmetic of symbols and small integers, so sympify runs nothing else.

    Parsed with Python's own grammar (what sympify finally evaluates): only operators,
    comparisons, symbol names like `s0`, integers of at most 12 digits, calls of sympy's
    arithmetic functions that torch writes (`Mod`, `FloorDiv`, `Max`...) and `Symbol('s0',
    positive=True, integer=True)`; a power only with a small constant exponent (no `2**2**99`).
    """
    if not isinstance(text, str) or len(text) > MAX_EXPR_CHARS or "__" in text:
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    for node in ast.walk(tree):
        if not isinstance(node, _SYM_NODES):
            return False
        if isinstance(node, ast.Name) and not (_SYMBOL_NAME.fullmatch(node.id) or node.id in _SYM_CALLS
                                               or node.id in ("oo", "int_oo", "True", "False")):
            return False
        if isinstance(node, ast.Constant) and not (type(node.value) in (int, bool) and abs(node.value) < 10**12
                                                   or isinstance(node.value, str) and _SYMBOL_NAME.fullmatch(node.value)):
            return False
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _SYM_CALLS):
            return False
        if isinstance(node, ast.keyword) and node.arg not in ("positive", "integer", "nonnegative", "real"):
            return False
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and not (
                isinstance(node.right, ast.Constant) and type(node.right.value) is int and 0 <= node.right.value <= 8):
            return False
    return True


# Graph nodes call their target: only ATen operators and Python's arithmetic on sizes (never an
# arbitrary torch.* or operator.* function, which could e.g. load a file given as a string argument).
_TARGET = re.compile(r"torch\.ops\.aten\.[A-Za-z]\w*\.\w+|_operator\.(getitem|add|sub|mul|floordiv|truediv|mod|neg|pow|"
                     r"eq|ne|lt|le|gt|ge|and_|or_|not_)|torch\.sym_(int|float|max|min|not|sqrt|ite|sum)|math\.\w+")
_BANNED_ATEN = ("torch.ops.aten.from_file.",)


def _walk_json(obj: Any, visit: Callable[[str, Any], None], depth: int = 0) -> None:
    if depth > 200:
        raise RecursionError
    if isinstance(obj, dict):
        for k, v in obj.items():
            visit(k, v)
            _walk_json(v, visit, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _walk_json(v, visit, depth + 1)


def check_model_json(blob: bytes, entry: str, source: str) -> None:
    """Refuse a models/*.json whose graph could run code: sympy strings beyond arithmetic, foreign call targets."""
    try:
        graph = json.loads(blob.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InputError(f"{source}: {entry} is not valid JSON; re-export the model with torch.export.save.") from None

    def visit(key: str, value: Any) -> None:
        if key == "expr_str" and not plain_sym_expr(value):
            raise _refuse(source, entry, f"holds the symbolic expression {str(value)[:60]!r}, not plain arithmetic "
                                         "(torch evaluates it with sympy.sympify)")
        if key in ("target", "as_operator") and isinstance(value, str) and (
                not _TARGET.fullmatch(value) or value.startswith(_BANNED_ATEN)):
            raise _refuse(source, entry, f"calls {value[:60]!r}, not an ATen operator")

    try:
        _walk_json(graph, visit)
    except RecursionError:
        raise InputError(f"{source}: {entry} nests too deeply to be a torch.export graph.") from None


def inspect_pt2(entries: dict[str, bytes], source: str, max_unpacked: int) -> None:
    """Refuse a `torch.export` archive unless every entry is plain data; raise, never return False.

    `entries` come from `read_zip` (one strict reader; torch is given `rebuild_zip(entries)`).
    `torch.export.load` unpickles with weights_only=False: weights and constants marked
    `use_pickle`, legacy `data/weights/<model>.pt` / `data/constants/<model>.pt`, `opaque_obj_*`
    and `custom_obj_*` constants, and the sample inputs when the safe unpickler fails on them; it
    loads AOTInductor shared libraries; it hands every `expr_str` of `models/*.json` to
    `sympy.sympify` (which evaluates Python) and calls each node's target by name. So: an
    allowlist of entry names, every payload config read, tensor views checked against their
    records, every graph JSON checked (`check_model_json`), and the sample inputs loaded here
    with `weights_only=True`.
    """
    names = list(entries)
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise InputError(f"{source} is not a torch.export archive (entries outside one top folder).")
    root = roots.pop() + "/"
    rel = {n[len(root):]: n for n in names if not n.endswith("/")}
    fixed = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id", "version"}
    models = sorted(m[len("models/"):-len(".json")] for m in rel if re.fullmatch(r"models/[\w.-]+\.json", m))
    if not models:
        raise InputError(f"{source} is not a torch.export archive (no models/*.json); re-export it with torch.export.save.")
    allowed: set[str] = set(fixed)
    total = sum(len(b) for b in entries.values())
    for m in models:
        allowed |= {f"models/{m}.json", f"data/sample_inputs/{m}.pt"}
        check_model_json(entries[rel[f"models/{m}.json"]], f"models/{m}.json", source)
        for kind, prefix in (("weights", "weight_"), ("constants", "tensor_")):
            legacy = f"data/{kind}/{m}.pt"
            if legacy in rel:
                raise _refuse(source, legacy, "is a legacy pickled state file")
            cfg_name = f"data/{kind}/{m}_{kind}_config.json"
            if cfg_name not in rel:
                raise InputError(f"{source} lacks {cfg_name}; re-export the model with torch.export.save.")
            allowed.add(cfg_name)
            try:
                config = json.loads(entries[rel[cfg_name]])["config"]
                items = list(config.items())
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
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
                total += _tensor_bytes(meta.get("tensor_meta"), entry, source, len(entries[rel[entry]]))
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
        check_plain_pickle(entries[rel[entry]], f"{source}: entry {entry}", max_unpacked)


def check_plain_pickle(blob: bytes, where: str, max_unpacked: int) -> None:
    """Refuse a nested `torch.save` blob unless torch's weights-only unpickler reads it.

    torch.export falls back to a full unpickle when the safe one fails, so "the safe one
    succeeds here" is the condition; the unsafe globals are named from a static scan. The blob
    goes through the strict zip reader too (torch reads it again, by its own reader).
    """
    if blob[:1] == PICKLE_MAGIC:  # a bare pickle, not a torch.save archive
        raise UnsafeModelFileError(f"{where} is a raw pickle, which can run code when loaded; refused. "
                                   f"Pass {TRUST_FLAG} if you trust whoever made this file.")
    if read_zip(blob, where, max_unpacked) is None:
        raise InputError(f"{where} is not a torch.save archive; re-export the model with torch.export.save.")
    try:
        obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - the weights-only unpickler runs no code; any failure means refuse
        names = unsafe_globals(blob)
        raise UnsafeModelFileError(
            f"{where} " + (f"pickles {', '.join(names[:3])}" if names else "is not plain tensor data")
            + f", which can run code when loaded; refused. Pass {TRUST_FLAG} if you trust whoever made this file."
        ) from None
    check_tensors(obj, where, max_unpacked)


def check_tensors(obj: Any, where: str, max_elements_bytes: int) -> None:
    """Refuse tensors that are not plain dense CPU data, or whose views reach past their storage.

    torch.load rebuilds each tensor as a view `(storage, offset, sizes, strides)` taken from the
    file: a zero stride makes a 1-element storage look like billions of elements (and any later
    copy allocates them all); sparse, meta or quantized tensors are no data to audit.
    """
    total = 0
    stack, seen = [obj], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > 1_000_000:
            raise InputError(f"{where} holds over a million objects; that is no model or data file.")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, torch.Tensor):
            if item.layout != torch.strided or item.is_meta or item.is_quantized or item.device.type != "cpu":
                raise InputError(f"{where} holds a {item.layout} / {item.device.type} tensor; only dense CPU tensors "
                                 "are accepted. Save plain tensors (tensor.to_dense().cpu()).")
            size, stride = item.shape, item.stride()
            if item.numel() and (any(s < 0 for s in stride) or any(st == 0 and sz > 1 for sz, st in zip(size, stride))):
                raise InputError(f"{where} holds a tensor with zero or negative strides (elements that share memory); "
                                 "save tensor.contiguous() instead.")
            extent = 0 if item.numel() == 0 else (item.storage_offset() + sum((a - 1) * b for a, b in zip(size, stride)) + 1)
            if extent * item.element_size() > item.untyped_storage().nbytes():
                raise InputError(f"{where} holds a tensor view larger than its storage; refused.")
            total += item.numel() * item.element_size()
    if total > max_elements_bytes:
        raise LimitError(f"{where} holds {total / GIB:.2f} GiB of tensors, over the {max_elements_bytes / GIB:g} GiB "
                         "limit; raise it with --max-unpacked-gib if you trust the file.")


def unsafe_globals(blob: bytes) -> list[str]:
    """Globals a `torch.save` blob imports that torch's weights-only unpickler does not allow."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(blob)))
    except Exception:  # noqa: BLE001 - a static scan of a damaged file: no names, the caller says so
        return []


def is_torchscript(entries: dict[str, bytes]) -> bool:
    return any("/code/" in n for n in entries) and any(n.endswith("constants.pkl") for n in entries)


def is_pt2(entries: dict[str, bytes]) -> bool:
    return any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in entries)


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

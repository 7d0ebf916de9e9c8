"""Pickles stay closed: a static walk of a pickle's opcodes says which globals it would import.

`zoo add`/`zoo scan` meet PyTorch checkpoints (`torch.save`: a zip holding ``data.pkl``, or the
legacy stream of pickles) and plain pickles. Unpickling one runs whatever its opcodes name, so
zoo never does; instead `inspect` walks the opcodes with the standard library's `pickletools`
on a small abstract stack (strings are tracked, everything else is opaque), as pickle scanners
(picklescan, fickling) do, and lists every global a `GLOBAL`, `INST` or `STACK_GLOBAL` would
import. A global is judged against an allow-list of the names that rebuild tensors, arrays and
containers (what ``torch.load(weights_only=True)`` accepts), never a deny-list: a name nobody
thought of (``posix.system`` spelled through a memo, a model class in ``__main__``) is outside.
The file is refused either way; the allow-list decides what the refusal says.
"""
from __future__ import annotations

import io
import os
import pickletools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable

from zoo.errors import UnsafePickleError

# Suffixes of files that are pickles or torch.save checkpoints in the wild (HF's pytorch_model.bin).
SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib")
# At most this many bytes of a pickle are read (a pickled array carries its data inline, and an
# opcode's argument is read whole); what lies beyond is reported as not read. A checkpoint's
# data.pkl is a few MB even for large models: its tensors are stored beside it.
MAX_WALK_BYTES = 64 << 20
# A legacy torch.save file is several pickles in a row: magic number, protocol, system info, the
# object, the storage keys; raw tensor bytes follow.
_LEGACY_PICKLES = 5
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# module -> names whose import rebuilds data, not code: tensors, storages, arrays, containers.
ALLOWED: dict[str, frozenset[str]] = {
    "collections": frozenset({"OrderedDict", "defaultdict", "Counter"}),
    "builtins": frozenset({"set", "frozenset", "bytearray", "slice", "complex", "range", "int",
                           "float", "bool", "str", "bytes", "tuple", "list", "dict"}),
    "__builtin__": frozenset({"set", "frozenset", "bytearray", "slice", "complex"}),
    "copy_reg": frozenset({"_reconstructor"}),
    "copyreg": frozenset({"_reconstructor"}),
    "_codecs": frozenset({"encode"}),  # how protocol 2 spells bytes
    "torch._utils": frozenset({
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
        "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
        "_rebuild_nested_tensor", "_rebuild_meta_tensor_no_storage", "_rebuild_device_tensor_from_numpy",
        "_rebuild_wrapper_subclass"}),
    "torch._tensor": frozenset({"_rebuild_from_type_v2"}),
    "torch.serialization": frozenset({"_get_layout"}),
    "torch.nn.parameter": frozenset({"Parameter"}),
    "torch": frozenset({
        "Size", "device", "dtype", "layout", "memory_format", "Tensor", "UntypedStorage",
        "TypedStorage", "float32", "float64", "float16", "bfloat16", "int8", "int16", "int32",
        "int64", "uint8", "bool", "complex64", "complex128", "strided", "sparse_coo",
        "contiguous_format", "channels_last", "preserve_format",
        *(f"{kind}Storage" for kind in ("Float", "Double", "Half", "BFloat16", "Long", "Int",
                                        "Short", "Char", "Byte", "Bool", "ComplexFloat",
                                        "ComplexDouble", "QInt8", "QUInt8", "QInt32",
                                        "QUInt4x2", "QUInt2x4"))}),
    "numpy": frozenset({"ndarray", "dtype"}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy.dtypes": frozenset({f"{kind}DType" for kind in (
        "Float16", "Float32", "Float64", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16",
        "UInt32", "UInt64", "Bool", "Complex64", "Complex128")}),
}

# What to do instead, said by every refusal.
EXPORT_HINT = ("export it where its Python code lives, with torch.jit.save(torch.jit.script(model), "
               "'model.pt') or torch.onnx.export(model, example_input, 'model.onnx'), then "
               "`zoo add` that file")


@dataclass(frozen=True, order=True)
class PickleGlobal:
    """One `module.name` a pickle would import; `allowed` when it only rebuilds data."""

    module: str
    name: str

    @property
    def allowed(self) -> bool:
        return self.name in ALLOWED.get(self.module, ())

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass
class PickleReport:
    """What the opcodes of a pickle file would do, read without running them."""

    path: Path
    kind: str  # "torch.save zip", "legacy torch.save", "pickle"
    globals: list[PickleGlobal] = field(default_factory=list)  # in order of first appearance
    pickles: list[str] = field(default_factory=list)  # the pickles walked (zip members or positions)
    complete: bool = True  # every walk reached its STOP within MAX_WALK_BYTES

    @property
    def outside(self) -> list[PickleGlobal]:
        """The globals not on the allow-list: importing them runs code."""
        return [g for g in self.globals if not g.allowed]

    @property
    def weights_only(self) -> bool:
        """True when every global only rebuilds tensors, arrays or containers (a state_dict)."""
        return self.complete and not self.outside

    def to_dict(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "pickles": self.pickles,
                "complete": self.complete,
                "globals": [{"module": g.module, "name": g.name, "allowed": g.allowed}
                            for g in self.globals]}

    def message(self) -> str:
        """The one-line refusal: what the file is, what it would import, how to export it."""
        what = {"torch.save zip": "a pickled PyTorch checkpoint (torch.save)",
                "legacy torch.save": "a pickled PyTorch checkpoint (legacy torch.save format)",
                "pickle": "a Python pickle"}[self.kind]
        head = f"{self.path}: is {what}; zoo never unpickles files, because unpickling runs the code its opcodes name."
        outside, allowed = self.outside, [g for g in self.globals if g.allowed]
        read = "" if self.complete else f" in the first {MAX_WALK_BYTES >> 20} MB that were read"
        if outside:
            shown = ", ".join(map(str, outside[:8])) + (f" and {len(outside) - 8} more" if len(outside) > 8 else "")
            body = (f" Its opcodes would import {len(outside)} global(s) outside zoo's allow-list of "
                    f"tensor and container builders{read}: {shown}"
                    + (f" (besides {len(allowed)} allowed)" if allowed else "") + ". To use the model,")
        elif not self.complete:
            body = (f" Its opcodes import nothing outside zoo's allow-list{read}; the rest was not read "
                    "and may import anything. To use the model,")
        elif self.globals:
            body = (" It holds only tensors and containers (every global it imports is on zoo's "
                    f"allow-list: {', '.join(map(str, allowed[:4]))}{', ...' if len(allowed) > 4 else ''}): "
                    "a state_dict, weights without the architecture, which is Python code. Load it into "
                    "its model class (model.load_state_dict(torch.load(path, weights_only=True))) and")
        else:
            body = " It imports no globals: plain data, not a model. To use a model,"
        return f"{head}{body} {EXPORT_HINT}"


class _Opaque:
    """A value on the abstract stack that is not a string (a tuple, a tensor, a global...)."""

    __slots__ = ()


_OPAQUE = _Opaque()
_MARK = object()


def walk(stream: BinaryIO, limit: int | None = None) -> tuple[list[PickleGlobal], bool]:
    """The globals one pickle (from the stream's position to its STOP) would import.

    Returns (globals in order of first appearance, whether the walk reached STOP). Strings are
    tracked through the stack and the memo, so a `STACK_GLOBAL` fed from `BINGET`s resolves;
    one whose operands are not strings known here is reported as ``?.?`` (outside the
    allow-list). Raises ValueError when the first opcode is not a pickle opcode.
    """
    found: dict[PickleGlobal, None] = {}
    stack: list[object] = []
    memo: dict[int, object] = {}
    start = stream.tell()
    ops = 0
    # A huge argument is cut short at the limit (default MAX_WALK_BYTES), never read whole.
    stream = _Bounded(stream, start + (MAX_WALK_BYTES if limit is None else limit))

    def pop() -> object:
        return stack.pop() if stack else _OPAQUE

    def pop_mark() -> None:
        while stack:
            if stack.pop() is _MARK:
                return

    try:
        for opcode, arg, position in pickletools.genops(stream):
            ops += 1
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.setdefault(PickleGlobal(module, attr), None)
                if name == "INST":
                    pop_mark()
                stack.append(_OPAQUE)
            elif name == "STACK_GLOBAL":
                attr, module = pop(), pop()
                known = isinstance(module, str) and isinstance(attr, str)
                found.setdefault(PickleGlobal(module if known else "?", attr if known else "?"), None)
                stack.append(_OPAQUE)
            elif name in ("EXT1", "EXT2", "EXT4"):
                # The copyreg extension registry: a global by number, resolved only at load time.
                found.setdefault(PickleGlobal("copyreg.extension", str(arg)), None)
                stack.append(_OPAQUE)
            elif name == "MARK":
                stack.append(_MARK)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = stack[-1] if stack else _OPAQUE
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else _OPAQUE
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(int(arg), _OPAQUE))
            elif name == "DUP":
                stack.append(stack[-1] if stack else _OPAQUE)
            elif name == "STOP":
                return list(found), True
            else:
                _apply(opcode, arg, stack, pop, pop_mark)
    except (ValueError, EOFError, UnicodeDecodeError) as exc:
        if ops == 0:
            raise ValueError(f"not a pickle ({exc})") from None
        return list(found), False
    return list(found), False


class _Bounded:
    """A read-only view of a binary stream that ends at absolute offset `end`."""

    def __init__(self, stream: BinaryIO, end: int):
        self._stream, self._end = stream, end

    def read(self, size: int = -1) -> bytes:
        left = max(0, self._end - self._stream.tell())
        return self._stream.read(left if size is None or size < 0 else min(size, left))

    def readline(self, size: int = -1) -> bytes:
        left = max(0, self._end - self._stream.tell())
        return self._stream.readline(left if size is None or size < 0 else min(size, left))

    def tell(self) -> int:
        return self._stream.tell()


def _apply(opcode: pickletools.OpcodeInfo, arg: object, stack: list, pop, pop_mark) -> None:
    """Any other opcode: pop what it takes, push opaque results (strings stay known)."""
    before = list(opcode.stack_before)
    if before and before[-1] is pickletools.stackslice:
        pop_mark()  # the slice and its mark
        before = before[:-2]
    for _ in before:
        pop()
    for kind in opcode.stack_after:
        # The unpickler decodes protocol 0-2 strings to str too, so STACK_GLOBAL takes either.
        if kind in (pickletools.pyunicode, pickletools.pybytes_or_str) and isinstance(arg, str):
            stack.append(arg)
        elif kind is pickletools.markobject:
            stack.append(_MARK)
        else:
            stack.append(_OPAQUE)


def _unique(items: Iterable[PickleGlobal]) -> list[PickleGlobal]:
    return list(dict.fromkeys(items))


def _walk_zip(path: Path, archive: zipfile.ZipFile, names: list[str]) -> PickleReport:
    report = PickleReport(path, "torch.save zip")
    for name in names:
        with archive.open(name) as member:
            # Read through a bounded buffer: a zip member's declared size may lie.
            data = member.read(MAX_WALK_BYTES + 1)
        found, complete = walk(io.BytesIO(data[:MAX_WALK_BYTES]))
        report.globals = _unique([*report.globals, *found])
        report.pickles.append(name)
        report.complete &= complete and len(data) <= MAX_WALK_BYTES
    return report


def _walk_stream(path: Path, kind: str, count: int) -> PickleReport:
    report = PickleReport(path, kind)
    with open(path, "rb") as f:
        for index in range(count):
            if not f.read(1):
                break
            f.seek(-1, os.SEEK_CUR)
            offset = f.tell()
            try:
                found, complete = walk(f)
            except ValueError:
                if index == 0:
                    raise
                break  # raw tensor bytes after the last pickle of a legacy checkpoint
            report.globals = _unique([*report.globals, *found])
            report.pickles.append(f"pickle at byte {offset}")
            report.complete &= complete
            if not complete:
                break
    return report


def _is_legacy_torch(path: Path) -> bool:
    """A legacy torch.save file starts with a pickled magic number (a LONG1 of 10 bytes)."""
    with open(path, "rb") as f:
        head = f.read(16)
    return (head[:4] == b"\x80\x02\x8a\x0a"
            and int.from_bytes(head[4:14], "little") == _LEGACY_MAGIC)


def pickle_members(names: Iterable[str]) -> list[str]:
    """The pickles of a torch.save zip (``<prefix>/data.pkl``), none for TorchScript archives.

    TorchScript also holds ``data.pkl``, next to ``code/`` and ``constants.pkl``; torch.jit.load
    reads it with its own restricted unpickler, so it is no checkpoint.
    """
    names = list(names)
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        return []
    return [n for n in names if n.endswith(".pkl")]


def inspect(path: str | os.PathLike) -> PickleReport | None:
    """What the pickle file at `path` would import, or None when it is not a pickle or checkpoint.

    >>> inspect("resnet.pth").outside          # doctest: +SKIP
    [PickleGlobal(module='__main__', name='ResNet')]
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                members = pickle_members(archive.namelist())
                return _walk_zip(path, archive, members) if members else None
        except zipfile.BadZipFile:
            return None
    if _is_legacy_torch(path):
        return _walk_stream(path, "legacy torch.save", _LEGACY_PICKLES)
    if not head:
        return None
    protocol = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    if not protocol and path.suffix.lower() not in SUFFIXES:
        return None  # protocol 0/1 pickles have no magic: only files named like one are tried
    try:
        report = _walk_stream(path, "pickle", 1)
    except ValueError:
        return None
    # Without the PROTO opcode up front, only a walk that reaches STOP proves a pickle (random
    # bytes often start with a valid opcode or two).
    return report if protocol or report.complete else None


def refuse(report: PickleReport) -> UnsafePickleError:
    """The error `zoo add`/`zoo scan` raise for a pickle, carrying the report."""
    return UnsafePickleError(report.message(), report=report)


__all__ = ["ALLOWED", "PickleGlobal", "PickleReport", "inspect", "pickle_members", "refuse", "walk"]

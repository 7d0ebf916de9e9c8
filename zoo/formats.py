"""Detect a model file's framework and format from its content (not only its extension).

Everything here reads a few bytes, walks protobuf wire structure or lists a zip: nothing imports
tensorflow, torch or onnx, and nothing is ever unpickled.
"""
from __future__ import annotations

import os
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

from zoo.errors import ModelFormatError, UnsafePickleError
from zoo.hashes import file_sha256, tree_sha256  # noqa: F401  re-exported: their home is zoo.hashes

# framework -> the formats zoo knows for it (Model.format values).
FORMATS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx",),
    "tensorflow": ("saved_model", "frozen_graph"),
    "keras": ("keras", "h5", "h5_weights"),
    "tflite": ("tflite",),
    "caffe": ("caffe",),
    "pytorch": ("torchscript",),
}
EXPECTED = ("ONNX (.onnx), a TF SavedModel folder, Keras .keras or .h5, a frozen GraphDef .pb, "
            "TFLite .tflite, a Caffe .prototxt + .caffemodel pair, or TorchScript .pt")
# Extensions that announce a model: a file with one of these that cannot be read is reported by
# `zoo scan` instead of being passed over silently.
MODEL_SUFFIXES = (".onnx", ".pb", ".pbtxt", ".keras", ".h5", ".hdf5", ".tflite", ".prototxt",
                  ".caffemodel", ".pt", ".pth", ".ptl", ".torchscript")

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_START = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
# Protobuf top-level field numbers of each message we may meet.
_ONNX_FIELDS = {1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25}
_GRAPHDEF_FIELDS = {1, 2, 3, 4}
_SAVED_MODEL_FIELDS = {1, 2}
_CAFFE_FIELDS = {1, 2, 3, 4, 5, 6, 7, 8, 100}
_MAX_TOP_FIELDS = 200_000
_PROTOTXT_NET = re.compile(r"^\s*(layers?|input|input_shape|input_dim)\s*[:{]", re.M)
_PROTOTXT_SOLVER = re.compile(r"^\s*(base_lr|lr_policy|train_net|net)\s*:", re.M)


@dataclass
class FormatInfo:
    """What a model on disk is: its framework, format and files by role (model/graph/weights)."""

    framework: str
    format: str
    files: dict[str, Path] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """The file (or folder) that names the model: the weights of a pair, else the model."""
        return self.files.get("model") or self.files.get("weights") or next(iter(self.files.values()))

    def to_dict(self) -> dict[str, Any]:
        return {"framework": self.framework, "format": self.format,
                "files": {role: str(p) for role, p in self.files.items()}, "meta": self.meta}


def _fail(path: Path, problem: str) -> ModelFormatError:
    return ModelFormatError(f"{path}: {problem}")


def special_file_kind(path: str | os.PathLike) -> str | None:
    """What a path that is neither a regular file nor a folder is ("a FIFO (named pipe)", ...).

    Only stat() is used: opening a FIFO blocks until a writer comes, and a device may never end.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((what for test, what in kinds if test(mode)), "not a regular file")


# ---- protobuf wire format ----------------------------------------------------------------------

def _varint(f: BinaryIO) -> int | None:
    """Read one varint; None at a clean end of file."""
    result = shift = 0
    while True:
        byte = f.read(1)
        if not byte:
            if shift == 0:
                return None
            raise ValueError("truncated varint")
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _top_fields(f: BinaryIO, size: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field number, wire type, payload offset, payload length or varint value) for each
    top-level field, seeking past payloads so a 500 MiB caffemodel costs a few hundred reads."""
    f.seek(0)
    count = 0
    while True:
        tag = _varint(f)
        if tag is None:
            return
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value = _varint(f)
            if value is None:
                raise ValueError("truncated varint")
            yield number, wire, f.tell(), value
        elif wire == 1 or wire == 5:
            width = 8 if wire == 1 else 4
            offset = f.tell()
            if offset + width > size:
                raise ValueError("truncated fixed-width field")
            f.seek(width, os.SEEK_CUR)
            yield number, wire, offset, width
        elif wire == 2:
            length = _varint(f)
            offset = f.tell()
            if length is None or offset + length > size:
                raise ValueError(f"field {number} runs past the end of the file")
            f.seek(length, os.SEEK_CUR)
            yield number, wire, offset, length
        else:  # groups (3, 4) are long deprecated; 6 and 7 do not exist
            raise ValueError(f"wire type {wire}")
        count += 1
        if count > _MAX_TOP_FIELDS:
            return


def _is_identifier(data: bytes) -> bool:
    return bool(re.fullmatch(rb"[A-Za-z_][A-Za-z0-9_./>-]*", data))


def _looks_like_nodedef(f: BinaryIO, offset: int, length: int) -> bool:
    """A NodeDef starts with name (field 1) and op (field 2), both short strings."""
    f.seek(offset)
    head = f.read(min(length, 4096))
    pos, strings = 0, []
    for expected in (1, 2):
        if pos >= len(head) or head[pos] != (expected << 3 | 2):
            return False
        n, pos = _read_len(head, pos + 1)
        if n is None or pos + n > len(head):
            return False
        strings.append(head[pos:pos + n])
        pos += n
    return bool(strings[0]) and _is_identifier(strings[1])


def _read_len(data: bytes, pos: int) -> tuple[int | None, int]:
    result = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    return None, pos


def _protobuf_kind(path: Path) -> tuple[str, str] | None:
    """(framework, format) of a binary protobuf model file, or None if it is not one we know."""
    size = path.stat().st_size
    counts: dict[int, int] = {}
    wires: dict[int, int] = {}
    first: dict[int, tuple[int, int]] = {}
    with open(path, "rb") as f:
        try:
            for number, wire, offset, length in _top_fields(f, size):
                counts[number] = counts.get(number, 0) + 1
                wires.setdefault(number, wire)
                first.setdefault(number, (offset, length))
        except ValueError:
            return None
        numbers = set(counts)
        if not numbers:
            return None
        if numbers <= _ONNX_FIELDS and wires.get(1) == 0 and wires.get(7) == 2:
            return "onnx", "onnx"
        if numbers <= _SAVED_MODEL_FIELDS and wires.get(1) == 0 and wires.get(2) == 2:
            return "tensorflow", "saved_model"
        # GraphDef: NodeDefs in field 1 (many); Caffe: the net's name in field 1 (once), layers in
        # 100 (or 2 for V1 nets), input dims in 4 as varints (GraphDef's 4 is a message).
        if (numbers <= _GRAPHDEF_FIELDS and wires.get(1) == 2 and wires.get(4, 2) == 2
                and counts.get(2, 0) <= 1 and _looks_like_nodedef(f, *first[1])):
            return "tensorflow", "frozen_graph"
        if numbers <= _CAFFE_FIELDS and (100 in numbers or counts.get(2, 0) > 1
                                         or (wires.get(1) == 2 and wires.get(4) == 0)):
            if all(wires[n] == 2 for n in numbers & {1, 2, 3, 7, 8, 100}):
                return "caffe", "caffe"
    return None


# ---- other containers --------------------------------------------------------------------------

def _zip_kind(path: Path) -> tuple[str, str]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise _fail(path, f"is a damaged zip archive ({exc}); expected a Keras .keras or "
                          "TorchScript .pt file") from None
    if "config.json" in names and any(n.endswith(".h5") or n == "metadata.json" for n in names):
        return "keras", "keras"
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        return "pytorch", "torchscript"
    _refuse_pickle(path)  # a torch.save checkpoint: data.pkl without TorchScript's code/
    raise _fail(path, f"is a zip archive but neither a Keras .keras (config.json) nor TorchScript "
                      f"(code/, constants.pkl); it holds {', '.join(names[:5]) or 'nothing'}")


def _refuse_pickle(path: Path) -> None:
    """Refuse a pickle or torch.save checkpoint, naming the globals its opcodes would import."""
    from zoo import pickles

    report = pickles.inspect(path)
    if report is not None:
        raise pickles.refuse(report)


def _hdf5_kind(path: Path) -> str:
    """'h5' for a whole Keras model, 'h5_weights' for weights only."""
    try:
        import h5py
    except ImportError:  # h5py comes with Keras; without it, look for the attribute's name
        with open(path, "rb") as f:
            return "h5" if b"model_config" in f.read(1 << 20) else "h5_weights"
    try:
        with h5py.File(path, "r") as h5:
            attrs = set(h5.attrs)
            groups = set(h5.keys())
    except OSError as exc:
        raise _fail(path, f"is a damaged HDF5 file ({exc}); expected a Keras .h5 model "
                          "or weights file") from None
    if "model_config" in attrs:
        return "h5"
    if attrs & {"layer_names", "keras_version", "backend"} or groups & {"layers", "vars",
                                                                       "model_weights"}:
        return "h5_weights"
    raise _fail(path, "is an HDF5 file but not a Keras model or weights file (no model_config "
                      "or layer_names attribute)")


def _prototxt_kind(path: Path, head: bytes) -> str | None:
    """'net' for a Caffe net definition, 'solver' for a solver, None for other text."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = re.sub(r"#[^\n]*", "", text)
    if _PROTOTXT_SOLVER.search(text) and not re.search(r"^\s*layers?\s*\{", text, re.M):
        return "solver"
    if _PROTOTXT_NET.search(text):
        return "net"
    return None


def _is_text(head: bytes) -> bool:
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut at the end is still text
        return exc.start >= len(head) - 3
    return True


# ---- Caffe pairs -------------------------------------------------------------------------------

def _caffe_partner(path: Path, suffix: str) -> Path | None:
    """The file that completes a Caffe pair: the same stem; else the one sharing the longest
    name prefix (ResNet-50-model.caffemodel -> ResNet-50-deploy.prototxt); else the only
    deploy*.prototxt among several nets; else the only candidate in the folder."""
    same = path.with_suffix(suffix)
    if same.is_file():
        return same
    candidates = sorted(p for p in path.parent.glob(f"*{suffix}") if p.is_file())
    if suffix == ".prototxt":
        candidates = [p for p in candidates if _prototxt_kind(p, _head(p, 65536)) == "net"]
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    shared = {p: len(os.path.commonprefix([p.stem.lower(), path.stem.lower()])) for p in candidates}
    longest = max(shared.values())
    if longest >= 4:
        candidates = [p for p in candidates if shared[p] == longest]
    deploy = [p for p in candidates if "deploy" in p.name.lower()]
    if len(candidates) > 1 and len(deploy) == 1:
        return deploy[0]
    return candidates[0] if len(candidates) == 1 else None


def _head(path: Path, n: int = 4096) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


# ---- detection ---------------------------------------------------------------------------------

def model_location(path: str | os.PathLike) -> Path:
    """What a model file stands for: a SavedModel's saved_model.pb(txt) is its folder (what TensorFlow
    loads, and what a conversion's freshness hashes, variables/ too); any other path itself."""
    path = Path(path)
    return path.parent if path.name in ("saved_model.pb", "saved_model.pbtxt") else path


def _saved_model_dir(path: Path) -> bool:
    return (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()


def detect_format(path: str | os.PathLike) -> FormatInfo:
    """The framework, format and files of the model at `path` (a file or a SavedModel folder).

    A Caffe ``.prototxt`` or ``.caffemodel`` is paired with its other half: the file of the same
    stem, else the only one of its kind in the folder (or the only ``deploy*.prototxt``).

    >>> detect_format("mobilenet.tflite")               # doctest: +SKIP
    FormatInfo(framework='tflite', format='tflite', files={'model': ...})
    """
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise ModelFormatError(f"{path} does not exist; give the path of a model file or folder")
    special = special_file_kind(path)
    if special is not None:
        raise _fail(path, f"is {special}, not a regular file; zoo never opens those (reading one "
                          "can block forever): give the model file itself")
    if path.is_dir():
        if _saved_model_dir(path):
            pb = path / "saved_model.pb"
            if pb.is_file() and _protobuf_kind(pb) != ("tensorflow", "saved_model"):
                raise _fail(pb, "is not a valid SavedModel protobuf (truncated or corrupt)")
            return FormatInfo("tensorflow", "saved_model", {"model": path})
        raise _fail(path, "is a folder without saved_model.pb, so not a TF SavedModel; give a "
                          f"model file ({EXPECTED}) or register every model in it with `zoo scan`")
    try:
        head = _head(path)
        size = path.stat().st_size
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror})") from None
    if size == 0:
        raise _fail(path, f"is empty; expected {EXPECTED}")

    if model_location(path) != path:
        if path.suffix == ".pb" and _protobuf_kind(path) != ("tensorflow", "saved_model"):
            raise _fail(path, "is not a valid SavedModel protobuf (truncated or corrupt)")
        return FormatInfo("tensorflow", "saved_model", {"model": path.parent})
    if head.startswith(HDF5_MAGIC):
        fmt = _hdf5_kind(path)
        return FormatInfo("keras", fmt, {"model" if fmt == "h5" else "weights": path})
    if head[4:8] == b"TFL3":
        from zoo.tflite_structure import validate_tflite

        validate_tflite(path)  # pure Python; a truncated file would crash the TFLite interpreter later
        return FormatInfo("tflite", "tflite", {"model": path})
    if head.startswith(ZIP_MAGIC):
        framework, fmt = _zip_kind(path)
        return FormatInfo(framework, fmt, {"model": path})
    if head.startswith(_PICKLE_START):
        _refuse_pickle(path)
    if _is_text(head):
        kind = _prototxt_kind(path, _head(path, 65536))
        if kind == "net":
            weights = _caffe_partner(path, ".caffemodel")
            if weights is None:
                raise _fail(path, "is a Caffe net definition but no .caffemodel is beside it; put "
                                  f"the weights next to it as {path.with_suffix('.caffemodel').name}")
            _check_caffemodel(weights)
            return FormatInfo("caffe", "caffe", {"graph": path, "weights": weights})
        if kind == "solver":
            raise _fail(path, "is a Caffe solver, not a net; give the deploy .prototxt")
    # Small protobufs can be valid UTF-8, so text that is no prototxt still gets this check.
    kind = _protobuf_kind(path)
    if kind == ("caffe", "caffe"):
        graph = _caffe_partner(path, ".prototxt")
        if graph is None:
            raise _fail(path, "is Caffe weights (a binary NetParameter) but no deploy .prototxt is "
                              f"beside it; put the net definition next to it as "
                              f"{path.with_suffix('.prototxt').name}")
        return FormatInfo("caffe", "caffe", {"graph": graph, "weights": path})
    if kind is not None:
        framework, fmt = kind
        if fmt == "saved_model":
            raise _fail(path, "is a SavedModel protobuf; it must be named saved_model.pb inside "
                              "its folder (with variables/ beside it): give the folder")
        return FormatInfo(framework, fmt, {"model": path})
    _refuse_pickle(path)  # protocol 0/1 pickles have no magic bytes
    if _is_text(head):
        raise _fail(path, f"is a text file that is no model zoo knows; expected {EXPECTED}")
    expected = _expected_for(path.suffix.lower())
    raise _fail(path, f"is not a readable {expected} (corrupt, truncated, or another kind of file)")


def detect_files(paths: Sequence[str | os.PathLike]) -> FormatInfo:
    """The model made of `paths`: one file or folder (see `detect_format`), or a Caffe net
    definition and its weights given together, in either order.

    >>> detect_files(["deploy.prototxt", "bvlc_alexnet.caffemodel"])   # doctest: +SKIP
    FormatInfo(framework='caffe', format='caffe', files={'graph': ..., 'weights': ...})
    """
    paths = [Path(p).expanduser().absolute() for p in paths]
    for path in paths:
        _check_storable(path)
    if len(paths) == 1:
        return detect_format(paths[0])
    if len(paths) != 2:
        raise ModelFormatError(
            f"give one model file or folder, or a Caffe .prototxt and its .caffemodel; got "
            f"{len(paths)} paths ({', '.join(p.name for p in paths) or 'none'})")
    roles: dict[str, Path] = {}
    for path in paths:
        role = _caffe_role(path)
        if role in roles:
            raise _fail(path, f"is a Caffe {'net definition' if role == 'graph' else 'weights file'} "
                              f"like {roles[role].name}; give one .prototxt and one .caffemodel")
        roles[role] = path
    return FormatInfo("caffe", "caffe", {"graph": roles["graph"], "weights": roles["weights"]})


def _caffe_role(path: Path) -> str:
    """'graph' for a Caffe net definition, 'weights' for a caffemodel; else a clear error."""
    if not path.exists():
        raise ModelFormatError(f"{path} does not exist; give the path of a model file")
    special = special_file_kind(path)
    if special is not None or path.is_dir():
        raise _fail(path, f"is {special or 'a folder'}, not a Caffe .prototxt or .caffemodel file")
    head = _head(path, 65536)
    if _is_text(head):
        kind = _prototxt_kind(path, head)
        if kind == "net":
            return "graph"
        if kind == "solver":
            raise _fail(path, "is a Caffe solver, not a net; give the deploy .prototxt")
    if _protobuf_kind(path) == ("caffe", "caffe"):
        return "weights"
    raise _fail(path, "is neither a Caffe net definition (.prototxt) nor Caffe weights "
                      "(.caffemodel); two paths are only for a Caffe pair")


def _expected_for(suffix: str) -> str:
    return {
        ".onnx": "ONNX model (protobuf ModelProto)",
        ".pb": "frozen GraphDef or ONNX protobuf",
        ".caffemodel": "Caffe weights file (binary NetParameter)",
        ".tflite": "TFLite flatbuffer (TFL3)",
        ".keras": "Keras .keras zip",
        ".h5": "Keras HDF5 file",
        ".pt": "TorchScript archive",
    }.get(suffix, f"model: {EXPECTED}")


def _check_caffemodel(path: Path) -> None:
    if _protobuf_kind(path) != ("caffe", "caffe"):
        raise _fail(path, "is not a readable Caffe weights file (binary NetParameter); it is "
                          "corrupt, truncated or something else")


def _check_storable(path: Path) -> None:
    """Refuse a path the catalog cannot store: a name whose bytes are not UTF-8 (the catalog keeps text)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        raise ModelFormatError(f"{path}: its name is not valid UTF-8, so the catalog cannot record it; rename "
                               f"it to a UTF-8 name (e.g. with mv) and add it again") from None


def find_models(folder: str | os.PathLike) -> tuple[list[FormatInfo], list[tuple[Path, str]]]:
    """Every model under `folder`, and the files that look like models but cannot be read.

    SavedModel folders count as one model; a Caffe pair counts once; hidden files, symbolic
    links (the file they point to is registered where it lives), partial downloads and files
    that are no model are passed over. FIFOs, sockets and devices are never opened (reading
    one can block forever): they are listed among the problems as skipped.
    """
    root = Path(folder).expanduser().absolute()
    if not root.is_dir():
        raise ModelFormatError(f"{root} is not a folder; give the folder to scan, or use `zoo add` "
                               "for one model file")
    found: list[FormatInfo] = []
    problems: list[tuple[Path, str]] = []
    claimed: set[Path] = set()
    for current, dirs, files in os.walk(root):
        here = Path(current)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if _saved_model_dir(here):
            dirs[:] = []  # variables/ and assets/ belong to it
            try:
                _check_storable(here)
                found.append(detect_format(here))
            except ModelFormatError as exc:
                problems.append((here, str(exc)))
            continue
        # caffemodels first, so the prototxts they claim are not reported as lonely nets
        names = sorted(f for f in files if not f.startswith(".") and not f.endswith((".part", ".lock")))
        names.sort(key=lambda n: not n.endswith(".caffemodel"))
        for name in names:
            path = here / name
            if path in claimed or path.is_symlink():
                continue
            special = special_file_kind(path)
            if special is not None:
                problems.append((path, f"{path}: is {special}, not a regular file; not opened"))
                continue
            try:
                info = detect_format(path)
                for file in info.files.values():
                    _check_storable(file)
            except UnsafePickleError as exc:  # a checkpoint by any name is worth saying why
                problems.append((path, str(exc)))
                continue
            except ModelFormatError as exc:
                if path.suffix.lower() in MODEL_SUFFIXES and not _quiet_miss(path) or "UTF-8" in str(exc):
                    problems.append((path, str(exc)))
                continue
            files = set(info.files.values())
            if files & claimed:
                continue
            claimed |= files
            found.append(info)
    return found, problems


def _quiet_miss(path: Path) -> bool:
    """Files with a model-ish suffix that are not models and not worth a warning."""
    if path.suffix == ".prototxt":
        return _prototxt_kind(path, _head(path, 65536)) != "net"
    return False


__all__ = ["FORMATS", "FormatInfo", "detect_files", "detect_format", "file_sha256", "find_models", "model_location",
           "special_file_kind", "tree_sha256"]

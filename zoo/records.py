"""Typed records the public API returns: Model, Artifact, InputSpec.

They are plain dataclasses, independent of the database, so converters, fetch and
the CLI can pass them around without a session. `to_dict`/`from_dict` give the JSON
form used by `--json`, the zoo index format and the built-in indexes.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from zoo.errors import InputError, ZooError

# A name is also a cache folder name (models/<name>/): no separators, no leading dot.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
NAME_RULE = "letters, digits and . _ + - (no spaces or slashes, at most 128 characters)"


def check_name(name: Any, error: type[ZooError] = InputError, example: str = "my_model") -> str:
    """`name` when it can name a model (and its cache folder), else `error` saying what is allowed."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise error(f"model name {name!r} is not usable; use {NAME_RULE}, starting with a letter or "
                    f"digit, e.g. {example}")
    return name

# File suffixes a user's model path ends in (catalog names may end so too: "resnet50.keras").
PATH_SUFFIXES = (".onnx", ".pt", ".pth", ".pb", ".pbtxt", ".keras", ".h5", ".hdf5", ".tflite", ".prototxt",
                 ".caffemodel", ".npy")


def looks_like_path(name: str) -> bool:
    """Whether `name` reads as a file path rather than a catalog name: a folder in it, a leading
    ``.``, ``~`` or ``/``, or a model file's suffix. Said in errors: such a name that names
    nothing was most likely a file the user mistyped, not a model to search for."""
    import os

    text = os.fspath(name)
    return ("/" in text or os.sep in text or text.startswith((".", "~"))
            or os.path.splitext(text)[1].lower() in PATH_SUFFIXES)


def missing_path(name: str) -> str | None:
    """The "no such file" part of an error for a path-like `name` that does not exist, else None."""
    import os

    if not looks_like_path(name) or os.path.exists(os.path.expanduser(name)):
        return None
    return f"{name} does not exist (no such file or folder)"


MAX_FILE_DEPTH = 8  # folders an artifact's filename may name (a SavedModel's is 1: variables/...)


def file_name_parts(filename: Any) -> list[str] | None:
    """The parts of an artifact's filename, None when it cannot name a file inside its model's folder.

    A filename is a file name, or a relative path with '/' for a file in a sub-folder (a SavedModel
    fetched file by file: ``variables/variables.index``): never absolute, no empty, '.' or '..'
    part, no backslash or NUL, at most `MAX_FILE_DEPTH` folders deep.
    """
    if not isinstance(filename, str) or not filename or "\\" in filename or "\0" in filename:
        return None
    parts = filename.split("/")
    if len(parts) > MAX_FILE_DEPTH + 1 or any(part in ("", ".", "..") for part in parts):
        return None
    return parts


FRAMEWORKS = ("caffe", "tensorflow", "keras", "tflite", "onnx", "pytorch")
# What an artifact is for. "model" is a single-file model (.onnx, .tflite, .pt, .keras, .pb);
# "graph" + "weights" are two-file models (Caffe prototxt + caffemodel, Keras arch + .h5);
# "onnx" is zoo's converted ONNX; "archive" is a tarball that holds the model files;
# "signature" an OpenSSF model signature (a Sigstore bundle) over the model's files.
ROLES = ("model", "graph", "weights", "labels", "mean", "onnx", "archive", "signature", "other")
# Files that are not part of what a model is made of: zoo's conversion and signatures over the rest.
DERIVED_ROLES = ("onnx", "signature")
LAYOUTS = ("NCHW", "NHWC", "NC", "other")


@dataclass
class InputSpec:
    """How to feed a model: shape (None for a dynamic dim), dtype, layout, preprocessing.

    Preprocessing is ``(x * scale - mean) / std`` per channel, after reordering
    channels to ``channel_order``; pixel values are on a 0-255 scale when
    ``pixel_range`` is ``[0, 255]``. Image files are first resized (``resize``: the shorter
    side, or an exact ``[H, W]``) and centre-cropped (``crop``: ``[H, W]``); see ``zoo.images``.
    """

    name: str | None = None
    shape: list[int | None] | None = None
    dtype: str = "float32"
    layout: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    scale: float | None = None
    channel_order: str | None = None  # "RGB" or "BGR"
    pixel_range: list[float] | None = None
    resize: int | list[int] | None = None  # shorter side in pixels, or [height, width]
    crop: list[int] | None = None  # centre crop [height, width], after resizing

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> InputSpec:
        if not data:
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Artifact:
    """One file of a model: where it comes from, what it should hash to, where it is."""

    role: str
    filename: str
    urls: list[str] = field(default_factory=list)
    size: int | None = None
    # The checksum the publisher gives, as "algo:hex" (sha256, sha1, md5, gitblob).
    checksum: str | None = None
    # "tar", "zip" or None: unpack into a folder after download.
    extract: str | None = None
    # Set once the file is on disk.
    path: str | None = None
    sha256: str | None = None
    # Free-form facts: a conversion report for role "onnx", the member to use inside an archive...
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.path is not None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: v for k, v in data.items() if v not in (None, [], {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artifact:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Model:
    """A cataloged model: what it is, how to feed it, and its files."""

    name: str
    framework: str
    format: str | None = None
    task: str | None = None
    dataset: str | None = None
    architecture: str | None = None
    description: str | None = None
    license: str | None = None
    tags: list[str] = field(default_factory=list)
    source: str | None = None  # zoo the entry came from: "caffe", "tensorflow", a source name, "local"
    homepage: str | None = None
    paper: str | None = None
    input: InputSpec = field(default_factory=InputSpec)
    parameters: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    removed_upstream: bool = False
    # The last signature checks, by whose signature ("publisher", "zoo"): zoo.signing.SignatureCheck
    # as dicts. Recorded by fetch, `zoo sign` and `zoo verify --signatures`, never by an index.
    signature: dict[str, Any] = field(default_factory=dict)

    # The revision these files are (zoo.revisions): a Hub commit, an index's revision, or a digest
    # prefix; None until the catalog records one.
    revision: str | None = None

    @property
    def signature_status(self) -> str | None:
        """"verified" when every recorded signature check passed, "failed" when one did, else None."""
        statuses = [check.get("status") for check in self.signature.values()]
        if not statuses:
            return None
        return "verified" if all(s == "verified" for s in statuses) else "failed"

    @property
    def is_local(self) -> bool:
        """True when every file the model needs is on disk (recorded, and still there)."""
        import os

        needed = [a for a in self.artifacts if a.role != "onnx"]
        return bool(needed) and all(a.is_local and os.path.lexists(a.path) for a in needed)

    @property
    def missing_files(self) -> list[str]:
        """Paths of files recorded as on disk that are gone (moved or deleted since)."""
        import os

        return [a.path for a in self.artifacts if a.path and not os.path.lexists(a.path)]

    def artifact(self, role: str) -> Artifact | None:
        """The first artifact with this role, or None."""
        return next((a for a in self.artifacts if a.role == role), None)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["input"] = self.input.to_dict()
        data["artifacts"] = [a.to_dict() for a in self.artifacts]
        data["local"] = self.is_local
        return {k: v for k, v in data.items() if v not in (None, [], {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Model:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["input"] = InputSpec.from_dict(data.get("input"))
        values["artifacts"] = [Artifact.from_dict(a) for a in data.get("artifacts", [])]
        return cls(**values)

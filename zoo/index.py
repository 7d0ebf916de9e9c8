"""The zoo index JSON format ("zoo-index/1"): validate, parse to `Model`s, dump; the built-in zoos.

An index is what a remote source serves and what `zoo/data/*.json` holds::

    {"format": "zoo-index/1", "name": "acme", "models": [
        {"name": "resnet9", "framework": "onnx", "task": "image-classification",
         "files": [{"role": "model", "filename": "resnet9.onnx",
                    "url": "https://example.org/resnet9.onnx", "sha256": "..."}]}]}

`docs/index-format.md` documents every field and gives the JSON schema (`SCHEMA` below).
Everything is validated before anything is returned, so a malformed index never reaches the
catalog half-read; the error names the index, the entry and the field.
"""
from __future__ import annotations

import difflib
import json
import math
import re
from typing import Any

from zoo.errors import IndexFormatError
from zoo.hashes import ALGOS
from zoo.records import (FRAMEWORKS, LAYOUTS, MAX_FILE_DEPTH, NAME_PATTERN, NAME_RULE, ROLES, Artifact, InputSpec,
                          Model, file_name_parts)

FORMAT = "zoo-index/1"
CHECKSUM_ALGOS = ALGOS  # algo -> hex digits of its digest
EXTRACTS = ("tar", "zip")
CHANNEL_ORDERS = ("RGB", "BGR")
_HEX = re.compile(r"^[0-9a-fA-F]+$")

# Bounds on what an index may say, so a hostile or broken index gets a clear error, not a crash.
MAX_COUNT = 2**63 - 1  # sizes and parameter counts: the catalog stores 64-bit integers
# A cached file's longest name is "<filename>.part.json.tmp" and file systems allow 255 bytes.
MAX_FILENAME_BYTES = 255 - len(".part.json.tmp")
MAX_TEXT = 1 << 16  # characters of a text field (a description, a URL, a note)
MAX_META_DEPTH = 16  # nesting of objects and lists inside 'meta'
MAX_META_BYTES = 1 << 16  # 'meta' of an entry or a file, as JSON
# Names Windows reserves for devices, whatever the extension ("nul.onnx" is the NUL device).
_RESERVED_FILENAMES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                       *(f"LPT{i}" for i in range(1, 10))}
URL_SCHEMES = ("http", "https", "file")
REMOTE_URL_SCHEMES = ("http", "https")  # all a remote index may point at: no file:// of ours
# What a download leaves beside a cached file while it runs (zoo.transport).
_DOWNLOAD_SIDE_FILES = (".part", ".part.json", ".lock")

_TEXT_FIELDS = ("format", "task", "dataset", "architecture", "description", "license",
                "homepage", "paper")
ENTRY_FIELDS = ("name", "framework", *_TEXT_FIELDS, "tags", "input", "parameters", "metrics",
                "meta", "revision", "version", "files", "signature")
# A revision id (a commit, a release id): what `NAME@REV` names; a version is a tag for it.
REVISION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
FILE_FIELDS = ("role", "filename", "url", "urls", "size", *CHECKSUM_ALGOS, "checksum", "extract",
               "members", "note", "manual", "meta")
# Roles a file of `files` may take: a signature is the entry's own `signature` field.
FILE_ROLES = tuple(r for r in ROLES if r != "signature")
# An entry's `signature`: where the OpenSSF model signature (a Sigstore bundle) is, and who must
# have signed it (zoo.signing.Signer): a public key, a certificate chain (+ identity), or a
# Sigstore identity and issuer.
SIGNATURE_FIELDS = ("url", "urls", "filename", "size", *CHECKSUM_ALGOS, "checksum", "public_key",
                    "certificate_chain", "identity", "issuer", "note")
SIGNER_FIELDS = ("public_key", "certificate_chain", "identity", "issuer")
DEFAULT_SIGNATURE_FILENAME = "model.sig"  # the model-signing CLI's default output
INPUT_FIELDS = ("name", "shape", "dtype", "layout", "mean", "std", "scale", "channel_order",
                "pixel_range", "resize", "crop")
# File fields that live in Artifact.meta once parsed (and come back out of it when dumped).
_FILE_META_FIELDS = ("members", "note", "manual")


def _schema() -> dict[str, Any]:
    number_list = {"type": "array", "items": {"type": "number"}, "minItems": 1}
    text = {"type": "string"}
    checksum_props = {algo: {"type": "string", "pattern": f"^[0-9a-fA-F]{{{n}}}$"}
                      for algo, n in CHECKSUM_ALGOS.items()}
    file_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["role", "filename"],
        "properties": {
            "role": {"enum": list(FILE_ROLES)},
            "filename": {"type": "string", "pattern": r"^(?!/)(?!.*//)(?!.*/$)(?!(.*/)?\.\.?(/|$))[^\\\x00]+$",
                         "description": "a file name, or a relative path with '/' for a file in a sub-folder"},
            "url": text,
            "urls": {"type": "array", "items": text},
            "size": {"type": "integer", "minimum": 0, "maximum": MAX_COUNT},
            **checksum_props,
            "checksum": {"type": ["string", "null"],
                         "description": "'algo:hex', or null to say no checksum is published"},
            "extract": {"enum": [*EXTRACTS, None]},
            "members": {"type": "object", "additionalProperties": text},
            "note": text,
            "manual": {"type": "string",
                       "description": "how to get a file that has no direct download URL"},
            "meta": {"type": "object"},
        },
    }
    signature_schema = {
        "type": "object",
        "additionalProperties": False,
        "description": "an OpenSSF model signature (Sigstore bundle) over the entry's files, and "
                       "who must have signed it",
        "properties": {
            "url": text,
            "urls": {"type": "array", "items": text},
            "filename": file_schema["properties"]["filename"],
            "size": file_schema["properties"]["size"],
            **checksum_props,
            "checksum": file_schema["properties"]["checksum"],
            "public_key": {"type": "string", "description": "PEM elliptic-curve public key"},
            "certificate_chain": {"type": "array", "items": text,
                                  "description": "PEM certificates the signing certificate chains to"},
            "identity": {"type": "string",
                         "description": "certificate SubjectAltName/CN, or Sigstore identity"},
            "issuer": {"type": "string", "description": "Sigstore OIDC issuer"},
            "note": text,
        },
    }
    size_pair = {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2}
    input_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": text,
            "shape": {"type": "array", "items": {"type": ["integer", "null"], "minimum": 0}},
            "dtype": text,
            "layout": {"enum": list(LAYOUTS)},
            "mean": number_list,
            "std": number_list,
            "scale": {"type": "number"},
            "channel_order": {"enum": list(CHANNEL_ORDERS)},
            "pixel_range": {"type": "array", "items": {"type": "number"},
                            "minItems": 2, "maxItems": 2},
            "resize": {"oneOf": [{"type": "integer", "minimum": 1}, size_pair],
                       "description": "shorter side in pixels, or [height, width]"},
            "crop": {**size_pair, "description": "centre crop [height, width] after resizing"},
        },
    }
    entry_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "framework", "files"],
        "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN.pattern},
            "framework": {"enum": list(FRAMEWORKS)},
            **{f: text for f in _TEXT_FIELDS},
            "tags": {"type": "array", "items": text},
            "input": input_schema,
            "parameters": {"type": "integer", "minimum": 0, "maximum": MAX_COUNT},
            "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
            "meta": {"type": "object"},
            "revision": {"type": "string", "pattern": REVISION_PATTERN.pattern,
                         "description": "the id of this revision of the files (a commit, a release)"},
            "version": {"type": "string", "maxLength": 128,
                        "description": "a version tag for this revision, e.g. 2.1"},
            "files": {"type": "array", "items": file_schema, "minItems": 1},
            "signature": signature_schema,
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://zoo.invalid/schema/zoo-index-1.json",
        "title": "zoo index",
        "type": "object",
        "required": ["format", "name", "models"],
        "properties": {
            "format": {"const": FORMAT},
            "name": text,
            "description": text,
            "homepage": text,
            "models": {"type": "array", "items": entry_schema},
        },
    }


# The JSON Schema of the format (draft 2020-12). parse_index checks the same rules and more
# (unique names, one checksum per file, hex lengths, members only with extract).
SCHEMA: dict[str, Any] = _schema()


class _Where:
    """Names a place in the index for error messages: index 'acme' entry 3 ('resnet9')."""

    def __init__(self, source: str, position: int | None = None, name: Any = None,
                 prefix: str = ""):
        self.source, self.position, self.name, self.prefix = source, position, name, prefix

    def __str__(self) -> str:
        text = f"index {self.source!r}"
        if self.position is not None:
            text += f" entry {self.position}"
            if isinstance(self.name, str) and self.name:
                text += f" ({self.name!r})"
        return text

    def at(self, prefix: str) -> _Where:
        return _Where(self.source, self.position, self.name, prefix)

    def fail(self, field: str, problem: str) -> IndexFormatError:
        return IndexFormatError(f"{self}: field '{self.prefix}{field}' {problem}")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_keys(where: _Where, data: dict, known: tuple[str, ...]) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise where.fail(key, f"is not a known field{hint}; known: {', '.join(known)}")


def _text(where: _Where, data: dict, field: str, required: bool = False) -> str | None:
    value = data.get(field)
    if value is None:
        if required:
            raise where.fail(field, "is missing; it is required")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise where.fail(field, f"is {_kind(value)} {_show(value)}; expected a non-empty string")
    if len(value) > MAX_TEXT:
        raise where.fail(field, f"is {len(value)} characters long; at most {MAX_TEXT} are allowed")
    return value


def _is_number(value: Any) -> bool:
    """A finite JSON number (NaN and Infinity are not JSON, and 1e400 parses as Infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) if isinstance(value, float) else abs(value) <= MAX_COUNT


def _count(where: _Where, data: dict, field: str, what: str) -> int | None:
    """A non-negative integer that fits the catalog's 64-bit columns, or None."""
    value = data.get(field)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                              or not 0 <= value <= MAX_COUNT):
        raise where.fail(field, f"is {_show(value)}; expected {what} (integer >= 0, at most "
                                "2**63-1)")
    return value


def _meta(where: _Where, data: dict, field: str = "meta") -> dict:
    """An object of free-form facts, bounded in nesting and size and free of NaN/Infinity."""
    meta = data.get(field, {})
    if not isinstance(meta, dict):
        raise where.fail(field, f"is {_kind(meta)}; expected an object")
    pending = [(meta, 1)]
    while pending:  # iterative: a deep object must not exhaust the stack here either
        value, depth = pending.pop()
        if depth > MAX_META_DEPTH:
            raise where.fail(field, f"nests objects/lists deeper than {MAX_META_DEPTH} levels; "
                                    "flatten it")
        if isinstance(value, dict):
            pending += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            pending += [(v, depth + 1) for v in value]
        elif isinstance(value, float) and not math.isfinite(value):
            raise where.fail(field, "holds NaN or Infinity, which JSON does not allow")
    try:
        size = len(json.dumps(meta))
    except (TypeError, ValueError) as exc:  # a dict given from Python can hold anything
        raise where.fail(field, f"holds a value that is not JSON ({exc})") from None
    if size > MAX_META_BYTES:
        raise where.fail(field, f"is {size} bytes of JSON; at most {MAX_META_BYTES} are allowed "
                                "(put large data in a file of the entry)")
    return dict(meta)


def _numbers(where: _Where, data: dict, field: str, length: int | None = None
             ) -> list[float] | None:
    value = data.get(field)
    if value is None:
        return None
    if (not isinstance(value, list) or not value or not all(_is_number(v) for v in value)
            or (length is not None and len(value) != length)):
        count = f"{length} numbers" if length else "a non-empty list of numbers"
        raise where.fail(field, f"is {_show(value)}; expected {count}")
    return [float(v) for v in value]


def _choice(where: _Where, data: dict, field: str, choices: tuple, required: bool = False):
    value = data.get(field)
    if value is None and not required:
        return None
    if value not in choices:
        shown = "missing" if value is None else f"{_show(value)}"
        raise where.fail(field, f"is {shown}; expected one of {', '.join(map(str, choices))}")
    return value


def _parse_input(where: _Where, data: Any) -> InputSpec:
    if data is None:
        return InputSpec()
    if not isinstance(data, dict):
        raise where.fail("input", f"is {_kind(data)}; expected an object")
    where = where.at("input.")
    _check_keys(where, data, INPUT_FIELDS)
    shape = data.get("shape")
    if shape is not None and (
        not isinstance(shape, list) or len(shape) > MAX_META_DEPTH
        or not all(d is None or (isinstance(d, int) and not isinstance(d, bool)
                                 and 0 <= d <= MAX_COUNT) for d in shape)
    ):
        raise where.fail("shape", f"is {_show(shape)}; expected a list of sizes (null = any)")
    scale = data.get("scale")
    if scale is not None and not _is_number(scale):
        raise where.fail("scale", f"is {_show(scale)}; expected a number")
    return InputSpec(
        name=_text(where, data, "name"),
        shape=shape,
        dtype=_text(where, data, "dtype") or "float32",
        layout=_choice(where, data, "layout", LAYOUTS),
        mean=_numbers(where, data, "mean"),
        std=_numbers(where, data, "std"),
        scale=None if scale is None else float(scale),
        channel_order=_choice(where, data, "channel_order", CHANNEL_ORDERS),
        pixel_range=_numbers(where, data, "pixel_range", length=2),
        resize=_size(where, data, "resize", pair_only=False),
        crop=_size(where, data, "crop", pair_only=True),
    )


def _size(where: _Where, data: dict, field: str, pair_only: bool) -> int | list[int] | None:
    """An image size: [height, width] of positive ints (or one int, the shorter side, for resize)."""
    value = data.get(field)
    if value is None:
        return None
    positive = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0  # noqa: E731
    if not pair_only and positive(value):
        return value
    if isinstance(value, list) and len(value) == 2 and all(positive(v) for v in value):
        return list(value)
    expected = "[height, width] of positive integers" + ("" if pair_only else ", or one integer (the shorter side)")
    raise where.fail(field, f"is {_show(value)}; expected {expected}")


def _safe_relative(path: str) -> bool:
    parts = path.replace("\\", "/").split("/")
    return (bool(path) and len(path) <= 4096 and "\0" not in path and not path.startswith("/")
            and ".." not in parts and ":" not in parts[0])


def _check_filename(where: _Where, filename: str) -> None:
    """A name every file system can hold: it names the file in the cache (with '/', in a sub-folder of it)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in filename):
        raise where.fail("filename", f"is {filename!r}; it holds a NUL or control character")
    parts = file_name_parts(filename)
    if parts is None:
        raise where.fail("filename", f"is {filename!r}; expected a file name, or a relative path such as "
                                     "variables/variables.index (no leading '/', no '.' or '..' parts, no "
                                     f"backslash, at most {MAX_FILE_DEPTH} folders): it names the file in the cache")
    for part in parts:
        _check_name_part(where, filename, part)


def _check_name_part(where: _Where, filename: str, part: str) -> None:
    size = len(part.encode("utf-8", "surrogatepass"))
    if size > MAX_FILENAME_BYTES:
        raise where.fail("filename", f"is {size} bytes long ({_show(part)}); at most "
                                     f"{MAX_FILENAME_BYTES} bytes (file systems allow 255 and a "
                                     "download adds '.part.json.tmp')")
    stem = part.split(".")[0].rstrip(" ").upper()
    if stem in _RESERVED_FILENAMES:
        raise where.fail("filename", f"is {filename!r}; {stem} is a device name on Windows, "
                                     "which cannot hold such a file; rename it")
    if part[-1] in ". ":
        raise where.fail("filename", f"is {filename!r}; a name ending in a dot or a space is "
                                     "changed by Windows; drop it")


def _check_url(where: _Where, field: str, url: str, schemes: tuple[str, ...]) -> None:
    scheme = url.partition("://")[0].lower() if "://" in url else None
    if scheme is None:
        raise where.fail(field, f"has {_show(url)}; expected an absolute URL such as "
                                "https://host/file")
    if scheme not in schemes:
        remote = schemes == REMOTE_URL_SCHEMES
        raise where.fail(field, f"has {_show(url)}; " + (
            f"an index served over the network may only point at {' or '.join(schemes)} URLs"
            if remote else f"the URL scheme must be one of {', '.join(schemes)}"))
    if any(ord(c) < 32 or ord(c) == 127 for c in url):  # CR/LF would split an HTTP request
        raise where.fail(field, f"has {_show(url)}; a URL has no control characters "
                                "(encode them as %0D, %0A etc.)")


def _parse_checksum(where: _Where, data: dict) -> tuple[str | None, bool]:
    """(checksum "algo:hex" or None, whether the index says none is published)."""
    given = [algo for algo in CHECKSUM_ALGOS if algo in data]
    if "checksum" in data:
        given.append("checksum")
    if len(given) > 1:
        raise where.fail(given[1], f"conflicts with '{given[0]}'; give one checksum per file")
    if not given:
        return None, False
    field = given[0]
    value = data[field]
    if field == "checksum":
        if value is None:
            return None, True
        if not isinstance(value, str) or ":" not in value:
            raise where.fail("checksum", f"is {_show(value)}; expected 'algo:hex' "
                                         f"(algo one of {', '.join(CHECKSUM_ALGOS)}) or null")
        algo, _, digest = value.partition(":")
        algo = algo.strip().lower()
        if algo not in CHECKSUM_ALGOS:
            raise where.fail("checksum", f"uses algorithm {algo!r}; expected one of "
                                         f"{', '.join(CHECKSUM_ALGOS)}")
    else:
        algo, digest = field, value
        if not isinstance(digest, str):
            raise where.fail(field, f"is {_kind(digest)}; expected a {CHECKSUM_ALGOS[algo]}-digit "
                                    f"hex string")
    digest = digest.strip()
    if len(digest) != CHECKSUM_ALGOS[algo] or not _HEX.match(digest):
        raise where.fail(field, f"is {_show(digest)}; a {algo} is {CHECKSUM_ALGOS[algo]} "
                                f"hex digits, this has {len(digest)} characters")
    return f"{algo}:{digest.lower()}", False


def _parse_file(where: _Where, position: int, data: Any,
                schemes: tuple[str, ...] = URL_SCHEMES) -> Artifact:
    if not isinstance(data, dict):
        raise where.at("").fail(f"files[{position}]", f"is {_kind(data)}; expected an object")
    where = where.at(f"files[{position}].")
    _check_keys(where, data, FILE_FIELDS)
    if data.get("role") == "signature":
        raise where.fail("role", "is 'signature'; give a model's signature in the entry's "
                                 "'signature' field (with who must have signed it), not in 'files'")
    role = _choice(where, data, "role", FILE_ROLES, required=True)
    filename = _text(where, data, "filename", required=True)
    _check_filename(where, filename)
    urls: list[str] = []
    if data.get("url") is not None:
        urls.append(_text(where, data, "url", required=True))
    if "urls" in data:
        value = data["urls"]
        if not isinstance(value, list) or not all(isinstance(u, str) and u for u in value):
            raise where.fail("urls", f"is {_show(value)}; expected a list of URL strings "
                                     "(mirrors, tried in order)")
        urls += [u for u in value if u not in urls]
    for url in urls:
        _check_url(where, "urls" if "urls" in data else "url", url, schemes)
    manual = _text(where, data, "manual")
    if not urls and not manual:
        raise where.fail("url", "is missing; give 'url' or 'urls', or 'manual' saying how to get "
                                "a file that has no direct download")
    size = _count(where, data, "size", "a byte count")
    checksum, none_published = _parse_checksum(where, data)
    extract = _choice(where, data, "extract", EXTRACTS)
    members = data.get("members")
    if members is not None:
        if extract is None:
            raise where.fail("members", "is given but 'extract' is not; members name files "
                                        "inside an archive (extract: tar or zip)")
        if not isinstance(members, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and _safe_relative(v)
            for k, v in members.items()
        ):
            raise where.fail("members", f"is {_show(members)}; expected an object mapping roles "
                                        "to relative paths inside the archive")
    meta = _meta(where, data)
    for field in _FILE_META_FIELDS:
        if data.get(field) is not None:
            meta[field] = data[field] if field != "note" else _text(where, data, "note")
    if none_published:
        meta["checksum_published"] = False
    return Artifact(role=role, filename=filename, urls=urls, size=size, checksum=checksum,
                    extract=extract, meta=meta)


def _parse_signature(where: _Where, data: Any, schemes: tuple[str, ...]) -> Artifact:
    """The entry's `signature` as an Artifact with role "signature" and its signer in meta."""
    from zoo.errors import SignatureError
    from zoo.signing import Signer

    if not isinstance(data, dict):
        raise where.fail("signature", f"is {_kind(data)}; expected an object with the signature's "
                                      "url and who must have signed it")
    where = where.at("signature.")
    _check_keys(where, data, SIGNATURE_FIELDS)
    filename = _text(where, data, "filename") or DEFAULT_SIGNATURE_FILENAME
    _check_filename(where, filename)
    urls: list[str] = []
    if data.get("url") is not None:
        urls.append(_text(where, data, "url", required=True))
    value = data.get("urls", [])
    if not isinstance(value, list) or not all(isinstance(u, str) and u for u in value):
        raise where.fail("urls", f"is {_show(value)}; expected a list of URL strings")
    urls += [u for u in value if u not in urls]
    if not urls:
        raise where.fail("url", "is missing; give 'url' (or 'urls'): where the signature file is")
    for url in urls:
        _check_url(where, "urls" if "urls" in data else "url", url, schemes)
    checksum, none_published = _parse_checksum(where, data)
    meta: dict[str, Any] = {}
    given = {k: data[k] for k in SIGNER_FIELDS if data.get(k) is not None}
    for key in ("public_key", "identity", "issuer"):
        if key in given:
            _text(where, data, key, required=True)
    chain = given.get("certificate_chain")
    if chain is not None and (not isinstance(chain, list) or not all(isinstance(c, str) for c in chain)):
        raise where.fail("certificate_chain", f"is {_show(chain)}; expected a list of PEM certificates")
    if given:
        try:
            meta["signer"] = Signer.from_dict(given).to_dict()
        except SignatureError as exc:
            raise where.fail(next(iter(given)), f"does not name a signer: {exc}") from None
    if data.get("note") is not None:
        meta["note"] = _text(where, data, "note")
    if none_published:
        meta["checksum_published"] = False
    return Artifact(role="signature", filename=filename, urls=urls,
                    size=_count(where, data, "size", "a byte count"), checksum=checksum, meta=meta)


def _parse_entry(source: str, position: int, data: Any,
                 schemes: tuple[str, ...] = URL_SCHEMES) -> Model:
    name = data.get("name") if isinstance(data, dict) else None
    where = _Where(source, position, name)
    if not isinstance(data, dict):
        raise IndexFormatError(f"{where} is {_kind(data)}; expected an object with name, "
                               "framework and files")
    _check_keys(where, data, ENTRY_FIELDS)
    name = _text(where, data, "name", required=True)
    if not NAME_PATTERN.match(name):
        raise where.fail("name", f"is {name!r}; expected {NAME_RULE}")
    framework = _choice(where, data, "framework", FRAMEWORKS, required=True)
    texts = {f: _text(where, data, f) for f in _TEXT_FIELDS}
    tags = data.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise where.fail("tags", f"is {_show(tags)}; expected a list of strings")
    parameters = _count(where, data, "parameters", "a count")
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict) or not all(_is_number(v) for v in metrics.values()):
        raise where.fail("metrics", f"is {_show(metrics)}; expected an object of (finite) numbers")
    meta = _meta(where, data)
    revision = _text(where, data, "revision")
    if revision is not None and not REVISION_PATTERN.match(revision):
        raise where.fail("revision", f"is {revision!r}; expected letters, digits and . _ + - (at most 128), "
                                     "e.g. a commit id or 2024-05-01")
    version = _text(where, data, "version")
    if version is not None:
        if len(version) > 128:
            raise where.fail("version", f"is {len(version)} characters long; at most 128 are allowed")
        meta = {**meta, "version": version}
    files = data.get("files")
    if not isinstance(files, list) or not files:
        shown = "missing" if files is None else _show(files)
        raise where.fail("files", f"is {shown}; expected a non-empty list of files")
    artifacts = [_parse_file(where, i, f, schemes) for i, f in enumerate(files)]
    if data.get("signature") is not None:
        artifacts.append(_parse_signature(where, data["signature"], schemes))
    seen: set[tuple[str, str]] = set()
    for i, artifact in enumerate(artifacts):
        key = (artifact.role, artifact.filename)
        if key in seen:
            raise where.fail(f"files[{i}]", f"repeats role {artifact.role!r} with filename "
                                            f"{artifact.filename!r}; each file is listed once")
        seen.add(key)
    _check_cache_names(where, artifacts)
    return Model(
        name=name, framework=framework, **texts, tags=list(tags), source=source,
        input=_parse_input(where, data.get("input")), parameters=parameters,
        metrics={k: float(v) for k, v in metrics.items()}, artifacts=artifacts, meta=dict(meta),
        revision=revision,
    )


def _check_cache_names(where: _Where, artifacts: list[Artifact]) -> None:
    """Refuse files whose places in the cache collide (ignoring case, as macOS and Windows do).

    An entry's files share one cache folder: each file, its download's side files and the
    folder an archive unpacks to must all have distinct names, or one overwrites the other.
    """
    from zoo.archives import unpacked_name

    taken: dict[str, tuple[int, str]] = {}
    folders: dict[str, tuple[int, str]] = {}  # the sub-folders files are in: shared, but never a file's place
    for i, artifact in enumerate(artifacts):
        parts = artifact.filename.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            folders.setdefault(folder.casefold(), (i, f"folder {folder!r} that {artifact.filename!r} is in"))
    for i, artifact in enumerate(artifacts):
        places = [(artifact.filename, f"file {artifact.filename!r}")]
        places += [(artifact.filename + side, f"download file {artifact.filename + side!r}")
                   for side in _DOWNLOAD_SIDE_FILES]
        if artifact.extract:
            folder = unpacked_name(artifact.filename)
            places.append((folder, f"folder {folder!r} that {artifact.filename!r} unpacks to"))
        for name, what in places:
            other = folders.get(name.casefold()) or taken.setdefault(name.casefold(), (i, what))
            if other[0] != i:
                field = "signature" if artifact.role == "signature" else f"files[{i}]"
                raise where.fail(f"{field}.filename", (
                    f"is {artifact.filename!r}: its {what} takes the same place in the cache as "
                    f"files[{other[0]}]'s {other[1]} (names are compared ignoring case); "
                    "give each file a name of its own"))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_index(data: dict | str | bytes, *, source: str, remote: bool = False) -> list[Model]:
    """Validate a zoo index and return its models, each with ``source=source``.

    Everything is checked before anything is returned: a bad entry raises
    `IndexFormatError` naming the index, the entry (position from 0 and name) and the field.
    A `remote` index (one downloaded over http(s)) may only point at http(s) URLs.

    >>> parse_index('{"format": "zoo-index/1", "name": "x", "models": []}', source="x")
    []
    """
    if isinstance(data, (str, bytes, bytearray)):
        try:
            data = json.loads(data, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise IndexFormatError(f"index {source!r} is not valid JSON: {exc}") from None
        except RecursionError:
            raise IndexFormatError(f"index {source!r} nests objects/lists too deeply to be a "
                                   "zoo index") from None
    where = _Where(source)
    if not isinstance(data, dict):
        raise IndexFormatError(f"{where} is {_kind(data)}; expected a JSON object with "
                               f"\"format\": \"{FORMAT}\" and \"models\"")
    if data.get("format") != FORMAT:
        shown = "missing" if "format" not in data else f"is {_show(data['format'])}"
        raise IndexFormatError(f"{where}: field 'format' {shown}; expected \"{FORMAT}\" "
                               "(see docs/index-format.md)")
    _text(where, data, "name", required=True)
    models = data.get("models")
    if not isinstance(models, list):
        shown = "missing" if models is None else f"{_kind(models)}"
        raise IndexFormatError(f"{where}: field 'models' is {shown}; expected a list of entries")
    schemes = REMOTE_URL_SCHEMES if remote else URL_SCHEMES
    parsed = [_parse_entry(source, i, entry, schemes) for i, entry in enumerate(models)]
    first: dict[str, int] = {}
    for i, model in enumerate(parsed):
        key = model.name.casefold()  # a name is a cache folder: 'ResNet' and 'resnet' collide
        if key in first:
            same = parsed[first[key]].name == model.name
            raise _Where(source, i, model.name).fail(
                "name", f"repeats entry {first[key]}" + ("" if same else " ignoring case")
                + "; names are unique in an index")
        first[key] = i
    return parsed


def _dump_file(artifact: Artifact) -> dict[str, Any]:
    data: dict[str, Any] = {"role": artifact.role, "filename": artifact.filename}
    if len(artifact.urls) == 1:
        data["url"] = artifact.urls[0]
    elif artifact.urls:
        data["urls"] = list(artifact.urls)
    if artifact.size is not None:
        data["size"] = artifact.size
    meta = dict(artifact.meta)
    if artifact.checksum:
        algo, _, digest = artifact.checksum.partition(":")
        data[algo] = digest
    elif meta.pop("checksum_published", True) is False:
        data["checksum"] = None
    if artifact.extract:
        data["extract"] = artifact.extract
    for field in _FILE_META_FIELDS:
        if field in meta:
            data[field] = meta.pop(field)
    if meta:
        data["meta"] = meta
    return data


def _dump_signature(artifact: Artifact) -> dict[str, Any]:
    data = {k: v for k, v in _dump_file(artifact).items() if k not in ("role", "meta")}
    if data.get("filename") == DEFAULT_SIGNATURE_FILENAME:
        del data["filename"]
    signer = dict(artifact.meta.get("signer") or {})
    signer.pop("method", None)
    signer.pop("trust_config", None)
    data.update(signer)
    return data


def dump_index(models: list[Model], *, name: str, description: str | None = None
               ) -> dict[str, Any]:
    """The index (a JSON-ready dict) listing `models`: the inverse of `parse_index`.

    Local facts (paths on disk, local sha256, the source, removed_upstream) are left out.
    """
    entries = []
    for model in models:
        # `signature` of an entry is the publisher's signature file, never the model's verdicts
        entry = {k: v for k, v in model.to_dict().items() if k in ENTRY_FIELDS and k != "signature"}
        meta = dict(entry.get("meta") or {})
        if isinstance(meta.get("version"), str):
            entry["version"] = meta.pop("version")
        if meta:
            entry["meta"] = meta
        else:
            entry.pop("meta", None)
        entry["files"] = [_dump_file(a) for a in model.artifacts if a.role not in ("onnx", "signature")]
        signature = next((a for a in model.artifacts
                          if a.role == "signature" and a.meta.get("by") != "zoo"), None)
        if signature is not None:
            entry["signature"] = _dump_signature(signature)
        entries.append(entry)
    index: dict[str, Any] = {"format": FORMAT, "name": name}
    if description:
        index["description"] = description
    index["models"] = entries
    return index


def builtin_index_names() -> list[str]:
    """Names of the indexes shipped in zoo/data (e.g. caffe, tensorflow)."""
    from importlib import resources

    return sorted(p.name[:-5] for p in resources.files("zoo").joinpath("data").iterdir()
                  if p.name.endswith(".json"))


def builtin_models(index: str | None = None) -> list[Model]:
    """The models of the built-in zoo indexes (zoo/data/*.json), or of one of them by name.

    Each model's source is its index's name ("caffe", "tensorflow").
    """
    from importlib import resources

    names = builtin_index_names() if index is None else [index]
    models: list[Model] = []
    for name in names:
        resource = resources.files("zoo").joinpath("data", f"{name}.json")
        if not resource.is_file():
            raise IndexFormatError(f"no built-in index {name!r}; built-in: "
                                   f"{', '.join(builtin_index_names())}")
        models += parse_index(resource.read_bytes(), source=name)
    return models


__all__ = ["FORMAT", "SCHEMA", "builtin_index_names", "builtin_models", "dump_index",
           "parse_index"]

"""Is a file still what was recorded? Size and modification time first; its sha256 only when those changed.

The one check every use of a converted model or a cut makes against its source (`zoo convert`,
`zoo layers`, `zoo extract`, `load_extractor`): a model file overwritten in place (retrained,
same path) must not keep serving the old model's conversion or cuts. Hashes of files are
remembered by (path, size, mtime) under ``<cache>/cuts/.hashes`` so an unchanged file is never
read twice.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from zoo.errors import ZooError
from zoo.hashes import file_sha256


def file_state(path: str | os.PathLike) -> list:
    """[size, mtime_ns] of a file, or [[relative path, size, mtime_ns], ...] of every file under a folder."""
    path = os.fspath(path)
    if os.path.isdir(path):
        entries = []
        for root, _, names in sorted(os.walk(path)):
            for name in sorted(names):
                st = os.stat(os.path.join(root, name))
                entries.append([os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns])
        return entries
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def content_sha256(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *,
                   recorded_state: Any = None, recorded_sha256: str | None = None) -> str:
    """The sha256 a file has now: the recorded one when its state is unchanged, else a remembered or new hash."""
    state = file_state(path)
    if recorded_sha256 and recorded_state is not None and _same(recorded_state, state):
        return recorded_sha256
    memo = _memo_path(path, cache_dir)
    try:
        known = json.loads(memo.read_text())
        if _same(known["state"], state):
            return known["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = file_sha256(path)
    _remember(memo, path, state, digest)
    return digest


def changed(path: str | os.PathLike, recorded_state: Any, recorded_sha256: str | None,
            cache_dir: str | os.PathLike | None = None) -> bool:
    """True when the file's content is no longer `recorded_sha256` (hashing only if its state moved)."""
    return content_sha256(path, cache_dir, recorded_state=recorded_state,
                          recorded_sha256=recorded_sha256) != recorded_sha256


def remember(path: str | os.PathLike, sha256: str, cache_dir: str | os.PathLike | None = None) -> None:
    """Record a hash just computed (a file zoo wrote), so its next check costs one stat."""
    _remember(_memo_path(path, cache_dir), path, file_state(path), sha256)


def _same(recorded: Any, state: list) -> bool:
    return json.loads(json.dumps(recorded)) == json.loads(json.dumps(state))  # tuples and lists alike


def _memo_path(path: str | os.PathLike, cache_dir: str | os.PathLike | None) -> Path:
    from zoo.cache import cuts_folder

    absolute = os.path.abspath(os.fspath(path))
    return cuts_folder(".hashes", cache_dir) / (hashlib.sha1(os.fsencode(absolute)).hexdigest() + ".json")


def _remember(memo: Path, path: str | os.PathLike, state: list, digest: str) -> None:
    from zoo.atomic import write_atomic

    record = {"path": os.fspath(os.path.abspath(os.fspath(path))), "state": state, "sha256": digest}
    try:
        write_atomic(memo, json.dumps(record).encode())
    except (OSError, ZooError):
        pass  # a read-only cache: the hash is computed again next time, nothing is wrong


__all__ = ["changed", "content_sha256", "file_state", "remember"]

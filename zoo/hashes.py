"""Checksums: `file_hash`, `file_sha256` (files and folders), "algo:hex" strings and a streaming hasher."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from zoo.errors import ChecksumError

# algo -> length of its hex digest. "gitblob" is the id git gives a file's content:
# sha1 of b"blob <size>\0" + content, what a publisher who links a git tree can give.
ALGOS: dict[str, int] = {"sha256": 64, "sha1": 40, "md5": 32, "gitblob": 40}
CHUNK = 1 << 20
_HEX = re.compile(r"^[0-9a-f]+$")


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split "algo:hex" into (algo, lower-case hex); a bare 64-digit hex is a sha256.

    >>> parse_checksum("SHA1:0A4D55A8D778E5022FAB701977C5D840BBC486D0")
    ('sha1', '0a4d55a8d778e5022fab701977c5d840bbc486d0')
    """
    text = checksum.strip()
    algo, sep, digest = text.partition(":")
    if not sep:
        algo, digest = "sha256", text
    algo, digest = algo.strip().lower(), digest.strip().lower()
    if algo not in ALGOS:
        raise ChecksumError(
            f"checksum {checksum!r} uses unknown algorithm {algo!r}; "
            f"valid: {', '.join(ALGOS)} (write it as 'sha256:<hex>')"
        )
    if len(digest) != ALGOS[algo] or not _HEX.match(digest):
        raise ChecksumError(
            f"checksum {checksum!r} is not a {algo} digest: expected {ALGOS[algo]} hex digits "
            f"after '{algo}:', got {len(digest)} characters"
        )
    return algo, digest


class MultiHasher:
    """Feeds the same bytes to several hash functions, so a download is hashed as it streams.

    `size` is needed only for "gitblob", whose header holds the file size; when it is
    unknown the git blob id cannot be computed in the same pass and `hexdigest("gitblob")`
    returns None (the caller then hashes the file with `file_hash`).

    >>> h = MultiHasher(["sha256", "md5"])
    >>> h.update(b"abc")
    >>> h.hexdigest("md5")
    '900150983cd24fb0d6963f7d28e17f72'
    """

    def __init__(self, algos: list[str] | tuple[str, ...] = ("sha256",), size: int | None = None):
        self.algos = list(dict.fromkeys(["sha256", *algos]))
        self.size = size
        self.count = 0
        self._hashes: dict[str, "hashlib._Hash"] = {}
        for algo in self.algos:
            if algo == "gitblob":
                if size is not None:
                    self._hashes[algo] = hashlib.sha1(b"blob %d\0" % size)
            else:
                self._hashes[algo] = hashlib.new(algo)

    def update(self, data: bytes | memoryview) -> None:
        # hashlib releases the GIL for large buffers, so the socket reader keeps going meanwhile.
        for h in self._hashes.values():
            h.update(data)
        self.count += len(data)

    def hexdigest(self, algo: str = "sha256") -> str | None:
        """The hex digest so far, or None for a gitblob whose size was not known up front
        (or does not match the bytes seen)."""
        if algo == "gitblob" and self.size != self.count:
            return None
        h = self._hashes.get(algo)
        return None if h is None else h.hexdigest()


def file_hash(path: str | os.PathLike, algo: str = "sha256") -> str:
    """Hex digest of a file's content with `algo` (sha256, sha1, md5 or gitblob)."""
    algo = algo.lower()
    if algo not in ALGOS:
        raise ChecksumError(f"unknown hash algorithm {algo!r}; valid: {', '.join(ALGOS)}")
    path = Path(path)
    hasher = MultiHasher([algo], size=path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    digest = hasher.hexdigest(algo)
    if digest is None:  # the file changed size while being read
        raise ChecksumError(f"{path} changed while it was being hashed; try again")
    return digest


def tree_sha256(folder: str | os.PathLike) -> str:
    """A content hash of a folder (a SavedModel): sha256 over its files' relative paths and sha256s."""
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file_hash(path, "sha256").encode() + b"\n")
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or the tree hash of a folder: the one hash catalog, reports and caches share."""
    return tree_sha256(path) if Path(path).is_dir() else file_hash(path, "sha256")


def hash_matches(path: str | os.PathLike, checksum: str | None) -> bool:
    """True when the file's content matches "algo:hex" (always True for a None checksum)."""
    if not checksum:
        return True
    algo, digest = parse_checksum(checksum)
    return file_hash(path, algo) == digest


__all__ = ["ALGOS", "MultiHasher", "file_hash", "file_sha256", "hash_matches", "parse_checksum", "tree_sha256"]

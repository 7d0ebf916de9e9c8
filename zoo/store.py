"""The content-addressed store: every fetched or converted file once, as ``blobs/sha256/<hex>``.

A model's folder (``models/<name>/``, ``onnx/<name>/``) holds views of blobs: a hard link, else a
reflink (a copy-on-write clone), else a symbolic link, else a copy, decided once per pair of file
systems (the store's and the view's) by trying them in that order. Two names, two sources or two
revisions with the same bytes share one blob; `zoo cache list` says how many bytes that saves.

A blob no view refers to is garbage (`zoo cache gc`), except one a running fetch holds: whoever
places, links or re-checks a blob holds ``blobs/sha256/<hex>.lock`` meanwhile, and the collector
skips a blob whose lock is taken, then looks again for views of the ones it does hold before it
deletes them. A view refers to its blob by inode (hard link), by target (symbolic link) or, for
reflinks and copies, by having the same bytes (same size, then same sha256).

A cache written before the store existed (fetched files as plain files in ``models/<name>/``) is
moved in place by `Store.migrate`: each file becomes a blob and its old path a view of it, once,
under a lock, resumably; ``blobs/LAYOUT`` records that it was done. Ground floor: paths, hashes
and locks only, so fetching, converting and the cache commands all use it.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from zoo.cache import root
from zoo.errors import CacheError
from zoo.hashes import file_hash

__all__ = ["LINK_MODES", "GcPlan", "MigrationReport", "Store", "single_file", "view_folders"]

log = logging.getLogger("zoo.download")

LAYOUT_VERSION = "2"
# How a view is made, in the order they are tried.
LINK_MODES = ("hardlink", "reflink", "symlink", "copy")
_HEX = re.compile(r"^[0-9a-f]{64}$")
# What a download or a writer leaves beside a file: never a view, never adopted.
_SIDE_SUFFIXES = (".part", ".part.json", ".lock", ".tmp")
# errno values that say "this file system cannot do that kind of link" (the next mode is tried).
_UNSUPPORTED = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EINVAL, errno.ENOSYS, errno.ENOTTY,
                getattr(errno, "EOPNOTSUPP", 95), getattr(errno, "ENOTSUP", 95)}
_FICLONE = 0x40049409  # Linux ioctl: clone src's extents into dst (btrfs, XFS, bcachefs, overlay on them)

# Files that must stay one plain file: ONNX external data (onnx refuses to read weights through a hard
# or symbolic link, its guard against link attacks). Their view is a reflink of the blob, else a plain
# copy that the store does not duplicate (no blob is kept where no reflink can share its bytes).
SINGLE_SUFFIXES = (".onnx_data", ".onnx.data", "_data", ".data")
# (store device, view device) -> the first mode that worked there; decided once per process.
_MODES: dict[tuple[int, int], str] = {}
_MODES_LOCK = threading.Lock()
# Lock objects by path: holding a blob twice in one process (a fetch, then its link) is re-entrant.
_HELD: dict[str, object] = {}
_HELD_LOCK = threading.Lock()


def view_folders(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders whose files may be views of blobs: ``models/*/`` and ``onnx/*/``."""
    base = root(cache_dir)
    found = []
    for kind in ("models", "onnx"):
        parent = base / kind
        if parent.is_dir():
            found += sorted(p for p in parent.iterdir() if p.is_dir() and not p.is_symlink()
                            and not p.name.startswith("."))
    return found


def single_file(path: str | os.PathLike) -> bool:
    """Whether the file must stay a single plain file (ONNX external data): never a hard or symbolic link."""
    return Path(path).name.endswith(SINGLE_SUFFIXES)


def _is_side_file(path: Path) -> bool:
    name = path.name
    return name.startswith(".") or name.endswith(_SIDE_SUFFIXES) or ".part." in name


def _view_files(folder: Path, nested: bool = True) -> Iterator[Path]:
    """The files in a view folder that may be views, in its sub-folders too (a SavedModel fetched file by
    file keeps variables/); `nested=False`: only those directly in it. Links to folders are not followed."""
    pending = [folder]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            if _is_side_file(path):
                continue
            if entry.is_symlink() or entry.is_file(follow_symlinks=False):
                yield path
            elif nested and entry.is_dir(follow_symlinks=False):
                pending.append(path)


@dataclass
class MigrationReport:
    """What `Store.migrate` did: files moved into the store, and the bytes dedup saved on the way."""

    files: int = 0
    bytes: int = 0
    saved: int = 0


@dataclass
class GcPlan:
    """Blobs nothing refers to, and the bytes deleting them frees; nothing is deleted until `execute`.

    `held` lists blobs a running fetch holds at planning time (they are left alone).
    """

    store: "Store"
    blobs: list[Path]
    held: list[Path] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        """The bytes `execute` frees (if no fetch takes one of the blobs meanwhile)."""
        return sum(_size(p) for p in self.blobs)

    def to_dict(self) -> dict:
        return {"blobs": [p.name for p in self.blobs], "bytes": self.bytes,
                "in_use": [p.name for p in self.held]}

    def execute(self) -> tuple[int, list[Path]]:
        """Delete the planned blobs a fetch does not hold and nothing refers to by now.

        Returns:
            (bytes freed, blobs skipped because a running fetch holds them or a view appeared).
        """
        return self.store.collect(self.blobs)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class Store:
    """The blobs of one cache folder and the views that refer to them.

    >>> store = Store()                                  # doctest: +SKIP
    >>> with store.hold(sha256):                         # doctest: +SKIP
    ...     store.link(sha256, cache / "models/resnet/resnet.onnx")
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        self.root = root(cache_dir)
        self.folder = self.root / "blobs" / "sha256"

    # ---- places ------------------------------------------------------------------------------
    def blob(self, sha256: str) -> Path:
        """Where the blob with this sha256 is (or would be)."""
        if not _HEX.match(sha256 or ""):
            raise CacheError(f"{sha256!r} is not a sha256 (64 lower-case hex digits); the store keys blobs by it")
        return self.folder / sha256

    def has(self, sha256: str) -> bool:
        return self.blob(sha256).is_file()

    def blobs(self) -> list[Path]:
        """Every blob in the store."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if _HEX.match(p.name) and p.is_file())

    # ---- holding -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def hold(self, sha256: str, timeout: float | None = None) -> Iterator[Path]:
        """Hold a blob (placing, linking or re-checking it): the collector leaves it alone meanwhile.

        Re-entrant in one process. `timeout` None waits as long as another process holds it.
        """
        blob = self.blob(sha256)
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = _lock_for(str(blob) + ".lock")
        from filelock import Timeout

        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            raise CacheError(f"blob {sha256[:12]} is held by another process for over {timeout:.0f} s; "
                             "try again when its fetch has finished", path=str(blob)) from None
        try:
            yield blob
        finally:
            lock.release()

    # ---- views -------------------------------------------------------------------------------
    def refers(self, view: Path, sha256: str) -> bool:
        """True when `view` is already a hard or symbolic link to the blob (no bytes to compare)."""
        blob = self.blob(sha256)
        try:
            if single_file(view):  # a copy or a reflink: its bytes are checked by whoever uses it
                return view.is_file() and not view.is_symlink() and (not blob.exists() or _size(blob) == _size(view))
            if view.is_symlink():
                return Path(os.path.realpath(view)) == Path(os.path.realpath(blob))
            return view.exists() and blob.exists() and os.path.samefile(view, blob)
        except OSError:
            return False

    def link(self, sha256: str, view: str | os.PathLike) -> str:
        """Make `view` a view of the blob (replacing whatever is there, atomically); returns the mode used.

        Raises:
            CacheError: the blob is not in the store.
        """
        view = Path(view)
        with self.hold(sha256) as blob:
            if not blob.is_file():
                raise CacheError(f"blob {sha256[:12]} is not in the store {self.folder}", path=str(blob))
            if self.refers(view, sha256):
                return "hardlink" if not view.is_symlink() else "symlink"
            view.parent.mkdir(parents=True, exist_ok=True)
            if single_file(view):
                return _make_view(blob, view, ("reflink", "copy"))
            mode = _make_view(blob, view)
            self._note_mode(mode)
            return mode

    def adopt(self, path: str | os.PathLike, sha256: str) -> str:
        """Put the verified file at `path` (whose sha256 is `sha256`) in the store; `path` becomes a view.

        When the store has those bytes already, `path` becomes a view of that blob and its own copy
        goes (dedup). A blob whose bytes are not what its name says (damaged on disk) is replaced
        by this file. Returns the link mode of the view.
        """
        path = Path(path)
        with self.hold(sha256) as blob:
            if single_file(path):
                return self._adopt_single(path, blob)
            if self.refers(path, sha256):
                return "hardlink" if not path.is_symlink() else "symlink"
            if blob.is_file():
                if _size(blob) == _size(path) and file_hash(blob) == sha256:
                    mode = _make_view(blob, path)
                    self._note_mode(mode)
                    return mode
                log.warning("blob %s in the store is damaged; replacing it with the verified copy", sha256[:12])
            mode = self._move_in(path, blob)
            self._note_mode(mode)
            return mode

    @staticmethod
    def _adopt_single(path: Path, blob: Path) -> str:
        """A file that stays a plain file: the blob shares its bytes by reflink, or there is no blob."""
        if blob.is_file():
            return "copy"  # the file has the blob's bytes already, as a file of its own
        tmp = blob.with_name(f".{blob.name}.{secrets.token_hex(4)}.tmp")
        try:
            _reflink(path, tmp)
        except OSError:
            tmp.unlink(missing_ok=True)
            return "copy"
        os.replace(tmp, blob)
        return "reflink"

    def _move_in(self, path: Path, blob: Path) -> str:
        """Make `path`'s file the blob, keeping `path` readable throughout (link first, then rename)."""
        tmp = blob.with_name(f".{blob.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.link(path, tmp)  # both names, one inode: no moment without the file
            os.replace(tmp, blob)
            return "hardlink"
        except OSError as error:
            tmp.unlink(missing_ok=True)
            if error.errno not in _UNSUPPORTED and error.errno != errno.EMLINK:
                raise
        # No hard link between the view's folder and the store: copy the bytes in, then view them.
        shutil.copyfile(path, tmp)
        os.replace(tmp, blob)
        return _make_view(blob, path)

    # ---- collecting --------------------------------------------------------------------------
    def references(self, blobs: list[Path] | None = None) -> set[str]:
        """The names of the blobs (of `blobs`, default all) some view refers to, or a link outside the cache."""
        return {name for name, views in self.views(blobs).items() if views}

    def views(self, blobs: list[Path] | None = None) -> dict[str, list[Path | None]]:
        """Blob name -> the views that refer to it (None stands for a hard link outside the cache's views).

        Hard links are matched by inode, symbolic links by target, reflinks and copies by their bytes
        (only files of a blob's size are hashed).
        """
        blobs = self.blobs() if blobs is None else blobs
        found: dict[str, list[Path | None]] = {}
        by_inode: dict[tuple[int, int], str] = {}
        by_size: dict[int, list[str]] = {}
        links: dict[str, int] = {}
        for blob in blobs:
            try:
                st = blob.stat()
            except FileNotFoundError:
                continue
            found[blob.name] = []
            links[blob.name] = st.st_nlink - 1
            by_inode[(st.st_dev, st.st_ino)] = blob.name
            by_size.setdefault(st.st_size, []).append(blob.name)
        store_real = Path(os.path.realpath(self.folder))
        # Where views are links, a plain file with a blob's bytes is somebody's own copy, not a view.
        compare_bytes = self.view_mode() not in ("hardlink", "symlink")
        for folder in view_folders(self.root):
            for view in _view_files(folder):
                try:
                    if view.is_symlink():
                        target = Path(os.path.realpath(view))
                        if target.parent == store_real and target.name in found:
                            found[target.name].append(view)
                        continue
                    st = view.stat()
                except OSError:
                    continue
                name = by_inode.get((st.st_dev, st.st_ino))
                if name is not None:
                    found[name].append(view)
                    links[name] -= 1
                    continue
                candidates = by_size.get(st.st_size) if compare_bytes or single_file(view) else None
                if candidates:  # a reflink or a copy: the same bytes refer to the blob
                    digest = file_hash(view)
                    if digest in candidates:
                        found[digest].append(view)
        for name, outside in links.items():
            found[name] += [None] * max(0, outside)  # hard links elsewhere: someone uses the bytes
        return found

    def plan_gc(self) -> GcPlan:
        """The blobs nothing refers to (`GcPlan`); those a running fetch holds are listed apart."""
        blobs = self.blobs()
        referenced = self.references(blobs)
        unreferenced = [b for b in blobs if b.name not in referenced]
        free, held = [], []
        for blob in unreferenced:
            (held if _taken(str(blob) + ".lock") else free).append(blob)
        return GcPlan(self, free, held)

    def collect(self, blobs: list[Path]) -> tuple[int, list[Path]]:
        """Delete those of `blobs` nobody holds and no view refers to (looked at again under their locks)."""
        from filelock import Timeout

        held, skipped = [], []
        try:
            for blob in blobs:
                lock = _lock_for(str(blob) + ".lock")
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    skipped.append(blob)
                    continue
                held.append((blob, lock))
            mine = [blob for blob, _ in held]
            # A view made before we took the locks counts; none can be made while we hold them.
            referenced = self.references(mine)
            freed = 0
            for blob in mine:
                if not blob.exists():
                    continue
                if blob.name in referenced:
                    skipped.append(blob)
                    continue
                size = _size(blob)
                blob.unlink()
                freed += size
        finally:
            for _, lock in reversed(held):
                lock.release()
        return freed, skipped

    def view_mode(self) -> str | None:
        """How this cache's views are made ("hardlink", "reflink", "symlink", "copy"), once decided."""
        try:
            mode = (self.root / "blobs" / "MODE").read_text().strip()
        except OSError:
            return None
        return mode if mode in LINK_MODES else None

    def _note_mode(self, mode: str) -> None:
        """Record how views are made here the first time one is (`views` trusts links then)."""
        if self.view_mode() is None:
            _write_marker(self.root / "blobs" / "MODE", mode)

    # ---- an old cache ------------------------------------------------------------------------
    @property
    def migrated(self) -> bool:
        return (self.root / "blobs" / "LAYOUT").is_file()

    def migrate(self) -> MigrationReport:
        """Move a cache of plain files (before the store) into it, in place; once, resumably.

        Every file directly in ``models/<name>/`` and ``onnx/<name>/`` becomes a blob and its path a
        view of it; identical files end as one blob. Safe to run while nothing else is writing the
        cache; a second process waits for the first and finds the work done.
        """
        report = MigrationReport()
        if self.migrated:
            return report
        from filelock import FileLock

        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / "blobs" / ".migrate.lock")):
            if self.migrated:
                return report
            for folder in view_folders(self.root):
                for path in _view_files(folder, nested=False):  # a cache before the store was flat
                    if path.is_symlink():
                        continue
                    digest = file_hash(path)
                    size = _size(path)
                    before = self.has(digest)
                    self.adopt(path, digest)
                    report.files += 1
                    report.bytes += size
                    report.saved += size if before else 0
            _write_marker(self.root / "blobs" / "LAYOUT")
        if report.files:
            log.warning("moved %d cached files (%d bytes) into the content-addressed store %s (once); "
                        "%d bytes were duplicates", report.files, report.bytes, self.folder, report.saved)
        return report

    def ensure(self) -> None:
        """Make the store usable: created for a new cache, migrated for an old one."""
        if not self.migrated:
            self.migrate()


def _write_marker(path: Path, text: str = LAYOUT_VERSION) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def _lock_for(path: str):
    from filelock import FileLock

    with _HELD_LOCK:
        lock = _HELD.get(path)
        if lock is None:
            lock = _HELD[path] = FileLock(path, thread_local=False)
        return lock


def _taken(path: str) -> bool:
    """Whether another process holds the lock file at `path` right now."""
    from filelock import FileLock, Timeout

    if not os.path.exists(path):
        return False
    probe = FileLock(path, thread_local=False)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    probe.release()
    return False


def _make_view(blob: Path, view: Path, allowed: tuple[str, ...] = LINK_MODES) -> str:
    """Replace `view` with a view of `blob` (built beside it, renamed into place); the mode used."""
    key = (_device(blob.parent), _device(view.parent))
    with _MODES_LOCK:
        decided = _MODES.get(key)
    modes = LINK_MODES[LINK_MODES.index(decided):] if decided else LINK_MODES
    for mode in (m for m in modes if m in allowed):
        tmp = view.with_name(f".{view.name}.{secrets.token_hex(4)}.tmp")
        try:
            _MAKERS[mode](blob, tmp)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            if error.errno == errno.EMLINK:
                continue  # this blob has too many links; the next mode for this file only
            if error.errno in _UNSUPPORTED or mode == "reflink":
                with _MODES_LOCK:  # this file system pair cannot: never try that mode here again
                    if _MODES.get(key) in (None, mode):
                        _MODES[key] = LINK_MODES[LINK_MODES.index(mode) + 1]
                continue
            raise
        try:
            os.replace(tmp, view)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        with _MODES_LOCK:
            _MODES.setdefault(key, mode)
        return mode
    raise CacheError(f"cannot make {view} a view of {blob}")  # copy never fails silently


def _device(path: Path) -> int:
    try:
        return path.stat().st_dev
    except OSError:
        return -1


def _hardlink(blob: Path, tmp: Path) -> None:
    os.link(blob, tmp)


def _reflink(blob: Path, tmp: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no FICLONE
        raise OSError(errno.ENOTSUP, "reflinks are not available here") from None

    with open(blob, "rb") as source, open(tmp, "wb") as target:
        fcntl.ioctl(target.fileno(), _FICLONE, source.fileno())


def _symlink(blob: Path, tmp: Path) -> None:
    # Relative, so a cache folder moved as a whole keeps its views.
    os.symlink(os.path.relpath(blob, tmp.parent), tmp)


def _copy(blob: Path, tmp: Path) -> None:
    shutil.copyfile(blob, tmp)


_MAKERS = {"hardlink": _hardlink, "reflink": _reflink, "symlink": _symlink, "copy": _copy}

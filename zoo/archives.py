"""Safe unpacking of .tar, .tar.gz/.tgz and .zip archives into a folder (nothing lands outside it)."""
from __future__ import annotations

import contextlib
import errno
import logging
import lzma
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from zoo.units import human_size
from zoo.errors import ArchiveLimitError, DiskFullError, FetchError, UnsafeArchiveError

log = logging.getLogger("zoo.download")

KINDS = ("tar", "zip")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")

# Published model archives are at most a few GiB (the largest TF detection tarballs ~1.5 GiB,
# SavedModels of large encoders ~5 GiB); 32 GiB leaves room for those while a bomb stops
# before it fills a disk. Weights barely compress (float32: 1.1x, text and protobuf: ~10x),
# deflate tops out at ~1030x, so a ratio over 200 is a bomb, not a model; tiny archives
# are exempt (below 1 MiB unpacked nothing can fill a disk). Model archives hold tens to
# thousands of files; 100k members is far beyond them and keeps inode use bounded.
DEFAULT_MAX_BYTES = 32 << 30
DEFAULT_MAX_RATIO = 200.0
DEFAULT_MAX_MEMBERS = 100_000
_RATIO_FLOOR = 1 << 20
_MAX_LINK_TEXT = 4096  # PATH_MAX: a zip "symlink" member bigger than this is not a link
_MAX_LINK_HOPS = 40  # what Linux allows before ELOOP


def parse_size(text: str | int, what: str = "size") -> int:
    """Bytes from '123', '500M', '32G', '1.5GiB' (binary multiples), for limits read from users."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.I)
    if not m:
        raise FetchError(
            f"{what} {text!r} is not a size; give bytes or a number with K, M, G or T (e.g. 64G)"
        )
    power = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[m.group(2).lower()]
    return int(float(m.group(1)) * 1024**power)


@dataclass(frozen=True)
class UnpackLimits:
    """How big an archive may unpack: total bytes, bytes per archive byte, members (bomb guard)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_ratio: float = DEFAULT_MAX_RATIO
    max_members: int = DEFAULT_MAX_MEMBERS

    @classmethod
    def from_env(cls, max_bytes: int | str | None = None) -> UnpackLimits:
        """The defaults, raised or lowered by $ZOO_MAX_UNPACK_BYTES/_RATIO/_MEMBERS or `max_bytes`."""
        env = os.environ
        size = max_bytes if max_bytes is not None else env.get("ZOO_MAX_UNPACK_BYTES") or DEFAULT_MAX_BYTES
        try:
            ratio = float(env.get("ZOO_MAX_UNPACK_RATIO") or DEFAULT_MAX_RATIO)
            members = int(env.get("ZOO_MAX_UNPACK_MEMBERS") or DEFAULT_MAX_MEMBERS)
        except ValueError:
            raise FetchError(
                "ZOO_MAX_UNPACK_RATIO must be a number and ZOO_MAX_UNPACK_MEMBERS a whole number "
                f"(got {env.get('ZOO_MAX_UNPACK_RATIO')!r}, {env.get('ZOO_MAX_UNPACK_MEMBERS')!r})"
            ) from None
        return cls(parse_size(size, "ZOO_MAX_UNPACK_BYTES / --max-unpack-size"), ratio, members)


def archive_kind(filename: str | os.PathLike, extract: str | None = None) -> str:
    """"tar" or "zip" for an archive, from the catalog's `extract` value or the file name."""
    if extract in KINDS:
        return extract
    name = os.fspath(filename).lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    raise UnsafeArchiveError(
        f"cannot tell how to unpack {os.fspath(filename)!r}: extract={extract!r}; "
        f"valid kinds: {', '.join(KINDS)} (or a name ending in .zip, .tar, .tar.gz, .tgz)"
    )


def unpacked_name(filename: str) -> str:
    """The folder an archive unpacks to: its name without the archive suffix."""
    lower = filename.lower()
    for suffix in (".zip", *_TAR_SUFFIXES):
        if lower.endswith(suffix):
            return filename[: -len(suffix)] or filename
    return filename + ".d"


def safe_extract(
    archive: str | os.PathLike,
    target_dir: str | os.PathLike,
    kind: str | None = None,
    limits: UnpackLimits | None = None,
) -> Path:
    """Unpack `archive` into `target_dir` and return it, refusing any unsafe member.

    Every member is checked before anything is written: no absolute names, no `..`, no
    member written through a symlink, no device files or fifos, and every symlink is
    followed through the archive's other links to where it really lands, which must be
    inside (a chain of links each harmless alone is refused). Sizes from the headers are
    held to `limits` (default `UnpackLimits.from_env()`) before writing and the bytes
    actually written while writing. After unpacking, every link is resolved again on disk.
    Members go to `.<target>.<pid>.unpacking` beside the target, renamed into place only
    when complete, under a lock; folders left by a killed unpack are removed first.
    """
    archive, target = Path(archive), Path(target_dir)
    kind = archive_kind(archive.name, kind)
    limits = limits or UnpackLimits.from_env()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _unpack_lock(target):
        _remove_stale(target)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.unpacking")
        tmp.mkdir()
        try:
            if kind == "tar":
                _extract_tar(archive, tmp, limits)
            else:
                _extract_zip(archive, tmp, limits)
            _check_links_on_disk(tmp, archive)
            _replace_dir(tmp, target)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(
                    f"disk full while unpacking {archive.name} into {target}: removed the partial "
                    "unpack; free some space or point ZOO_CACHE / --cache-dir at a bigger disk"
                ) from None
            where = f" ({exc.filename})" if exc.filename else ""
            raise UnsafeArchiveError(
                f"cannot unpack {archive.name} into {target}: {exc.strerror or exc}{where}"
            ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def remove_stale_unpacks(target_dir: str | os.PathLike) -> None:
    """Remove what a killed unpack of `target_dir` left beside it (under the unpack lock)."""
    target = Path(target_dir)
    if target.parent.is_dir():
        with _unpack_lock(target):
            _remove_stale(target)


@contextlib.contextmanager
def _unpack_lock(target: Path) -> Iterator[None]:
    """One process at a time unpacks into `target` (and cleans beside it)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(target.with_name(f".{target.name}.unpack.lock")))
    try:
        lock.acquire(timeout=0.2)
    except Timeout:
        log.warning("waiting for another process that is unpacking into %s", target)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _remove_stale(target: Path) -> None:
    """Delete unpack folders of dead processes: with the lock held, no live one can exist."""
    stale = re.compile(re.escape(f".{target.name}.") + r"(\d+\.unpacking|old-\d+)")
    for leftover in target.parent.iterdir():
        if stale.fullmatch(leftover.name):
            log.info("removing %s, left by an unpack that was killed", leftover)
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`, replacing an older unpack only once the new one is complete."""
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _refuse(archive: Path, what: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{archive.name}: {what}; refusing to unpack the archive")


def _is_absolute(path: str) -> bool:
    return path.startswith("/") or (len(path) > 1 and path[1] == ":")


def _member_parts(name: str, archive: Path) -> tuple[str, ...]:
    """The path components of a member name, refusing absolute names and `..`."""
    unified = name.replace("\\", "/")
    if _is_absolute(unified):
        raise _refuse(archive, f"member {name!r} has an absolute path")
    parts = tuple(p for p in PurePosixPath(unified).parts if p not in ("", "."))
    if ".." in parts:
        raise _refuse(archive, f"member {name!r} climbs out with '..'")
    return parts


class _Plan:
    """The folder an archive will make, known before anything is written.

    Links are judged against the whole archive, not one at a time: a symlink's target is
    followed through every other symlink member to where it really lands (a link checked
    before the link it passes through exists would otherwise look harmless).
    """

    def __init__(self, archive: Path, limits: UnpackLimits):
        self.archive, self.limits = archive, limits
        self.packed = max(archive.stat().st_size, 1)
        self.kinds: dict[tuple[str, ...], str] = {}  # "file" | "dir" | "sym" | "hard"
        self.symlinks: dict[tuple[str, ...], str] = {}
        # symlink -> (where it really points, how many links that took)
        self.landed: dict[tuple[str, ...], tuple[tuple[str, ...], int]] = {}
        self.hardlinks: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.order: list[tuple[str, ...]] = []
        self.members = 0
        self.declared = 0  # bytes the headers announce

    def add(self, name: str, kind: str, size: int = 0, link: str | None = None) -> tuple[str, ...]:
        """Record one member, refusing it (or the archive's size) as soon as it is seen."""
        parts = _member_parts(name, self.archive)
        self.members += 1
        if self.members > self.limits.max_members:
            raise self._over(f"has more than {self.limits.max_members} members", "ZOO_MAX_UNPACK_MEMBERS")
        if kind == "file":
            self.declared += max(size, 0)
            self.check_size(self.declared, "from its headers")
        if not parts:
            return parts
        before = self.kinds.get(parts)
        if before is not None and (before in ("sym", "hard") or kind in ("sym", "hard")):
            raise _refuse(self.archive, f"member {name!r} appears twice, once as a link")
        if kind == "sym":
            if not link or _is_absolute(link.replace("\\", "/")):
                raise _refuse(self.archive, f"link {name!r} points to absolute path {link!r}")
            if "\0" in link:
                raise _refuse(self.archive, f"link {name!r} has a NUL byte in its target {link!r}")
            self.symlinks[parts] = link
        elif kind == "hard":
            # A hardlink names another member by its path from the archive root.
            text = (link or "").replace("\\", "/")
            if _is_absolute(text):
                raise _refuse(self.archive, f"hardlink {name!r} points to absolute path {link!r}")
            target: list[str] = []
            for piece in (p for p in text.split("/") if p not in ("", ".")):
                if piece != "..":
                    target.append(piece)
                elif not target:
                    raise _refuse(self.archive, f"hardlink {name!r} points outside the archive ({link!r})")
                else:
                    target.pop()
            if self.kinds.get(tuple(target)) != "file":
                raise _refuse(
                    self.archive,
                    f"hardlink {name!r} points to {link!r}, which is not a file earlier in the archive",
                )
            self.hardlinks[parts] = tuple(target)
        self.kinds[parts] = kind
        self.order.append(parts)
        return parts

    def check_size(self, nbytes: int, how: str) -> None:
        """Refuse an archive that unpacks to more than the limits (from headers or bytes written)."""
        if nbytes > self.limits.max_bytes:
            raise self._over(
                f"would unpack to {human_size(nbytes)} or more ({how}), over the limit of "
                f"{human_size(self.limits.max_bytes)}",
                "ZOO_MAX_UNPACK_BYTES or `zoo fetch --max-unpack-size`",
            )
        if nbytes > _RATIO_FLOOR and nbytes > self.limits.max_ratio * self.packed:
            raise self._over(
                f"would unpack to {human_size(nbytes)} or more from {human_size(self.packed)} ({how}), over "
                f"{self.limits.max_ratio:g}x compression: an archive bomb?",
                "ZOO_MAX_UNPACK_RATIO",
            )

    def _over(self, what: str, knob: str) -> ArchiveLimitError:
        return ArchiveLimitError(
            f"{self.archive.name} {what}; refusing to unpack it. If you trust this archive, "
            f"raise the limit with {knob}"
        )

    def check(self) -> None:
        """Refuse writes through links and links that land outside, once every member is known."""
        for parts in self.order:
            for i in range(1, len(parts)):
                if self.kinds.get(parts[:i]) == "sym":
                    raise _refuse(
                        self.archive,
                        f"member {'/'.join(parts)!r} would be written through link {'/'.join(parts[:i])!r}",
                    )
        for link in self.symlinks:
            self._landing(link)

    def _landing(self, link: tuple[str, ...], stack: tuple[tuple[str, ...], ...] = ()) -> tuple[tuple[str, ...], int]:
        """Where symlink `link` lands after following every link on the way, and how many it
        followed; refused if outside, in a loop, or past Linux's 40 links (ELOOP).

        Each link's landing is worked out once and reused, so resolving every link of an
        archive costs the length of all targets, however the links chain.
        """
        if link in self.landed:
            return self.landed[link]
        target = self.symlinks[link]
        if len(stack) > _MAX_LINK_HOPS:  # the link that started this follows more than that
            raise self._loop(stack[0])
        path, via, hops = list(link[:-1]), None, 0
        for piece in (p for p in target.replace("\\", "/").split("/") if p not in ("", ".")):
            if piece != "..":
                path.append(piece)
                if tuple(path) in self.symlinks:
                    via = "/".join(path)
                    if tuple(path) in stack or tuple(path) == link:
                        hops = _MAX_LINK_HOPS + 1
                    else:
                        landing, more = self._landing(tuple(path), (*stack, link))
                        path, hops = list(landing), hops + 1 + more
                    if hops > _MAX_LINK_HOPS:
                        raise self._loop(link)
            elif path:
                path.pop()
            else:
                through = f" through link {via!r}" if via else ""
                raise _refuse(
                    self.archive, f"link {'/'.join(link)!r} -> {target!r} points outside the archive{through}"
                )
        self.landed[link] = (tuple(path), hops)
        return self.landed[link]


    def _loop(self, link: tuple[str, ...]) -> UnsafeArchiveError:
        return _refuse(
            self.archive,
            f"link {'/'.join(link)!r} -> {self.symlinks[link]!r} is a link loop (or a chain of over "
            f"{_MAX_LINK_HOPS} links)",
        )


def _copy(src: BinaryIO, out: Path, plan: _Plan, written: list[int]) -> None:
    """Copy one member's bytes, counting them: headers can understate what a stream holds."""
    with open(out, "wb") as dst:
        while chunk := src.read(1 << 20):
            written[0] += len(chunk)
            plan.check_size(written[0], "counted while writing")
            dst.write(chunk)


_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError)


class _BoundedStream:
    """A tar's (decompressed) stream that cannot be read past what the limits allow.

    tarfile reads a pax or GNU long-name header whole into memory, whatever size it claims,
    and such headers count toward no member: this caps each read and the stream's length.
    """

    _MAX_READ = 16 << 20  # tarfile reads headers whole; data comes in reads of 1 MiB or less
    _SLACK = 64 << 20

    def __init__(self, raw: BinaryIO, plan: _Plan):
        self._raw, self._plan = raw, plan
        # Member bytes plus, per member, a header, padding and a generous pax record.
        self._cap = plan.limits.max_bytes + 4096 * plan.limits.max_members + self._SLACK

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self._MAX_READ:
            raise ArchiveLimitError(
                f"{self._plan.archive.name} has a {human_size(n or 0)} header (pax or GNU long name; real ones "
                f"are a few hundred bytes), over {human_size(self._MAX_READ)}; refusing to unpack it"
            )
        if self._raw.tell() + n > self._cap:
            raise self._plan._over(f"has a tar stream longer than {human_size(self._cap)}", "ZOO_MAX_UNPACK_BYTES")
        return self._raw.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def _decompressed(archive: Path) -> BinaryIO:
    """The tar stream inside a plain, gzip, bzip2 or xz file (what tarfile's "r:*" would read)."""
    import bz2
    import gzip

    with open(archive, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(archive, "rb")
    if magic[:3] == b"BZh":
        return bz2.BZ2File(archive, "rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(archive, "rb")
    return open(archive, "rb")


def _extract_tar(archive: Path, dest: Path, limits: UnpackLimits) -> None:
    plan = _Plan(archive, limits)
    with _decompressed(archive) as raw:
        try:
            tar = tarfile.open(fileobj=_BoundedStream(raw, plan), mode="r:")
        except _CORRUPT + (OSError,) as exc:
            raise UnsafeArchiveError(f"{archive.name} is not a readable tar archive: {exc}") from None
        with tar:
            _unpack_tar(tar, archive, dest, plan)


def _unpack_tar(tar: tarfile.TarFile, archive: Path, dest: Path, plan: _Plan) -> None:
    """Check every header against the plan and the limits, then write the members."""
    members: list[tuple[tarfile.TarInfo, tuple[str, ...]]] = []
    try:
        # Header by header, so a bomb is refused at the first header past the limits,
        # before the rest of its stream is decompressed.
        for m in tar:
            if m.isdev() or m.isfifo() or not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                kind = "device file" if m.isdev() else "fifo" if m.isfifo() else "special file"
                raise _refuse(archive, f"member {m.name!r} is a {kind}")
            kind = "sym" if m.issym() else "hard" if m.islnk() else "dir" if m.isdir() else "file"
            members.append((m, plan.add(m.name, kind, m.size, m.linkname or None)))
    except _CORRUPT + (OSError,) as exc:
        raise UnsafeArchiveError(f"{archive.name} is truncated or corrupt: {exc}") from None
    plan.check()
    written = [0]
    try:
        for m, parts in members:
            if not parts:
                continue
            # Python's own "data" filter (3.11.4+) as a second line of defence, not the only
            # one: onnx.hub relied on tarfile alone (CVE-2024-5187).
            if hasattr(tarfile, "data_filter"):
                try:
                    tarfile.data_filter(m, str(dest))
                except tarfile.FilterError as exc:
                    raise _refuse(archive, str(exc)) from None
            _write_tar_member(tar, m, parts, dest, plan, written)
    except _CORRUPT as exc:
        raise UnsafeArchiveError(f"{archive.name} is truncated or corrupt: {exc}") from None


def _write_tar_member(tar: tarfile.TarFile, m: tarfile.TarInfo, parts, dest: Path, plan: _Plan, written) -> None:
    out = dest.joinpath(*parts)
    if m.isdir():
        out.mkdir(parents=True, exist_ok=True)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir() and not out.is_symlink():
        raise _refuse(plan.archive, f"member {m.name!r} replaces a folder of the same name")
    out.unlink(missing_ok=True)  # a later copy of a member wins, as with tar itself
    if m.issym():
        os.symlink(m.linkname, out)
    elif m.islnk():
        os.link(dest.joinpath(*plan.hardlinks[parts]), out)
    else:
        src = tar.extractfile(m)
        with src:
            _copy(src, out, plan, written)
        os.utime(out, (m.mtime, m.mtime))


def _zip_kind(info: zipfile.ZipInfo, archive: Path) -> str:
    """file, dir or sym from a zip member's Unix mode; a mode without a file type is a file."""
    mode = info.external_attr >> 16
    if info.is_dir():
        return "dir"
    if info.create_system != 3 or not mode:  # no Unix attributes
        return "file"
    fmt = stat.S_IFMT(mode)
    # Python's ZipFile.writestr(name, data) stores only permission bits (no type): a file.
    if fmt in (0, stat.S_IFREG):
        return "file"
    if fmt == stat.S_IFDIR:
        return "dir"
    if fmt == stat.S_IFLNK:
        return "sym"
    kind = {stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}.get(fmt, "device file")
    raise _refuse(archive, f"member {info.filename!r} is a {kind}")


def _extract_zip(archive: Path, dest: Path, limits: UnpackLimits) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeArchiveError(f"{archive.name} is not a readable zip archive: {exc}") from None
    plan = _Plan(archive, limits)
    with zf:
        members: list[tuple[zipfile.ZipInfo, tuple[str, ...], str]] = []
        try:
            for info in zf.infolist():
                kind = _zip_kind(info, archive)
                if info.flag_bits & 0x1:
                    raise _refuse(archive, f"member {info.filename!r} is encrypted")
                link = None
                if kind == "sym":
                    if info.file_size > _MAX_LINK_TEXT:
                        raise _refuse(archive, f"link {info.filename!r} has a {info.file_size}-byte target")
                    link = zf.read(info).decode("utf-8", "replace")
                members.append((info, plan.add(info.filename, kind, info.file_size, link), kind))
            plan.check()
            written = [0]
            for info, parts, kind in members:
                if not parts or kind == "sym":
                    continue
                out = dest.joinpath(*parts)
                if kind == "dir":
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src:
                    _copy(src, out, plan, written)
        except (_CORRUPT + (NotImplementedError,)) as exc:
            raise UnsafeArchiveError(f"{archive.name} is truncated or corrupt: {exc}") from None
        # zipfile itself would write a link's target as a small text file; make real links,
        # last, so no member is ever written through one.
        for info, parts, kind in members:
            if kind != "sym":
                continue
            out = dest.joinpath(*parts)
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(plan.symlinks[parts], out)
            except OSError as exc:  # e.g. a file and a link of the same name
                raise _refuse(archive, f"cannot create link {'/'.join(parts)!r}: {exc.strerror}") from None


def _check_links_on_disk(root: Path, archive: Path) -> None:
    """Resolve every link the unpack made on the real files: each must land inside `root`."""
    real_root = os.path.realpath(root)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                real = os.path.realpath(path)
                if real != real_root and not real.startswith(real_root + os.sep):
                    rel = os.path.relpath(path, root)
                    raise _refuse(archive, f"link {rel!r} resolves outside the archive ({os.readlink(path)!r})")


__all__ = [
    "DEFAULT_MAX_BYTES", "DEFAULT_MAX_MEMBERS", "DEFAULT_MAX_RATIO", "KINDS", "UnpackLimits", "archive_kind",
    "parse_size", "remove_stale_unpacks", "safe_extract", "unpacked_name",
]

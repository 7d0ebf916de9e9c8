"""Safe unpacking of .tar, .tar.gz/.tgz and .zip archives into a folder (nothing lands outside it)."""
from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from zoo.errors import UnsafeArchiveError

KINDS = ("tar", "zip")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


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
    archive: str | os.PathLike, target_dir: str | os.PathLike, kind: str | None = None
) -> Path:
    """Unpack `archive` into `target_dir` and return it, refusing any unsafe member.

    Every member is checked before anything is written: no absolute names, no `..`, no
    member written through a symlink, symlinks and hardlinks must point inside, no device
    files or fifos. Members go to a temporary folder beside the target, which is then
    renamed into place, so a refused or interrupted unpack leaves the target untouched.
    Python's tarfile ``filter="data"`` is applied as well, as a second line of defence,
    not as the only one (onnx.hub relied on tarfile alone: CVE-2024-5187).
    """
    archive, target = Path(archive), Path(target_dir)
    kind = archive_kind(archive.name, kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".unpacking", dir=target.parent))
    try:
        if kind == "tar":
            _extract_tar(archive, tmp)
        else:
            _extract_zip(archive, tmp)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


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


def _member_parts(name: str, archive: Path) -> tuple[str, ...]:
    """The path components of a member name, refusing absolute names and `..`."""
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise UnsafeArchiveError(
            f"{archive.name}: member {name!r} has an absolute path; refusing to unpack the archive"
        )
    parts = tuple(p for p in PurePosixPath(unified).parts if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchiveError(
            f"{archive.name}: member {name!r} climbs out with '..'; refusing to unpack the archive"
        )
    return parts


def _link_target(
    link: tuple[str, ...], target: str, links: set[tuple[str, ...]], archive: Path, relative_to_dir: bool
) -> tuple[str, ...]:
    """Resolve a link target textually and refuse it if it leaves the archive root.

    Walking through another symlink member would make the textual answer wrong (the real
    path follows that link), so a target passing *through* a symlink is refused too.
    """
    unified = target.replace("\\", "/")
    if not unified or unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise UnsafeArchiveError(
            f"{archive.name}: link {'/'.join(link)!r} points to absolute path {target!r}; "
            "refusing to unpack the archive"
        )
    resolved = list(link[:-1]) if relative_to_dir else []
    pieces = [p for p in unified.split("/") if p not in ("", ".")]
    for i, piece in enumerate(pieces):
        if piece == "..":
            if not resolved:
                raise UnsafeArchiveError(
                    f"{archive.name}: link {'/'.join(link)!r} points outside the archive "
                    f"({target!r}); refusing to unpack the archive"
                )
            resolved.pop()
            continue
        resolved.append(piece)
        if tuple(resolved) in links and i < len(pieces) - 1:
            raise UnsafeArchiveError(
                f"{archive.name}: link {'/'.join(link)!r} -> {target!r} passes through another "
                "link; refusing to unpack the archive"
            )
    return tuple(resolved)


def _check_no_link_prefix(parts: tuple[str, ...], links: set[tuple[str, ...]], name: str, archive: Path) -> None:
    for i in range(1, len(parts)):
        if parts[:i] in links:
            raise UnsafeArchiveError(
                f"{archive.name}: member {name!r} would be written through link "
                f"{'/'.join(parts[:i])!r}; refusing to unpack the archive"
            )


def _extract_tar(archive: Path, dest: Path) -> None:
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError) as exc:
        raise UnsafeArchiveError(f"{archive.name} is not a readable tar archive: {exc}") from None
    with tar:
        members = tar.getmembers()
        links: set[tuple[str, ...]] = set()
        files: set[tuple[str, ...]] = set()
        for m in members:
            parts = _member_parts(m.name, archive)
            _check_no_link_prefix(parts, links, m.name, archive)
            if m.isdev() or m.isfifo() or not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                kind = "device file" if m.isdev() else "fifo" if m.isfifo() else "special file"
                raise UnsafeArchiveError(
                    f"{archive.name}: member {m.name!r} is a {kind}; refusing to unpack the archive"
                )
            if m.issym():
                _link_target(parts, m.linkname, links, archive, relative_to_dir=True)
                links.add(parts)
            elif m.islnk():
                # A hardlink names another member by its path from the archive root.
                to = _link_target(parts, m.linkname, links, archive, relative_to_dir=False)
                if to not in files:
                    raise UnsafeArchiveError(
                        f"{archive.name}: hardlink {m.name!r} points to {m.linkname!r}, which is not "
                        "a file earlier in the archive; refusing to unpack the archive"
                    )
                files.add(parts)
            elif m.isfile():
                files.add(parts)
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        try:
            tar.extractall(dest, members=members, **kwargs)
        except tarfile.FilterError as exc:  # our checks passed but tarfile's filter did not
            raise UnsafeArchiveError(f"{archive.name}: {exc}; refusing to unpack the archive") from None
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UnsafeArchiveError(f"{archive.name} is truncated or corrupt: {exc}") from None


def _extract_zip(archive: Path, dest: Path) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeArchiveError(f"{archive.name} is not a readable zip archive: {exc}") from None
    with zf:
        infos = zf.infolist()
        links: set[tuple[str, ...]] = set()
        symlinks: dict[tuple[str, ...], str] = {}
        for info in infos:
            parts = _member_parts(info.filename, archive)
            _check_no_link_prefix(parts, links, info.filename, archive)
            mode = info.external_attr >> 16
            if info.create_system == 3 and mode:  # unix attributes are present
                if stat.S_ISLNK(mode):
                    target = zf.read(info).decode("utf-8", "replace")
                    _link_target(parts, target, links, archive, relative_to_dir=True)
                    links.add(parts)
                    symlinks[parts] = target
                    continue
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    raise UnsafeArchiveError(
                        f"{archive.name}: member {info.filename!r} is a device file or fifo; "
                        "refusing to unpack the archive"
                    )
        try:
            for info in infos:
                parts = _member_parts(info.filename, archive)
                if parts in symlinks or not parts:
                    continue
                out = dest.joinpath(*parts)
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise UnsafeArchiveError(f"{archive.name} is truncated or corrupt: {exc}") from None
        # zipfile itself would write a link's target as a small text file; make real links.
        for parts, target in symlinks.items():
            out = dest.joinpath(*parts)
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(target, out)
            except OSError as exc:  # e.g. a file and a link of the same name
                raise UnsafeArchiveError(
                    f"{archive.name}: cannot create link {'/'.join(parts)!r}: {exc.strerror}; "
                    "refusing to unpack the archive"
                ) from None


__all__ = ["KINDS", "archive_kind", "safe_extract", "unpacked_name"]

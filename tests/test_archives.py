"""safe_extract: good archives unpack; traversal, links out, devices and fifos are refused, nothing written."""
from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from zoo.archives import archive_kind, safe_extract, unpacked_name
from zoo.errors import UnsafeArchiveError


def make_tar(path: Path, members: list[tuple], mode: str = "w:gz") -> Path:
    """members: (name, kind, data_or_linkname) with kind file|dir|sym|hard|chr|fifo."""
    with tarfile.open(path, mode) as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                         "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("sym", "hard"):
                info.linkname = value
            if kind == "dir":
                info.mode = 0o755
            tar.addfile(info)
    return path


def make_zip(path: Path, members: list[tuple]) -> Path:
    """members: (name, data) or (name, link_target, "sym") or (name, b"", "chr")."""
    with zipfile.ZipFile(path, "w") as zf:
        for member in members:
            name, data = member[0], member[1]
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            kind = member[2] if len(member) > 2 else "file"
            mode = {"file": stat.S_IFREG | 0o644, "sym": stat.S_IFLNK | 0o777, "chr": stat.S_IFCHR | 0o644}[kind]
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def assert_nothing_written(tmp_path: Path, target: Path, before: set[str]) -> None:
    assert not target.exists()
    after = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    assert after == before, f"unexpected files: {after - before}"


@pytest.fixture
def box(tmp_path):
    """An archive folder inside tmp_path, so a member escaping it would land in tmp_path."""
    folder = tmp_path / "box" / "inner"
    folder.mkdir(parents=True)
    return folder


def snapshot(tmp_path):
    return {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}


def test_good_tar_unpacks_with_inside_links(box):
    archive = make_tar(box / "m.tar.gz", [
        ("m", "dir", None), ("m/model.tflite", "file", b"TFL3 weights"), ("m/labels.txt", "file", b"cat\ndog\n"),
        ("m/latest.tflite", "sym", "model.tflite"), ("m/copy.tflite", "hard", "m/model.tflite"),
    ])
    target = safe_extract(archive, box / "m.unpacked")
    assert target == box / "m.unpacked"
    assert (target / "m" / "model.tflite").read_bytes() == b"TFL3 weights"
    assert (target / "m" / "latest.tflite").is_symlink()
    assert (target / "m" / "latest.tflite").read_bytes() == b"TFL3 weights"
    assert (target / "m" / "copy.tflite").read_bytes() == b"TFL3 weights"
    assert [p.name for p in box.iterdir() if p.name.startswith(".")] == []  # no temp folder left


@pytest.mark.parametrize("mode, name", [("w", "plain.tar"), ("w:gz", "z.tgz")])
def test_plain_tar_and_tgz(box, mode, name):
    archive = make_tar(box / name, [("a.txt", "file", b"A")], mode=mode)
    assert (safe_extract(archive, box / "out") / "a.txt").read_bytes() == b"A"


def test_reunpacking_replaces_the_old_folder(box):
    target = box / "out"
    safe_extract(make_tar(box / "v1.tar", [("old.txt", "file", b"1")], mode="w"), target)
    safe_extract(make_tar(box / "v2.tar", [("new.txt", "file", b"2")], mode="w"), target)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


EVIL_TARS = {
    "dotdot": ([("../escaped.txt", "file", b"x")], "'..'"),
    "deep_dotdot": ([("ok/../../escaped.txt", "file", b"x")], "'..'"),
    "absolute": ([("/tmp/zoo-escaped-abs.txt", "file", b"x")], "absolute"),
    "symlink_out": ([("link", "sym", "../../escaped")], "outside"),
    "symlink_abs": ([("link", "sym", "/etc/passwd")], "absolute"),
    "write_through_link": ([("d", "dir", None), ("link", "sym", "d"), ("link/x.txt", "file", b"x")], "through link"),
    "link_through_link": ([("x", "dir", None), ("x/b", "sym", ".."), ("c", "sym", "x/b/../../escaped")], "link"),
    "hardlink_out": ([("h", "hard", "../../escaped")], "outside"),
    "hardlink_abs": ([("h", "hard", "/etc/passwd")], "absolute"),
    "char_device": ([("dev", "chr", None)], "device"),
    "fifo": ([("pipe", "fifo", None)], "fifo"),
}


@pytest.mark.parametrize("case", sorted(EVIL_TARS))
def test_unsafe_tar_is_refused_and_nothing_is_written(tmp_path, box, case):
    members, words = EVIL_TARS[case]
    archive = make_tar(box / f"{case}.tar.gz", [("fine.txt", "file", b"ok"), *members])
    target = box / "out"
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, target)
    assert words in str(info.value) and f"{case}.tar.gz" in str(info.value)
    assert_nothing_written(tmp_path, target, before)
    assert not Path("/tmp/zoo-escaped-abs.txt").exists()


def test_refused_archive_leaves_an_existing_target_alone(box):
    target = safe_extract(make_tar(box / "good.tar", [("a.txt", "file", b"A")], mode="w"), box / "out")
    with pytest.raises(UnsafeArchiveError):
        safe_extract(make_tar(box / "bad.tar", [("../x", "file", b"x")], mode="w"), target)
    assert (target / "a.txt").read_bytes() == b"A"


def test_good_zip_unpacks_with_inside_symlink(box):
    archive = make_zip(box / "m.zip", [("m/model.onnx", b"onnx bytes"), ("m/alias.onnx", "model.onnx", "sym")])
    target = safe_extract(archive, box / "m")
    assert (target / "m" / "model.onnx").read_bytes() == b"onnx bytes"
    assert (target / "m" / "alias.onnx").is_symlink()
    assert (target / "m" / "alias.onnx").read_bytes() == b"onnx bytes"


EVIL_ZIPS = {
    "dotdot": ([("../escaped.txt", b"x")], "'..'"),
    "backslash": ([("a\\..\\..\\escaped.txt", b"x")], "'..'"),
    "absolute": ([("/tmp/zoo-escaped-abs.txt", b"x")], "absolute"),
    "drive": ([("C:/escaped.txt", b"x")], "absolute"),
    "symlink_out": ([("link", "../../escaped", "sym")], "outside"),
    "device": ([("dev", b"", "chr")], "device"),
}


@pytest.mark.parametrize("case", sorted(EVIL_ZIPS))
def test_unsafe_zip_is_refused_and_nothing_is_written(tmp_path, box, case):
    members, words = EVIL_ZIPS[case]
    archive = make_zip(box / f"{case}.zip", [("fine.txt", b"ok"), *members])
    target = box / "out"
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, target)
    assert words in str(info.value)
    assert_nothing_written(tmp_path, target, before)


def test_corrupt_archives_give_a_clear_error(box):
    bad = box / "bad.tar.gz"
    bad.write_bytes(b"this is not gzip")
    with pytest.raises(UnsafeArchiveError, match="not a readable tar"):
        safe_extract(bad, box / "out")
    badzip = box / "bad.zip"
    badzip.write_bytes(b"PK not really")
    with pytest.raises(UnsafeArchiveError, match="not a readable zip"):
        safe_extract(badzip, box / "out")
    assert not (box / "out").exists()


def test_archive_kind_and_unpacked_name():
    assert archive_kind("a.TGZ") == "tar" and archive_kind("x.zip") == "zip"
    assert archive_kind("blob", "zip") == "zip"
    with pytest.raises(UnsafeArchiveError, match="valid kinds: tar, zip"):
        archive_kind("model.rar")
    assert unpacked_name("mobilenet_v1.tar.gz") == "mobilenet_v1"
    assert unpacked_name("m.zip") == "m"
    assert os.sep not in unpacked_name("a.tgz")

"""safe_extract: good archives unpack; traversal, link chains out, devices, bombs are refused, nothing written."""
from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from zoo.archives import UnpackLimits, archive_kind, parse_size, safe_extract, unpacked_name
from zoo.errors import ArchiveLimitError, FetchError, UnsafeArchiveError


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
    after = snapshot(tmp_path)
    assert after == before, f"unexpected files: {after - before}"


@pytest.fixture
def box(tmp_path):
    """An archive folder inside tmp_path, so a member escaping it would land in tmp_path."""
    folder = tmp_path / "box" / "inner"
    folder.mkdir(parents=True)
    return folder


def snapshot(tmp_path):
    """Every path under tmp_path except unpack lock files (empty, left beside a target on purpose)."""
    return {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not p.name.endswith(".unpack.lock")}


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
    # No temp folder left; only the (empty) lock file that serialises unpacks into the target.
    assert [p.name for p in box.iterdir() if p.name.startswith(".")] == [".m.unpacked.unpack.lock"]


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
    "symlink_nul": ([("link", "fine.txt\0/../..", "sym")], "NUL byte"),
    "link_chain_out": ([("d/x", "../h/../../..", "sym"), ("h", "d", "sym")], "outside the archive through link"),
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


# -- link chains: links each harmless alone, outside together (issue 11, item 1) -------------------

DEEP = "a/b/c/d/e/f/g/h"


def chain_tar(path: Path, order: list[int]) -> Path:
    members = [("a/b/c/d/e/f/g", "dir", None), ("x", "sym", DEEP + "/.." * 8 + "/etc"),
               (DEEP, "sym", "/".join([".."] * 7))]
    return make_tar(path, [("fine.txt", "file", b"ok")] + [members[i] for i in order])


@pytest.mark.parametrize("order", [[0, 1, 2], [0, 2, 1]], ids=["link-before-its-hop", "hop-first"])
def test_tar_link_chain_resolving_outside_is_refused(tmp_path, box, order):
    archive = chain_tar(box / "chain.tar.gz", order)
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=r"link 'x' .* points outside the archive through link 'a/b/c/d/e/f/g/h'"):
        safe_extract(archive, box / "out")
    assert_nothing_written(tmp_path, box / "out", before)


def test_zip_link_chain_resolving_outside_is_refused(tmp_path, box):
    archive = make_zip(box / "chain.zip", [
        ("fine.txt", b"ok"), ("x", DEEP + "/.." * 8 + "/etc", "sym"), (DEEP, "/".join([".."] * 7), "sym")])
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError, match="points outside the archive through link"):
        safe_extract(archive, box / "out")
    assert_nothing_written(tmp_path, box / "out", before)


@pytest.mark.parametrize("case, members, words", [
    ("loop", [("p", "sym", "q"), ("q", "sym", "p/../p")], "link loop"),
    ("dup_link", [("d", "file", b"1"), ("d", "sym", "fine.txt")], "appears twice"),
    ("written_later_through_link", [("l", "sym", "sub"), ("sub", "dir", None), ("l/x", "file", b"x")],
     "through link 'l'"),
    ("hardlink_to_a_link", [("s", "sym", "fine.txt"), ("h", "hard", "s")], "not a file earlier"),
    ("hardlink_through_link", [("sub", "dir", None), ("sub/f", "file", b"f"), ("l", "sym", "sub"),
                               ("h", "hard", "l/f")], "not a file earlier"),
])
def test_more_link_tricks_are_refused(tmp_path, box, case, members, words):
    archive = make_tar(box / f"{case}.tar", [("fine.txt", "file", b"ok"), *members], mode="w")
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=words):
        safe_extract(archive, box / "out")
    assert_nothing_written(tmp_path, box / "out", before)


@pytest.mark.parametrize("hops, fine, reverse", [(30, True, False), (45, False, False), (30, True, True),
                                                (5000, False, True)])
def test_a_chain_of_links_is_followed_as_far_as_linux_would(box, hops, fine, reverse):
    """Linux follows 40 links in one path (ELOOP); whatever the order the links come in."""
    chain = [(f"l{i}", "sym", f"l{i - 1}") for i in range(1, hops + 1)]
    chain = chain[::-1] if reverse else chain
    archive = make_tar(box / "chain.tar", [("l0", "file", b"end"), *chain], mode="w")
    if fine:
        assert (safe_extract(archive, box / "out") / f"l{hops}").read_bytes() == b"end"
    else:
        with pytest.raises(UnsafeArchiveError, match="is a link loop"):
            safe_extract(archive, box / "out")


def test_links_are_resolved_again_on_disk_before_the_folder_is_used(tmp_path):
    """The last check, on the real files: it catches a link the plan would somehow have missed."""
    from zoo.archives import _check_links_on_disk

    root = tmp_path / "unpacked"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "in").symlink_to("..")
    _check_links_on_disk(root, Path("m.tar"))
    (root / "sub" / "out").symlink_to("../..")
    with pytest.raises(UnsafeArchiveError, match=r"m.tar: link 'sub/out' resolves outside the archive"):
        _check_links_on_disk(root, Path("m.tar"))


def test_links_through_links_that_stay_inside_unpack(box):
    archive = make_tar(box / "ok.tar", [
        ("v2", "dir", None), ("v2/model.onnx", "file", b"onnx"), ("latest", "sym", "v2"),
        ("alias", "sym", "latest/model.onnx"), ("deep/er", "dir", None), ("deep/er/up", "sym", "../../latest"),
    ], mode="w")
    target = safe_extract(archive, box / "out")
    assert (target / "alias").read_bytes() == b"onnx"
    assert (target / "deep" / "er" / "up" / "model.onnx").read_bytes() == b"onnx"


def test_convert_cannot_read_a_file_outside_through_a_link_chain(fault_server, zoo_env, tmp_path):
    """The chain points at a real Caffe net outside the cache; `zoo convert` must refuse the archive."""
    from click.testing import CliRunner

    from helpers.caffe import make_net
    from zoo.catalog import open_catalog
    from zoo.cli import cli
    from zoo.records import Artifact, Model

    secret = tmp_path / "secret"
    secret.mkdir()
    make_net(secret, [1, 2, 4, 4], 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }', name="net")
    # Unpacked at <tmp>/zoo-home/cache/models/chained.caffe/chained: 5 levels below tmp_path.
    archive = make_tar(tmp_path / "chained.tar.gz", [
        ("a/b/c/d/e/f/g", "dir", None), ("x", "sym", DEEP + "/.." * 5 + "/secret"),
        (DEEP, "sym", "/".join([".."] * 7))])
    fault_server.add("/chained.tar.gz", archive.read_bytes())
    open_catalog().add_model(Model(name="chained.caffe", framework="caffe", artifacts=[
        Artifact("archive", "chained.tar.gz", urls=[fault_server.url("/chained.tar.gz")], extract="tar",
                 meta={"members": {"graph": "x/net.prototxt", "weights": "x/net.caffemodel"}})]))
    result = CliRunner().invoke(cli, ["convert", "chained.caffe"])
    assert result.exit_code == 1, result.output
    assert "points outside the archive through link" in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    model = open_catalog().get("chained.caffe")
    assert model.artifact("onnx") is None and model.artifact("archive").path is None
    assert not (zoo_env / "cache" / "models" / "chained.caffe" / "chained").exists()


# -- a zip from Python's own ZipFile.writestr (issue 11, item 8) ---------------------------------

def test_zip_written_by_writestr_with_no_file_type_unpacks(box):
    archive = box / "py.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/model.onnx", b"onnx bytes")  # mode 0o600 with no S_IFREG: what Python writes
        zf.writestr("m/sub/", b"")
        zf.write(__file__, "m/test.py")
    assert zipfile.ZipFile(archive).getinfo("m/model.onnx").external_attr >> 16 == 0o600
    target = safe_extract(archive, box / "out")
    assert (target / "m" / "model.onnx").read_bytes() == b"onnx bytes"
    assert (target / "m" / "sub").is_dir() and (target / "m" / "test.py").read_bytes() == Path(__file__).read_bytes()


@pytest.mark.parametrize("fmt, words", [(stat.S_IFIFO, "fifo"), (stat.S_IFSOCK, "socket"), (stat.S_IFBLK, "device")])
def test_zip_special_files_are_still_refused(box, fmt, words):
    archive = box / "special.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("odd")
        info.create_system, info.external_attr = 3, (fmt | 0o644) << 16
        zf.writestr(info, b"")
    with pytest.raises(UnsafeArchiveError, match=words):
        safe_extract(archive, box / "out")


# -- archive bombs (issue 11, item 2) -------------------------------------------------------------

def gz_tar_of_zeros(path: Path, size: int) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(size)))
    return path


def test_a_bomb_is_refused_from_its_header_before_anything_is_written(tmp_path, box):
    """A header announcing 1 TiB: refused at that header, without decompressing (or writing) any of it."""
    buf = io.BytesIO()
    info = tarfile.TarInfo("weights.bin")
    info.size = 1 << 40
    buf.write(info.tobuf(format=tarfile.GNU_FORMAT))
    buf.write(bytes(1 << 20))  # the first MiB of the "body"; the rest never comes
    archive = box / "bomb.tar"
    archive.write_bytes(buf.getvalue())
    before = snapshot(tmp_path)
    with pytest.raises(ArchiveLimitError, match=r"bomb.tar would unpack to 1024\.0 GiB or more \(from its headers\), over the limit of 32\.0 GiB"):
        safe_extract(archive, box / "out")
    assert_nothing_written(tmp_path, box / "out", before)


def test_compression_ratio_over_the_limit_is_refused(tmp_path, box, monkeypatch):
    archive = gz_tar_of_zeros(box / "zeros.tar.gz", 64 << 20)  # ~64 KiB of gzip: ratio ~1000
    before = snapshot(tmp_path)
    with pytest.raises(ArchiveLimitError, match=r"from its headers\), over 200x compression: an archive bomb\?.*ZOO_MAX_UNPACK_RATIO") as info:
        safe_extract(archive, box / "out")
    assert "\n" not in str(info.value)
    assert_nothing_written(tmp_path, box / "out", before)
    monkeypatch.setenv("ZOO_MAX_UNPACK_RATIO", "5000")
    assert (safe_extract(archive, box / "out") / "zeros.bin").stat().st_size == 64 << 20


def test_small_archives_are_exempt_from_the_ratio(box):
    archive = gz_tar_of_zeros(box / "small.tar.gz", 512 << 10)  # ratio ~500, but only 512 KiB
    assert (safe_extract(archive, box / "out") / "zeros.bin").stat().st_size == 512 << 10


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_total_size_and_member_limits_can_be_lowered_and_raised(tmp_path, box, monkeypatch, kind):
    files = [(f"f{i}.bin", os.urandom(300_000)) for i in range(4)]  # 1.2 MB, incompressible
    if kind == "tar":
        archive = make_tar(box / "m.tar.gz", [(n, "file", d) for n, d in files])
    else:
        archive = make_zip(box / "m.zip", files)
    before = snapshot(tmp_path)
    monkeypatch.setenv("ZOO_MAX_UNPACK_BYTES", "1M")
    with pytest.raises(ArchiveLimitError, match=r"over the limit of 1\.0 MiB.*ZOO_MAX_UNPACK_BYTES or `zoo fetch --max-unpack-size`"):
        safe_extract(archive, box / "out")
    assert_nothing_written(tmp_path, box / "out", before)
    assert (safe_extract(archive, box / "out", limits=UnpackLimits(max_bytes=2 << 20)) / "f3.bin").exists()
    monkeypatch.delenv("ZOO_MAX_UNPACK_BYTES")
    monkeypatch.setenv("ZOO_MAX_UNPACK_MEMBERS", "3")
    with pytest.raises(ArchiveLimitError, match="has more than 3 members; refusing.*ZOO_MAX_UNPACK_MEMBERS"):
        safe_extract(archive, box / "out2")
    assert not (box / "out2").exists()


@pytest.mark.parametrize("mode, name", [("w", "m.tar"), ("w:gz", "m.tar.gz"), ("w:bz2", "m.tar.bz2"),
                                        ("w:xz", "m.tar.xz")])
def test_every_tar_compression_unpacks(box, mode, name):
    archive = make_tar(box / name, [("m", "dir", None), ("m/w.bin", "file", b"w" * 5000)], mode=mode)
    assert (safe_extract(archive, box / "out") / "m" / "w.bin").read_bytes() == b"w" * 5000


def test_an_oversized_pax_header_is_refused_before_it_is_read(tmp_path, box):
    """tarfile reads a pax header whole into memory: a 4 GiB one must never be read."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, 4 << 30
    archive = box / "pax.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # only the header and 1 MiB of its "records"
        tar.fileobj.write(header.tobuf(format=tarfile.USTAR_FORMAT) + bytes(1 << 20))
    before = snapshot(tmp_path)
    with pytest.raises(ArchiveLimitError, match=r"has a 4\.0 GiB header \(pax or GNU long name"):
        safe_extract(archive, box / "out")
    assert_nothing_written(tmp_path, box / "out", before)


def test_a_tar_stream_longer_than_its_members_allow_is_refused(tmp_path, box, monkeypatch):
    """Pax headers count toward no member's size; the stream's length is bounded all the same."""
    import zoo.archives

    monkeypatch.setattr(zoo.archives._BoundedStream, "_SLACK", 0)
    archive = box / "pax.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for i in range(300):
            info = tarfile.TarInfo(f"f{i}")
            info.pax_headers = {"comment": "x" * 8000}
            tar.addfile(info, io.BytesIO(b""))
    limits = UnpackLimits(max_bytes=1000, max_members=300)  # 1.2 MB of stream allowed; it has 2.6 MB
    with pytest.raises(ArchiveLimitError, match="has a tar stream longer than 1.2 MiB"):
        safe_extract(archive, box / "out", limits=limits)
    assert not (box / "out").exists()
    assert (safe_extract(archive, box / "out", limits=UnpackLimits(max_members=300)) / "f299").exists()


def test_a_zip_whose_header_understates_a_member_is_refused(tmp_path, box):
    """The central directory says 100 bytes; the stream holds 8 MiB: never written past the header."""
    archive = box / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.bin", bytes(8 << 20))
    data = bytearray(archive.read_bytes())
    real = (8 << 20).to_bytes(4, "little")
    assert data.count(real) == 2  # the local header and the central directory
    archive.write_bytes(bytes(data).replace(real, (100).to_bytes(4, "little")))
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError, match="truncated or corrupt"):
        safe_extract(archive, box / "out")
    assert_nothing_written(tmp_path, box / "out", before)


def test_parse_size_and_bad_limit_values():
    assert parse_size("123") == 123 and parse_size("64G") == 64 << 30 and parse_size("1.5 GiB") == 3 << 29
    assert parse_size("500m") == 500 << 20 and parse_size("2T") == 2 << 40
    with pytest.raises(FetchError, match="'lots' is not a size; give bytes or a number with K, M, G or T"):
        parse_size("lots", "--max-unpack-size")


# -- folders left by a killed unpack (issue 11, item 11) ------------------------------------------

def test_leftovers_of_a_dead_unpack_are_removed_by_the_next(box):
    (box / ".out.4242.unpacking" / "half").mkdir(parents=True)
    (box / ".out.old-4243").mkdir()
    (box / ".out.x.4242.unpacking").mkdir()  # another target's ("out.x"): not ours to touch
    safe_extract(make_tar(box / "m.tar", [("a.txt", "file", b"A")], mode="w"), box / "out")
    assert sorted(p.name for p in box.iterdir() if p.name.startswith(".")) == [
        ".out.unpack.lock", ".out.x.4242.unpacking"]


def test_kill_9_during_unpack_leaves_nothing_after_the_next_run(box):
    """A real SIGKILL while the unpack is half done; the next unpack removes what it left."""
    archive = make_tar(box / "m.tar", [(f"f{i}.bin", "file", os.urandom(1000)) for i in range(5)], mode="w")
    child = textwrap.dedent("""
        import sys, time
        import zoo.archives as archives
        real = archives._copy
        def copy_then_hang(*args):
            real(*args)
            print("half done", flush=True)
            time.sleep(120)
        archives._copy = copy_then_hang
        archives.safe_extract(sys.argv[1], sys.argv[2])
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", child, str(archive), str(box / "out")],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline() == "half done\n"
        left = [p.name for p in box.iterdir() if p.name.endswith(".unpacking")]
        assert left == [f".out.{proc.pid}.unpacking"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    target = safe_extract(archive, box / "out")
    assert sorted(p.name for p in target.iterdir()) == [f"f{i}.bin" for i in range(5)]
    assert [p.name for p in box.iterdir() if p.name.endswith(".unpacking")] == []

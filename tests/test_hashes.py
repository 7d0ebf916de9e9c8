"""Checksum strings and file hashes, checked against independent references (git, hashlib)."""
from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest

from zoo.errors import ChecksumError
from zoo.hashes import ALGOS, MultiHasher, file_hash, hash_matches, parse_checksum

DATA = b"conv1 weights\n" + bytes(range(256)) * 50


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(DATA)
    return path


@pytest.mark.parametrize("algo", ["sha256", "sha1", "md5"])
def test_file_hash_matches_hashlib(sample, algo):
    assert file_hash(sample, algo) == hashlib.new(algo, DATA).hexdigest()


def test_gitblob_matches_git_hash_object(sample):
    expected = hashlib.sha1(b"blob %d\0" % len(DATA) + DATA).hexdigest()
    assert file_hash(sample, "gitblob") == expected
    if shutil.which("git"):  # the independent reference: git itself
        out = subprocess.run(["git", "hash-object", str(sample)], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


def test_gitblob_of_empty_file_is_gits_empty_blob(tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_hash(empty, "gitblob") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


def test_parse_checksum_normalises_and_defaults_to_sha256():
    digest = hashlib.sha256(b"x").hexdigest()
    assert parse_checksum("SHA256:" + digest.upper()) == ("sha256", digest)
    assert parse_checksum(digest) == ("sha256", digest)
    assert parse_checksum(" md5:" + "a" * 32) == ("md5", "a" * 32)


@pytest.mark.parametrize(
    "bad, words",
    [("crc32:1234abcd", ["crc32", "sha256", "gitblob"]), ("sha1:abc", ["40 hex digits", "sha1"]),
     ("sha256:" + "g" * 64, ["sha256"])],
)
def test_parse_checksum_rejects_bad_values_naming_them(bad, words):
    with pytest.raises(ChecksumError) as info:
        parse_checksum(bad)
    assert bad.split(":")[0] in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_hash_matches(sample):
    assert hash_matches(sample, "sha1:" + hashlib.sha1(DATA).hexdigest())
    assert not hash_matches(sample, "md5:" + hashlib.md5(b"other").hexdigest())
    assert hash_matches(sample, None)


def test_multihasher_streams_all_algorithms_in_one_pass():
    h = MultiHasher(list(ALGOS), size=len(DATA))
    for i in range(0, len(DATA), 1000):
        h.update(memoryview(DATA)[i : i + 1000])
    assert h.count == len(DATA)
    assert h.hexdigest("sha256") == hashlib.sha256(DATA).hexdigest()
    assert h.hexdigest("md5") == hashlib.md5(DATA).hexdigest()
    assert h.hexdigest("gitblob") == hashlib.sha1(b"blob %d\0" % len(DATA) + DATA).hexdigest()


def test_multihasher_gitblob_needs_the_right_size():
    assert MultiHasher(["gitblob"]).hexdigest("gitblob") is None  # size unknown
    h = MultiHasher(["gitblob"], size=10)
    h.update(b"12345")
    assert h.hexdigest("gitblob") is None  # fewer bytes than announced

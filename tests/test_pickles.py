"""Pickles stay closed (issue 24, item 5): checkpoints are refused with the globals their opcodes name.

Every pickle here is walked statically by zoo.pickles; none is ever loaded. Malicious ones would
create a marker file if anything unpickled them: the marker must never appear.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import zipfile

import pytest

from zoo import pickles
from zoo.errors import ModelFormatError, UnsafePickleError


class _Writes:
    """Unpickling this opens (creates) `path`: proof that something ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _Shell:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _names(report) -> list[str]:
    return [str(g) for g in report.globals]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Real torch.save files of a tiny net: state_dict (zip and legacy format) and whole module."""
    import torch

    folder = tmp_path_factory.mktemp("checkpoints")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
    paths = {"state_dict": folder / "net.pt", "legacy": folder / "legacy.pth",
             "whole": folder / "whole.pt", "hf_bin": folder / "pytorch_model.bin"}
    torch.save(net.state_dict(), paths["state_dict"])
    torch.save(net.state_dict(), paths["legacy"], _use_new_zipfile_serialization=False)
    torch.save(net, paths["whole"])
    torch.save(net.state_dict(), paths["hf_bin"])
    return paths


def test_state_dict_checkpoints_hold_only_allowed_globals(checkpoints):
    for what in ("state_dict", "legacy", "hf_bin"):
        report = pickles.inspect(checkpoints[what])
        assert report is not None and report.complete, what
        assert "torch._utils._rebuild_tensor_v2" in _names(report), what
        assert report.weights_only and not report.outside, what
    assert pickles.inspect(checkpoints["legacy"]).kind == "legacy torch.save"
    message = pickles.inspect(checkpoints["state_dict"]).message()
    assert "state_dict" in message and "load_state_dict" in message
    assert "torch.jit.script" in message and "torch.onnx.export" in message


def test_a_whole_module_checkpoint_names_its_classes(checkpoints):
    report = pickles.inspect(checkpoints["whole"])
    outside = [str(g) for g in report.outside]
    assert "torch.nn.modules.conv.Conv2d" in outside
    assert "torch.nn.modules.container.Sequential" in outside
    assert all(g.allowed for g in report.globals if str(g) not in outside)
    assert not report.weights_only


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickles_name_what_they_would_run(tmp_path, protocol):
    marker = tmp_path / "ran"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"weights": [1.0], "hook": _Shell(), "w": _Writes(marker)},
                                  protocol=protocol))
    report = pickles.inspect(path)
    assert report is not None and report.kind == "pickle"
    assert {str(g) for g in report.outside} == {f"{os.system.__module__}.system", "io.open"}
    with pytest.raises(UnsafePickleError) as caught:
        from zoo.formats import detect_format

        detect_format(path)
    assert "posix.system" in str(caught.value) or "nt.system" in str(caught.value)
    assert not marker.exists()


def test_globals_hidden_in_the_memo_or_opaque_values_are_caught(tmp_path):
    # Protocol 4 by hand: the module and name are memoized, then fetched back for STACK_GLOBAL.
    memo_trick = (b"\x80\x04\x8c\x05posix\x94\x8c\x06system\x94"  # push, MEMOIZE x2
                  b"h\x00h\x01\x93"                                # BINGET 0, BINGET 1, STACK_GLOBAL
                  b"\x8c\x02id\x94\x85R.")                         # ("id",) REDUCE STOP
    # STACK_GLOBAL on values that are no known strings: reported as unknown, outside the list.
    opaque = b"\x80\x04K\x01K\x02\x93)R."
    # Protocol 0 INST (import and call in one opcode) and the copyreg extension registry.
    inst = b"(S'ls'\nios\nsystem\n."
    extension = b"\x80\x02\x82\x07)R."
    expected = {"memo.pkl": (memo_trick, "posix.system"), "opaque.pkl": (opaque, "?.?"),
                "inst.pkl": (inst, "os.system"), "ext.pkl": (extension, "copyreg.extension.7")}
    for name, (data, global_name) in expected.items():
        path = tmp_path / name
        path.write_bytes(data)
        report = pickles.inspect(path)
        assert report is not None, name
        assert [str(g) for g in report.outside] == [global_name], name


def test_benign_data_and_other_files_are_told_apart(tmp_path):
    plain = tmp_path / "numbers.pkl"
    plain.write_bytes(pickle.dumps({"a": [1, 2.5, "x"], "b": (None, True)}, protocol=0))
    report = pickles.inspect(plain)
    assert report is not None and report.globals == [] and report.complete
    import collections

    ordered = tmp_path / "ordered.pkl"
    ordered.write_bytes(pickle.dumps(collections.OrderedDict(a=1), protocol=2))
    assert pickles.inspect(ordered).weights_only
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(range(256)) * 40)
    assert pickles.inspect(noise) is None
    text = tmp_path / "notes.pkl"
    text.write_text("hello\n")
    assert pickles.inspect(text) is None
    other_zip = tmp_path / "other.pt"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "hi")
    assert pickles.inspect(other_zip) is None


def test_a_huge_argument_is_never_read_whole(tmp_path, monkeypatch):
    """The walk reads at most MAX_WALK_BYTES; what it could not read is said, never called safe."""
    monkeypatch.setattr(pickles, "MAX_WALK_BYTES", 1 << 20)
    path = tmp_path / "big.pkl"
    path.write_bytes(pickle.dumps([b"x" * (4 << 20), _Shell()], protocol=4))
    report = pickles.inspect(path)
    assert report is not None and not report.complete and not report.weights_only
    assert "the rest was not read and may import anything" in report.message()
    small = tmp_path / "small.pkl"
    small.write_bytes(pickle.dumps([_Shell(), b"x" * (4 << 20)], protocol=4))
    assert "outside zoo's allow-list of tensor and container builders in the first 1 MB" in \
        pickles.inspect(small).message()


def test_torchscript_archives_are_not_checkpoints(light):
    assert pickles.inspect(light["torchscript"]) is None


def test_add_and_scan_refuse_checkpoints_and_register_nothing(checkpoints, tmp_path, zoo_cmd):
    import zoo

    before = zoo.list_models(source="local")
    with pytest.raises(UnsafePickleError, match="torch.nn.modules.conv.Conv2d"):
        zoo.add(checkpoints["whole"])
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(checkpoints["hf_bin"].read_bytes())
    evil = folder / "payload.dat"  # no model suffix: still reported, it is a pickle
    evil.write_bytes(pickle.dumps(_Shell(), protocol=2))
    result = zoo.scan(folder)
    assert result.added == []
    reported = {os.path.basename(p): e for p, e in result.problems}
    assert "state_dict" in reported["pytorch_model.bin"]
    assert "system" in reported["payload.dat"]
    assert zoo.list_models(source="local") == before
    # The command a user types: one line on stderr, exit 1, nothing registered.
    run = subprocess.run([*zoo_cmd, "add", str(checkpoints["whole"])], capture_output=True, text=True)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "torch.nn.modules.conv.Conv2d" in run.stderr
    assert "Traceback" not in run.stderr


def test_unsafe_pickle_error_is_a_model_format_error(checkpoints):
    from zoo.formats import detect_format

    with pytest.raises(ModelFormatError) as caught:
        detect_format(checkpoints["legacy"])
    assert isinstance(caught.value, UnsafePickleError)
    assert caught.value.report.weights_only

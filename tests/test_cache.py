"""zoo.cache (layout, folder names), zoo.atomic, zoo.hashes' tree hash, and `zoo cache list` / `zoo cache rm`
(zoo.cache_manager)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from zoo import atomic, cache, cache_manager
from zoo.catalog import open_catalog
from zoo.cli import cli
from zoo.errors import CacheError, InputError
from zoo.records import Artifact, Model

# ---- layout -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, folder", [
    ("bvlc_alexnet", "bvlc_alexnet"),
    ("resnet50.caffe", "resnet50.caffe"),
    ("team/model:v2", "team_model_v2"),
    ("../../etc", "_.._etc"),
    (".hidden", "hidden"),
    ("..", "_"),
])
def test_folder_name_keeps_a_name_inside_its_folder(name, folder):
    assert cache.folder_name(name) == folder
    assert "/" not in folder and not folder.startswith(".")


def test_every_path_honours_cache_dir_and_zoo_cache(zoo_env, tmp_path):
    from zoo.conversion import onnx_path

    default = zoo_env / "cache"
    other = tmp_path / "elsewhere"
    assert cache.model_folder("a/b") == default / "models" / "a_b"
    assert cache.model_folder("a/b", other) == other / "models" / "a_b"
    assert onnx_path("a/b", other) == other / "onnx" / "a_b" / "a_b.onnx"  # conversion uses the same rule
    assert cache.cuts_folder("ab" * 32, other) == other / "cuts" / ("ab" * 32)
    assert cache.features_folder(other) == other / "features"


# ---- atomic writes --------------------------------------------------------------------------------

def test_atomic_path_replaces_on_success_and_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "sub" / "report.json"
    atomic.write_atomic(target, '{"v": 1}')
    assert json.loads(target.read_text()) == {"v": 1}
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(target, "w") as f:
            f.write('{"v": 2, "half')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]  # no temp file left


def test_atomic_path_keeps_a_suffix_and_the_umask_permissions(tmp_path):
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    with atomic.atomic_path(tmp_path / "plot.png", suffix=".png") as tmp:
        assert tmp.name.endswith(".part.png") and tmp.parent == tmp_path
        tmp.write_bytes(b"png")
    made = tmp_path / "plot.png"
    assert made.read_bytes() == b"png"
    assert made.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_write_atomic_fsync_bytes(tmp_path):
    atomic.write_atomic(tmp_path / "w.bin", b"\x00\x01", fsync=True)
    assert (tmp_path / "w.bin").read_bytes() == b"\x00\x01"


# ---- one file/tree hash -----------------------------------------------------------------------------

def test_one_tree_hash_for_catalog_reports_and_formats(tmp_path):
    from converters.onnx_model import file_sha256 as report_hash
    from zoo.formats import tree_sha256 as formats_tree
    from zoo.hashes import file_sha256, tree_sha256

    folder = tmp_path / "saved"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "v.data").write_bytes(b"weights")
    expected = hashlib.sha256()
    for rel, data in [("saved_model.pb", b"graph"), ("variables/v.data", b"weights")]:
        expected.update(rel.encode() + b"\0" + hashlib.sha256(data).hexdigest().encode() + b"\n")
    assert tree_sha256(folder) == file_sha256(folder) == expected.hexdigest()
    assert report_hash is file_sha256 and formats_tree is tree_sha256
    assert file_sha256(folder / "saved_model.pb") == hashlib.sha256(b"graph").hexdigest()


# ---- zoo cache list / rm -----------------------------------------------------------------------------

def _tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"), helper.make_node("Relu", ["h"], ["y"], name="relu")],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture
def filled(zoo_env, tmp_path):
    """A cache with one of each kind: fetched files, converted ONNX, a cut, features, a trained copy."""
    from zoo.conversion import convert
    from zoo.download import fetch
    from zoo.extract import load_extractor
    from zoo.features import extract_features

    source = _tiny_onnx(tmp_path / "tiny.onnx")
    cat = open_catalog()
    cat.add_model(Model(name="tiny.onnx", framework="onnx", format="onnx", artifacts=[
        Artifact("model", "tiny.onnx", urls=[source.as_uri()])]))
    fetch("tiny.onnx", quiet=True)
    convert("tiny.onnx")
    extractor = load_extractor("tiny.onnx", layer="fc")
    extract_features(extractor, np.ones((5, 4), np.float32), progress=False)
    trained = cache.model_folder("mine") / "mine.onnx"
    trained.parent.mkdir(parents=True)
    trained.write_bytes(source.read_bytes())
    cat.add_model(Model(name="mine", framework="onnx", format="onnx", source="local", meta={"trained_by": "zoo"},
                        artifacts=[Artifact("model", "mine.onnx", path=str(trained))]))
    return zoo_env / "cache"


def _listed(*args: str) -> list[dict]:
    result = CliRunner().invoke(cli, ["cache", "list", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cache_list_shows_every_kind_with_sizes(filled):
    listed = _listed()
    kinds = {e["kind"]: e for e in listed}
    assert sorted(kinds) == ["cuts", "features", "models", "onnx", "trained"]
    assert kinds["models"]["key"] == "models/tiny.onnx" and kinds["trained"]["key"] == "models/mine"
    assert kinds["onnx"]["key"] == "onnx/tiny.onnx" and kinds["onnx"]["model"] == "tiny.onnx"
    assert kinds["cuts"]["model"] == "tiny.onnx" and kinds["cuts"]["layers"] == ["fc"]
    assert kinds["features"]["rows"] == 5 and kinds["features"]["complete"] is True
    # features say what they are of, so `zoo cache rm --model` finds them too
    assert kinds["features"]["model"] == "tiny.onnx" and kinds["features"]["layer"] == "fc"
    for e in listed:  # sizes are what is on disk
        path = Path(e["path"])
        on_disk = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if e["kind"] == "cuts":
            on_disk += path.with_suffix(".json").stat().st_size
        assert e["bytes"] == on_disk > 0
    assert [e["kind"] for e in _listed("--kind", "cuts", "--kind", "onnx")] == ["cuts", "onnx"]
    text = CliRunner().invoke(cli, ["cache", "list"]).stdout
    assert "onnx/tiny.onnx" in text and "trained" in text and "5 entries" in text


def test_cache_list_does_not_create_a_catalog(zoo_env):
    cache.model_folder("x").mkdir(parents=True)
    (cache.model_folder("x") / "x.bin").write_bytes(b"1")
    assert [e.kind for e in cache_manager.scan()] == ["models"]
    assert not (zoo_env / "catalog.db").exists()


def test_cache_rm_by_model_removes_its_onnx_cuts_features_and_files(filled):
    listed = {e["key"]: e for e in _listed()}
    features = next(k for k, e in listed.items() if e["kind"] == "features")
    fetched, converted = filled / "models" / "tiny.onnx" / "tiny.onnx", filled / "onnx" / "tiny.onnx" / "tiny.onnx.onnx"
    # The pass-through conversion has the fetched file's bytes: the store keeps them once, so they free once.
    shared = fetched.stat().st_size if fetched.samefile(converted) else 0
    result = CliRunner().invoke(cli, ["cache", "rm", "--model", "tiny.onnx", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert sorted(listed[k]["kind"] for k in out["removed"]) == ["cuts", "features", "models", "onnx"]
    assert features in out["removed"]  # features say what they are of, so --model finds them
    assert out["bytes"] == sum(listed[k]["bytes"] for k in out["removed"]) - shared
    assert out["blobs"] and not any((filled / "blobs" / "sha256" / b).exists() for b in out["blobs"])
    assert sorted(e["kind"] for e in _listed()) == ["trained"]
    left = [p.name for p in (filled / "models" / "tiny.onnx").iterdir()]
    assert left == []  # nothing: the fetch removed its lock when it finished
    assert not (filled / "onnx" / "tiny.onnx" / "tiny.onnx.onnx").exists()


def test_cache_rm_dry_run_plans_the_same_entries_and_removes_nothing(filled):
    before = _listed()
    runner = CliRunner()
    planned = runner.invoke(cli, ["cache", "rm", "--model", "tiny.onnx", "--dry-run", "--json"])
    assert planned.exit_code == 0, planned.output
    plan = json.loads(planned.stdout)
    assert plan["dry_run"] is True and _listed() == before  # nothing touched
    mine = [e for e in before if e["model"] == "tiny.onnx"]
    assert sorted(plan["removed"]) == sorted(e["key"] for e in mine)
    assert plan["bytes"] == sum(e["bytes"] for e in mine)
    text = runner.invoke(cli, ["cache", "rm", "--model", "tiny.onnx", "--dry-run"]).stdout
    assert f"would remove {len(mine)} entries" in text and "onnx/tiny.onnx" in text
    done = json.loads(runner.invoke(cli, ["cache", "rm", "--model", "tiny.onnx", "--json"]).stdout)
    # The plan is what was executed: the entries, and the stored files only they used.
    assert done == {"removed": plan["removed"], "bytes": plan["bytes"], "blobs": plan["blobs"]}


def test_cache_rm_by_key_prefix_part_by_part(filled):
    cut = next(e for e in _listed() if e["kind"] == "cuts")
    sha, name = cut["key"].split("/")[1:]
    runner = CliRunner()
    assert runner.invoke(cli, ["cache", "rm", f"cuts/{sha[:8]}/{name[:2]}"]).exit_code == 0
    assert "cuts" not in {e["kind"] for e in _listed()} and not Path(cut["path"]).with_suffix(".json").exists()
    ambiguous = runner.invoke(cli, ["cache", "rm", "models"])
    assert ambiguous.exit_code == 1 and "matches 2 entries" in ambiguous.output
    unknown = runner.invoke(cli, ["cache", "rm", "onnx/nope"])
    assert unknown.exit_code == 1 and "zoo cache list" in unknown.output
    assert runner.invoke(cli, ["cache", "rm", "onnx/tiny"]).exit_code == 0
    assert "onnx" not in {e["kind"] for e in _listed()}
    neither = runner.invoke(cli, ["cache", "rm"])
    assert neither.exit_code == 1 and "--all" in neither.output and "Traceback" not in neither.output


def test_cache_rm_all_keeps_trained_copies_unless_asked(filled):
    runner = CliRunner()
    assert runner.invoke(cli, ["cache", "rm", "--all"]).exit_code == 0
    assert [e["kind"] for e in _listed()] == ["trained"]
    assert (filled / "models" / "mine" / "mine.onnx").is_file()
    result = runner.invoke(cli, ["cache", "rm", "--all", "--kind", "trained"])
    assert result.exit_code == 0 and "the catalog still lists mine" in result.stdout
    assert _listed() == [] and not (filled / "models" / "mine" / "mine.onnx").exists()


def _hold_lock(lock_file: Path):
    """Another process holding a file lock until its stdin closes."""
    code = textwrap.dedent(f"""
        import sys
        from filelock import FileLock
        lock = FileLock({str(lock_file)!r})
        lock.acquire()
        print("held", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_cache_rm_refuses_what_another_process_holds(filled):
    fetched = filled / "models" / "tiny.onnx"
    features = next(e for e in cache_manager.scan() if e.kind == "features")
    for lock_file, key in [(fetched / "tiny.onnx.lock", "models/tiny.onnx"),
                           (features.path.parent / f"{features.key}.lock", features.key[:8])]:
        proc = _hold_lock(lock_file)
        try:
            result = CliRunner().invoke(cli, ["cache", "rm", key])
            assert result.exit_code == 1 and "another process" in result.output and "Traceback" not in result.output
        finally:
            proc.stdin.close()
            proc.wait(timeout=60)
    assert (fetched / "tiny.onnx").is_file() and features.path.is_dir()
    proc = _hold_lock(fetched / "tiny.onnx.lock")
    try:  # all or nothing: the free entry named first is not removed either
        result = CliRunner().invoke(cli, ["cache", "rm", "onnx/tiny.onnx", "models/tiny.onnx"])
        assert result.exit_code == 1 and "nothing was removed" in result.output
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert (filled / "onnx" / "tiny.onnx" / "tiny.onnx.onnx").is_file()
    assert CliRunner().invoke(cli, ["cache", "rm", "models/tiny.onnx", features.key]).exit_code == 0
    assert not (fetched / "tiny.onnx").exists() and not features.path.exists()


def test_cache_rm_never_follows_a_link_out_of_the_cache(zoo_env, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.bin").write_bytes(b"k" * 1000)
    models = cache.model_folder("x").parent
    models.mkdir(parents=True)
    (models / "linked").symlink_to(outside, target_is_directory=True)
    [entry] = cache_manager.scan()
    assert entry.key == "models/linked" and entry.bytes < 1000  # the link, not what it points at
    cache_manager.RemovalPlan([entry]).execute()
    assert not (models / "linked").exists() and (outside / "keep.bin").read_bytes() == b"k" * 1000
    stray = cache_manager.Entry("models", "models/../..", tmp_path, 0)
    with pytest.raises(CacheError, match="not inside the cache"):
        cache_manager.RemovalPlan([stray]).execute()
    assert (outside / "keep.bin").is_file()


def test_unknown_kind_is_one_clear_error():
    with pytest.raises(InputError, match="valid: features, cuts, onnx, models, trained"):
        cache_manager.scan(kinds=["weights"])


def test_pretrain_saves_under_the_given_cache_dir(zoo_env, tmp_path):
    from zoo.options import PretrainConfig
    from zoo.pretraining import pretrain

    other = tmp_path / "other-cache"
    rows = np.random.default_rng(0).random((40, 6)).astype(np.float32)
    result = pretrain(rows, layers=(3,), name="tiny-stack", cache_dir=other,
                      config=PretrainConfig(epochs=1, progress=False))
    path = Path(result.model.artifacts[0].path)
    assert path == other / "models" / "tiny-stack" / "tiny-stack.onnx" and path.is_file()
    assert not (zoo_env / "cache" / "models" / "tiny-stack").exists()
    assert [p.name for p in path.parent.iterdir()] == ["tiny-stack.onnx"]
    assert [e.kind for e in cache_manager.scan(other)] == ["trained"]
    assert os.path.getsize(path) == result.model.artifacts[0].size

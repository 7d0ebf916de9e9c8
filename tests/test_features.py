"""Feature cache: keys, reuse across processes, resume, bounded memory, image folders, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from zoo.errors import InputError, ZooError
from zoo.features import FeatureCache, cache_features, extract_features, save_features
from zoo.datasources import as_source

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    from helpers.transfer import export_mlp

    return export_mlp(tmp_path_factory.mktemp("mlp") / "mlp.onnx")


@pytest.fixture
def data() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((1000, 16)).astype(np.float32)


def _ort(path, **kwargs):
    from helpers.transfer import OrtExtractor

    return OrtExtractor(path, **kwargs)


def _run_python(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(HERE), **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )


def test_features_match_the_extractor_and_are_reused(mlp, data):
    extractor = _ort(mlp)
    first = extract_features(extractor, data, chunk_size=128, progress=False)
    assert not first.reused
    assert isinstance(first.features, np.memmap)
    np.testing.assert_allclose(first.features, extractor(data), rtol=1e-6)
    calls = extractor.calls
    second = extract_features(extractor, data, chunk_size=128, progress=False)
    assert second.reused and second.key == first.key and extractor.calls == calls
    # the stored file is a plain .npy anyone can open
    np.testing.assert_array_equal(np.load(first.path), first.features)


def test_npy_path_and_array_share_a_key_and_other_data_does_not(mlp, data, tmp_path):
    extractor = _ort(mlp)
    np.save(tmp_path / "x.npy", data)
    cache = FeatureCache()
    assert cache.key(extractor, tmp_path / "x.npy") == cache.key(extractor, data)
    other = data.copy()
    other[500, 3] += 1
    assert cache.key(extractor, other) != cache.key(extractor, data)
    from_file = cache_features(extractor, str(tmp_path / "x.npy"), progress=False)
    np.testing.assert_allclose(from_file, extractor(data), rtol=1e-6)


def test_another_model_version_never_mixes_caches(mlp, data, tmp_path):
    from helpers.transfer import export_mlp

    old, new = _ort(mlp), _ort(export_mlp(tmp_path / "v2.onnx", seed=1))
    a = extract_features(old, data, progress=False)
    b = extract_features(new, data, progress=False)
    assert a.key != b.key and not b.reused
    np.testing.assert_allclose(b.features, new(data), rtol=1e-6)
    assert not np.allclose(a.features, b.features)
    assert len(FeatureCache().entries()) == 2


def test_reuse_across_processes(mlp, data, tmp_path):
    np.save(tmp_path / "x.npy", data)
    code = f"""
        from helpers.transfer import OrtExtractor
        from zoo.features import extract_features
        r = extract_features(OrtExtractor({str(mlp)!r}), {str(tmp_path / 'x.npy')!r}, chunk_size=50, progress=False)
        print(r.key, r.reused)
    """
    # two processes at once: one computes, the other waits on the lock and reuses its result
    env = dict(os.environ, PYTHONPATH=str(HERE))
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outputs[0][0] == outputs[1][0]
    assert sorted(o[1] for o in outputs) == ["False", "True"]
    here = extract_features(_ort(mlp), data, progress=False)
    assert here.reused and here.key == outputs[0][0]
    np.testing.assert_allclose(here.features, _ort(mlp)(data), rtol=1e-6)


def test_an_interrupted_extraction_resumes_where_it_stopped(mlp, data):
    failing = _ort(mlp, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        extract_features(failing, data, chunk_size=100, progress=False)
    entry = FeatureCache().entries()[0]
    assert not entry.complete and entry.rows == 300
    with pytest.raises(InputError, match="not complete"):
        FeatureCache().load(entry.key)
    # rows written after the last recorded chunk (a crash before the manifest) are dropped
    with open(entry.path / "features.npy", "ab") as f:
        f.write(b"\x7f" * 1000)
    resumed = _ort(mlp)
    result = extract_features(resumed, data, chunk_size=100, progress=False)
    assert resumed.calls == 7  # only the 7 missing chunks
    np.testing.assert_allclose(result.features, resumed(data), rtol=1e-6)
    assert FeatureCache().entries()[0].complete


def test_a_corrupt_complete_entry_is_recomputed_not_reused(mlp, data):
    extractor = _ort(mlp)
    first = extract_features(extractor, data, progress=False)
    with open(first.path, "r+b") as f:
        f.truncate(first.path.stat().st_size - 64)
    again = extract_features(extractor, data, progress=False)
    assert not again.reused
    np.testing.assert_allclose(again.features, extractor(data), rtol=1e-6)


def test_iterables_need_a_key(mlp, data):
    extractor = _ort(mlp)
    batches = [data[i : i + 64] for i in range(0, len(data), 64)]
    with pytest.raises(InputError, match="key="):
        cache_features(extractor, iter(batches), progress=False)
    features = cache_features(extractor, as_source(iter(batches), extractor, key="my-data-v1"), progress=False)
    np.testing.assert_allclose(features, extractor(data), rtol=1e-6)
    again = extract_features(extractor, as_source(iter(batches), extractor, key="my-data-v1"), progress=False)
    assert again.reused


def test_image_folder_skips_and_reports_unreadable_files(tmp_path):
    from PIL import Image

    from helpers.transfer import ProjectionExtractor

    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (10 + i, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / name / f"{i}.png")
    (tmp_path / "imgs" / "cats" / "broken.jpg").write_bytes(b"not an image")
    extractor = ProjectionExtractor(3 * 8 * 8, 5)
    result = extract_features(extractor, as_source(tmp_path / "imgs", extractor, image_size=(8, 8)),
                              progress=False, chunk_size=4)
    assert result.features.shape == (6, 5)
    assert result.classes == ["cats", "dogs"]
    assert result.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert [Path(s["path"]).name for s in result.skipped] == ["broken.jpg"]
    # the first cat image, decoded independently, gives the first row
    image = Image.open(tmp_path / "imgs" / "cats" / "0.png").convert("RGB").resize((8, 8), Image.BILINEAR)
    expected = extractor(np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None])
    np.testing.assert_allclose(result.features[0], expected[0], rtol=1e-5)
    with pytest.raises(InputError, match="broken.jpg"):
        extract_features(extractor,
                         as_source(tmp_path / "imgs", extractor, image_size=(8, 8), on_error="raise"),
                         progress=False)
    with pytest.raises(InputError, match="image_size"):
        extract_features(extractor, tmp_path / "imgs", progress=False)


def test_bad_inputs_say_what_to_do(mlp, tmp_path):
    extractor = _ort(mlp)
    with pytest.raises(InputError, match="does not exist"):
        cache_features(extractor, tmp_path / "missing.npy")
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(InputError, match="numpy.save"):
        cache_features(extractor, tmp_path / "bad.npy")

    class NoFingerprint:
        def __call__(self, batch):
            return batch

    with pytest.raises(InputError, match="fingerprint"):
        cache_features(NoFingerprint(), np.zeros((3, 16), np.float32))
    with pytest.raises(InputError, match="no feature cache entry"):
        FeatureCache().remove("deadbeef")


def test_disk_full_is_a_clear_error_and_the_partial_cache_resumes(mlp, data, tmp_path):
    np.save(tmp_path / "x.npy", data)
    # RLIMIT_FSIZE makes writes past the limit fail with EFBIG, as a full disk fails with ENOSPC
    code = f"""
        import resource, signal
        from helpers.transfer import OrtExtractor
        from zoo.features import extract_features
        from zoo.errors import ZooError
        extractor = OrtExtractor({str(mlp)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (12000, 12000))
        try:
            extract_features(extractor, {str(tmp_path / 'x.npy')!r}, chunk_size=100, progress=False)
        except ZooError as exc:
            print("ERROR", exc)
    """
    proc = _run_python(code)
    assert "ERROR no room left to cache features" in proc.stdout, proc.stdout + proc.stderr
    entry = FeatureCache().entries()[0]
    assert not entry.complete and 0 < entry.rows < len(data)
    extractor = _ort(mlp)
    result = extract_features(extractor, data, chunk_size=100, progress=False)
    assert extractor.calls == (len(data) - entry.rows) // 100
    np.testing.assert_allclose(result.features, extractor(data), rtol=1e-6)


@pytest.mark.slow
def test_memory_stays_bounded_on_a_dataset_larger_than_the_cap(tmp_path):
    rows, width = 50_000, 1024  # 200 MB of float32 input, 100 MB of features
    path = tmp_path / "big.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, width))
    for i in range(0, rows, 5000):
        out[i : i + 5000] = np.random.default_rng(i).standard_normal((5000, width), dtype=np.float32)
    out.flush()
    del out
    code = f"""
        import json
        import numpy as np
        from helpers.transfer import ProjectionExtractor
        from zoo.features import cache_features
        def hwm_kb():  # peak RSS of this program; ru_maxrss would carry the parent's over fork+exec
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
        extractor = ProjectionExtractor({width}, 512)
        extractor(np.zeros((1000, {width}), np.float32))
        before = hwm_kb()
        features = cache_features(extractor, {str(path)!r}, chunk_size=1000, progress=False)
        peak = hwm_kb()
        print(json.dumps({{"before_kb": before, "peak_kb": peak, "shape": list(features.shape)}}))
    """
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["shape"] == [rows, 512]
    grown_mb = (figures["peak_kb"] - figures["before_kb"]) / 1024
    cap_mb = path.stat().st_size / 2**20 / 2  # a cap half the dataset's size
    # one chunk in, one chunk out and a read block for hashing; features alone would be 100 MB
    assert grown_mb < cap_mb / 2, figures


def test_save_features_writes_a_plain_npy(mlp, data, tmp_path):
    extractor = _ort(mlp)
    result = save_features(extractor, data, tmp_path / "out" / "f.npy", progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "f.npy"), result.features)


def test_remove_and_clear(mlp, data):
    extractor = _ort(mlp)
    a = extract_features(extractor, data, progress=False)
    extract_features(extractor, data[:100], progress=False)
    cache = FeatureCache()
    sizes = {e.key: e.bytes for e in cache.entries()}
    assert cache.remove(a.key[:8]) == sizes.pop(a.key)  # the bytes freed are the entry's
    assert [e.key for e in cache.entries()] == list(sizes)
    assert cache.clear() == sum(sizes.values()) and cache.entries() == []
    with pytest.raises(ZooError):
        cache.load(a.key)


def test_zoo_cache_list_and_rm(mlp, data, zoo_cmd):
    from click.testing import CliRunner

    from zoo.cli import cli

    extractor = _ort(mlp)
    a = extract_features(extractor, data, progress=False)
    b = extract_features(extractor, data[:10], progress=False)
    runner = CliRunner()
    listed = runner.invoke(cli, ["cache", "list", "--json"])
    assert listed.exit_code == 0
    assert {e["key"] for e in json.loads(listed.stdout)} == {a.key, b.key}
    text = subprocess.run([*zoo_cmd, "cache", "list"], capture_output=True, text=True, timeout=120)
    assert a.key[:12] in text.stdout and "2 entries" in text.stdout
    removed = runner.invoke(cli, ["cache", "rm", a.key[:10]])
    assert removed.exit_code == 0 and "removed 1 entries" in removed.stdout
    assert [e.key for e in FeatureCache().entries()] == [b.key]
    unknown = runner.invoke(cli, ["cache", "rm", "nope"])
    assert unknown.exit_code == 1 and "zoo cache list" in unknown.output
    assert runner.invoke(cli, ["cache", "rm", "--all"]).exit_code == 0
    assert FeatureCache().entries() == []


def test_a_memory_map_of_a_file_is_read_from_the_file(mlp, data, tmp_path):
    from zoo.datasources import NpyFileSource

    np.save(tmp_path / "x.npy", data)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert isinstance(as_source(mapped), NpyFileSource)
    assert not isinstance(as_source(mapped[10:]), NpyFileSource)
    extractor = _ort(mlp)
    cache = FeatureCache()
    assert cache.key(extractor, mapped) == cache.key(extractor, data) != cache.key(extractor, mapped[10:])
    np.testing.assert_allclose(cache_features(extractor, mapped, progress=False), extractor(data), rtol=1e-6)


def test_a_real_extractor_at_several_layers_caches_them_side_by_side():
    from helpers.transfer import register_digits_cnn
    from zoo.extract import load_extractor
    from zoo.demos.walkthrough import digits

    model = register_digits_cnn()
    x = digits()[0][:70]
    both = load_extractor(model.name, layer=["pool2", "relu3"])
    result = extract_features(both, x, chunk_size=32, progress=False)
    assert result.features.shape == (70, 128 + 64)
    alone = load_extractor(model.name, layer="relu3")
    np.testing.assert_allclose(result.features[:, 128:], alone(x), rtol=1e-6)
    assert extract_features(alone, x, progress=False).key != result.key


@pytest.mark.slow
def test_a_killed_extraction_resumes_from_its_last_checkpoint(tmp_path):
    import signal
    import time

    from helpers.transfer import ProjectionExtractor

    data = np.random.default_rng(0).standard_normal((2000, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", data)
    code = f"""
        import time
        from helpers.transfer import ProjectionExtractor
        from zoo.features import cache_features

        class Slow(ProjectionExtractor):
            def __call__(self, batch):
                time.sleep(0.02)
                return super().__call__(batch)

        cache_features(Slow(32, 8), {str(tmp_path / 'x.npy')!r}, chunk_size=10, progress=False)
    """
    env = dict(os.environ, PYTHONPATH=str(HERE))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env)
    deadline = time.monotonic() + 120
    rows = 0
    while time.monotonic() < deadline and not rows:
        time.sleep(0.2)
        entries = FeatureCache().entries()
        rows = entries[0].rows if entries else 0
    proc.send_signal(signal.SIGKILL)  # no finally, no last checkpoint: a crash
    proc.wait()
    assert 0 < rows < len(data)
    entry = FeatureCache().entries()[0]
    assert not entry.complete

    class Counting(ProjectionExtractor):
        calls = 0

        def __call__(self, batch):
            Counting.calls += 1
            return super().__call__(batch)

    extractor = Counting(32, 8)
    features = cache_features(extractor, tmp_path / "x.npy", chunk_size=10, progress=False)
    assert Counting.calls == (len(data) - entry.rows) // 10
    # Batches of 10 and of 2000 take different float32 BLAS paths: agree to float32 precision of the scale.
    expected = ProjectionExtractor(32, 8)(data)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))


def test_in_this_process_a_chunk_is_one_batch_of_the_extractor(mlp, data):
    """The progress bar moves per batch (and a crash loses at most one): the chunks are the
    extractor's batches, not 256 rows."""
    failing = _ort(mlp, fail_after=3)
    failing.batch_size = 40
    with pytest.raises(KeyboardInterrupt):
        extract_features(failing, data, progress=False)
    assert FeatureCache().entries()[0].rows == 3 * 40  # three batches done, kept
    resumed = _ort(mlp)
    resumed.batch_size = 40
    extract_features(resumed, data, progress=False)
    assert resumed.calls == (1000 - 120) // 40  # one call per batch of 40 still missing

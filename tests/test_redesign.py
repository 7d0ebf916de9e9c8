"""The seams of the one-way layout: data sources, engines, options objects, typed records, errors
with fields, the catalog registry. Each test uses the real parts (a real ONNX extractor, real files)."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import zoo
from zoo.datasources import ArraySource, DataSource, ImageSource, NpyFileSource, as_source, is_source
from zoo.engines import ENGINES, LocalEngine, engine_for, run_extractor
from zoo.errors import (
    ChecksumError,
    InputError,
    MissingDependencyError,
    OfflineError,
    UnknownLayerError,
    UnknownModelError,
    ZooError,
)
from zoo.features import FeatureCache, extract_features
from zoo.manifests import CUT_VERSION, CutInput, CutMetadata, FeatureManifest
from zoo.options import ExtractorOptions, PretrainConfig, TrainingConfig


class Doubler:
    """The smallest extractor the cache takes: a fingerprint and a batch -> features call."""

    fingerprint = "doubler-v1"

    def __call__(self, batch):
        return np.asarray(batch, dtype=np.float32) * 2


# ---- data sources ---------------------------------------------------------------------------------


class Squares:
    """A user's own data source: rows i**2, written against the protocol alone."""

    description = "squares"
    labels = None
    classes = None
    unit = "rows"

    def __init__(self, n: int) -> None:
        self.length, self.fingerprint, self.read = n, f"squares-{n}", []

    def chunks(self, start, chunk_size):
        for lo in range(start, self.length, chunk_size):
            hi = min(lo + chunk_size, self.length)
            self.read.append((lo, hi))
            yield lo, (np.arange(lo, hi, dtype=np.float32) ** 2)[:, None], []

    def ranges(self, start, chunk_size):
        return [(lo, min(lo + chunk_size, self.length)) for lo in range(start, self.length, chunk_size)]

    def rows(self, batch):
        return len(batch)

    def paths(self):
        return []

    def for_extractor(self, extractor):
        return self


def test_a_users_own_source_is_cached_resumed_and_keyed_by_its_fingerprint():
    source = Squares(10)
    assert is_source(source) and isinstance(source, DataSource) and as_source(source) is source
    result = extract_features(Doubler(), source, chunk_size=4, progress=False)
    np.testing.assert_array_equal(np.asarray(result.features)[:, 0], 2 * np.arange(10, dtype=np.float32) ** 2)
    assert source.read == [(0, 4), (4, 8), (8, 10)]
    again = extract_features(Doubler(), Squares(10), chunk_size=4, progress=False)
    assert again.reused and again.key == result.key
    assert FeatureCache().key(Doubler(), Squares(11)) != result.key  # another fingerprint, another entry


def test_as_source_picks_one_source_per_kind(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    np.save(tmp_path / "x.npy", x)
    array, on_disk = as_source(x), as_source(tmp_path / "x.npy")
    assert isinstance(array, ArraySource) and isinstance(on_disk, NpyFileSource)
    assert array.fingerprint == on_disk.fingerprint  # the same rows hash alike, file or memory
    assert on_disk.paths() == [tmp_path / "x.npy"] and array.paths() == []
    assert on_disk.ranges(2, 3) == [(2, 5), (5, 6)]
    with pytest.raises(InputError, match="column='a' applies to Parquet input only"):
        as_source(tmp_path / "x.npy", column="a")
    with pytest.raises(InputError, match="on_error='ignore' is not one of"):
        as_source(x, on_error="ignore")
    with pytest.raises(InputError, match="pass key="):
        as_source(iter([x]))


def test_an_image_source_made_before_the_model_is_fitted_to_it_later(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(folder / label / f"{i}.png")
    source = as_source(folder, on_error="raise")
    assert isinstance(source, ImageSource) and source.length == 4 and source.classes == ["cat", "dog"]
    assert list(source.labels) == [0, 0, 1, 1]  # known before any model is chosen
    with pytest.raises(InputError, match="no size to be read at yet"):
        source.fingerprint

    class Sized(Doubler):
        input_spec = zoo.InputSpec(shape=[None, 3, 8, 8], layout="NCHW")

    fitted = source.for_extractor(Sized())
    assert fitted.on_error == "raise" and fitted.fingerprint and fitted.geometry.resize == (8, 8)
    assert fitted.for_extractor(Sized()) is fitted  # the same model: nothing to redo
    first, batch, skipped = next(fitted.chunks(0, 4))
    assert first == 0 and batch.shape == (4, 3, 8, 8) and skipped == []


# ---- engines -----------------------------------------------------------------------------------------


class Counting(LocalEngine):
    """An engine of the user's: the local one, counting the chunks it computes."""

    computed_chunks = 0

    def computed(self, source, extractor, start, chunk_size):
        for item in super().computed(source, extractor, start, chunk_size):
            type(self).computed_chunks += 1
            yield item


def test_engines_come_from_one_registry_or_are_passed_as_objects():
    assert set(ENGINES) >= {"local", "ray"}
    assert isinstance(engine_for("local"), LocalEngine)
    with pytest.raises(InputError, match="engine='gpu' is not one of 'local', 'ray'"):
        engine_for("gpu")
    with pytest.raises(InputError, match="computed"):
        engine_for(object())
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    Counting.computed_chunks = 0
    result = extract_features(Doubler(), x, chunk_size=3, progress=False, engine=Counting())
    assert Counting.computed_chunks == 4 and not result.reused
    local = extract_features(Doubler(), x, chunk_size=3, progress=False, engine="local")
    assert local.reused and local.key == result.key  # the entry does not depend on the engine


def test_run_extractor_gives_one_flat_row_per_sample_and_refuses_others():
    class TwoLayers:
        output_batch_axes = {"a": 0, "b": 1}

        def __call__(self, batch):
            return {"a": batch * 2, "b": np.swapaxes(np.stack([batch, batch]), 0, 1).swapaxes(0, 1)}

    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = run_extractor(TwoLayers(), x)
    assert out.shape == (3, 2 + 4) and out.flags.c_contiguous
    np.testing.assert_array_equal(out[:, :2], x * 2)
    with pytest.raises(InputError, match=r"returned \(2, 2\) for a batch of 3"):
        run_extractor(lambda batch: batch[:2], x)


# ---- options objects ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make, message", [
    (lambda: TrainingConfig(epochs=0), "epochs=0 and batch_size=32 must both be at least 1"),
    (lambda: TrainingConfig(val_fraction=1.0), r"val_fraction=1.0 must be in \[0, 1\)"),
    (lambda: TrainingConfig(hidden=(0,)), "hidden=\\[0\\] must be layer sizes"),
    (lambda: TrainingConfig(unfreeze=-1), "unfreeze=-1 must be 0 or more"),
    (lambda: ExtractorOptions(batch_size=0), "batch_size must be at least 1, got 0"),
    (lambda: ExtractorOptions(pooling="mean"), "pooling"),
    (lambda: ExtractorOptions(device="cpu", providers=["CPUExecutionProvider"]), "give device= or providers="),
    (lambda: PretrainConfig(cd_k=0), "cd_k must be a positive integer"),
    (lambda: PretrainConfig(sparsity=2.0), r"sparsity is a target activation in \(0, 1\)"),
])
def test_options_are_checked_when_made(make, message):
    with pytest.raises(InputError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_options_objects_are_values_passed_on_whole():
    config = TrainingConfig(hidden=[8, 4], epochs=3)
    assert config.hidden == (8, 4) and config.replace(seed=2).seed == 2 and config.seed == 0
    assert config == TrainingConfig(hidden=(8, 4), epochs=3) and pickle.loads(pickle.dumps(config)) == config
    assert PretrainConfig(sparsity=0.05).sparsity == (0.05, 0.1)  # the weight's default, filled in once
    assert ExtractorOptions(layer=["a", "b"]).layer == ("a", "b")


def test_the_cli_builds_one_training_config_from_its_flags(tmp_path):
    from click.testing import CliRunner

    from zoo.cli import cli

    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    np.save(tmp_path / "y.npy", np.arange(4))
    bad = CliRunner().invoke(cli, ["train", "m", "--name", "x", "--data", str(tmp_path / "x.npy"),
                                   "--labels", str(tmp_path / "y.npy"), "--hidden", "8,x"])
    assert bad.exit_code == 1 and "--hidden '8,x' is not a list of layer sizes" in bad.output
    help_text = CliRunner().invoke(cli, ["sweep", "--help"]).output
    for flag in ("--weight-decay", "--engine", "--actors", "--pooling", "--on-error", "--quiet", "--test"):
        assert flag in help_text


# ---- typed records -------------------------------------------------------------------------------------


def test_cut_metadata_round_trips_and_another_version_reads_as_missing(tmp_path):
    meta = CutMetadata(source_sha256="ab" * 32, model="m", spec="fc", layers=["fc"], outputs=["fc_out"],
                       output_shapes=[["batch", 4]], output_batch_axes=[0],
                       inputs=[CutInput("x", ["batch", 3], "float32", 0)], source_inputs=["x"])
    path = tmp_path / "cut.json"
    meta.write(path)
    assert CutMetadata.read(path) == meta
    assert json.loads(path.read_text())["input"]["name"] == "x"  # kept for single-input readers
    old = json.loads(path.read_text()) | {"version": CUT_VERSION - 1}
    assert CutMetadata.from_json(json.dumps(old)) is None
    assert CutMetadata.from_json("{not json") is None and CutMetadata.read(tmp_path / "none.json") is None


def test_a_cut_of_an_older_version_is_made_again(tmp_path):
    from helpers.extract import save_tiny

    from zoo.cache import cuts_folder
    from zoo.extract import load_extractor

    path = save_tiny(tmp_path)
    first = load_extractor(path, "pool")
    side = first.model_path.with_suffix(".json")
    stale = json.loads(side.read_text()) | {"version": CUT_VERSION - 1, "layers": ["wrong"]}
    side.write_text(json.dumps(stale))
    again = load_extractor(path, "pool")
    assert again.meta.layers == first.meta.layers == ["pool"]
    assert again.model_path.parent == cuts_folder(first.meta.source_sha256)


def test_feature_manifest_round_trips_and_says_when_it_resumes(tmp_path):
    manifest = FeatureManifest(extractor="e", dataset="d", length=10, next=4, rows=4, shape=[3], dtype="<f4")
    manifest.write(tmp_path / "manifest.json")
    read = FeatureManifest.read(tmp_path / "manifest.json")
    assert read == manifest and read.row_bytes() == 12
    assert read.resumes("e", "d") and not read.resumes("e", "other")
    (tmp_path / "manifest.json").write_text('{"extractor": "e"}')  # a required key missing
    assert FeatureManifest.read(tmp_path / "manifest.json") is None


# ---- errors with fields ---------------------------------------------------------------------------------


def test_errors_carry_fields_across_context_and_processes():
    error = UnknownModelError("model 'alexnt' is not in the catalog", name="alexnt", closest=["alexnet"])
    assert error.closest == ["alexnet"] and isinstance(error, KeyError)
    framed = error.with_context("cannot cut it")
    assert type(framed) is UnknownModelError and framed.closest == ["alexnet"]
    assert str(framed) == "cannot cut it: model 'alexnt' is not in the catalog"
    for original in (error, ChecksumError("bad", path="/w", expected="sha256:aa", got="sha256:bb"),
                     OfflineError("offline", missing=["w.bin"]), MissingDependencyError("m", module="ray", extra="ray")):
        copy = pickle.loads(pickle.dumps(original))  # as a Ray worker's error comes back
        assert type(copy) is type(original) and copy.fields == original.fields and str(copy) == str(original)


def test_the_catalog_and_the_layers_say_the_closest_names(tmp_path):
    from zoo.catalog import open_catalog
    from zoo.extract import load_extractor

    with pytest.raises(UnknownModelError) as info:
        open_catalog(tmp_path / "c.db").get("bvlc_alexnt")
    assert info.value.name == "bvlc_alexnt" and "bvlc_alexnet" in info.value.closest
    from helpers.extract import save_tiny

    with pytest.raises(UnknownLayerError) as layer:
        load_extractor(save_tiny(tmp_path), "pol")
    assert layer.value.layer == "pol" and "pool" in layer.value.closest


def test_checksum_and_offline_errors_say_what_was_expected_and_what_is_missing(fault_server, tmp_path):
    from zoo.transport import Expected, download

    fault_server.add("/w.bin", b"payload")
    with pytest.raises(ChecksumError) as info:
        download([fault_server.url("/w.bin")], tmp_path / "w.bin", expected=Expected(checksum="sha256:" + "0" * 64))
    assert info.value.expected == "sha256:" + "0" * 64 and info.value.got.startswith("sha256:")
    assert info.value.got != info.value.expected and info.value.path == str(tmp_path / "w.bin")
    with pytest.raises(OfflineError) as offline:
        download([fault_server.url("/w.bin")], tmp_path / "x.bin", offline=True)
    assert len(offline.value.missing) == 1 and "does not exist" in offline.value.missing[0]


# ---- the catalog registry ----------------------------------------------------------------------------------


def test_the_registry_keeps_one_catalog_per_url_and_builtins_and_closes_them_all(tmp_path):
    from zoo.catalog import REGISTRY, close_all, open_catalog

    path = tmp_path / "c.db"
    bare = open_catalog(path, builtins=False)
    assert bare.count() == 0 and open_catalog(path, builtins=False) is bare
    full = open_catalog(path)
    assert full is not bare  # builtins=True is another catalog here, not the bare one reused
    close_all()
    assert REGISTRY.open(path, builtins=False) is not bare


def test_zoo_error_is_the_base_of_every_error_and_survives_no_fields():
    assert str(ZooError()) == "ZooError" and ZooError("x").fields == {}

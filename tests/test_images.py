"""Images end to end: resize + centre crop + InputSpec against hand-computed references, image
inputs (one file, a list, a flat folder, class folders) in the extractor, the cache, train and
sweep; Keras-style pooling of cuts; onnxruntime devices."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zoo.errors import InputError
from zoo.records import InputSpec
from zoo.options import ExtractorOptions, TrainingConfig
from zoo.datasources import as_source

BVLC_MEAN = [104.0, 117.0, 123.0]


# --- helpers ----------------------------------------------------------------------------------------

def conv_net(path: Path, size: int, layout: str = "NCHW", seed: int = 0) -> Path:
    """A small real CNN: conv1 -> relu1 -> conv2 -> relu2 -> gap -> fc (2 classes), in either layout.

    An NHWC net transposes to NCHW for its convolutions and back after relu2 (tensor
    ``relu2_nhwc``), as tf2onnx exports Keras models.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name, *dims):
        return numpy_helper.from_array(rng.normal(0, 0.3, dims).astype(np.float32), name)

    nodes = []
    first = "x"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], name="to_nchw", perm=[0, 3, 1, 2]))
        first = "x_nchw"
    nodes += [
        helper.make_node("Conv", [first, "w1", "b1"], ["conv1"], name="conv1", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("Conv", ["relu1", "w2", "b2"], ["conv2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
    ]
    if layout == "NHWC":
        nodes += [
            helper.make_node("Transpose", ["relu2"], ["relu2_nhwc"], name="relu2_nhwc", perm=[0, 2, 3, 1]),
            helper.make_node("ReduceMean", ["relu2_nhwc"], ["flat"], name="gap", axes=[1, 2], keepdims=0),
        ]
    else:
        nodes += [
            helper.make_node("GlobalAveragePool", ["relu2"], ["gap"], name="gap"),
            helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
        ]
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc"], name="fc", transB=1))
    inits = [weight("w1", 4, 3, 3, 3), weight("b1", 4), weight("w2", 5, 4, 3, 3), weight("b2", 5),
             weight("fc_w", 2, 5), weight("fc_b", 2)]
    dims = ["N", 3, size, size] if layout == "NCHW" else ["N", size, size, 3]
    graph = helper.make_graph(
        nodes, "conv_net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("fc", TensorProto.FLOAT, ["N", 2])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="zoo-tests")
    model.ir_version = 8
    onnx.save(model, path)
    return path


def register(name: str, path: Path, **spec) -> None:
    from zoo.catalog import open_catalog
    from zoo.hashes import file_hash
    from zoo.records import Artifact, Model

    open_catalog().add_model(Model(
        name=name, framework="onnx",
        artifacts=[Artifact(role="model", filename=path.name, path=str(path), sha256=file_hash(path))],
        input=InputSpec(**spec),
    ))


def photo(path: Path, height: int, width: int, seed: int = 0) -> Path:
    """A random RGB photo of the given size (PNG: lossless, so the test knows its pixels)."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def bvlc_reference(path: Path, crop: int) -> np.ndarray:
    """What Caffe's BVLC pipeline feeds: shorter side 256, centre crop, BGR, minus the mean pixel, CHW."""
    from PIL import Image

    with Image.open(path) as image:
        w, h = image.size
        # shorter side to 256, the other scaled (truncated) to keep the aspect
        size = (int(256 * w / h), 256) if h <= w else (256, int(256 * h / w))
        pixels = np.asarray(image.convert("RGB").resize(size, Image.BILINEAR), dtype=np.float32)
    top, left = (pixels.shape[0] - crop) // 2, (pixels.shape[1] - crop) // 2
    pixels = pixels[top:top + crop, left:left + crop]
    bgr = pixels[:, :, ::-1] - np.asarray(BVLC_MEAN, np.float32)
    return bgr.transpose(2, 0, 1)


def keras_reference(path: Path, size: int) -> np.ndarray:
    """Keras's InceptionV3 pipeline: resize straight to the input size, RGB, (x - 127.5) / 127.5, HWC."""
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
    return (pixels - 127.5) / 127.5


BVLC_SPEC = dict(shape=[None, 3, 227, 227], layout="NCHW", mean=BVLC_MEAN, channel_order="BGR", pixel_range=[0, 255])


# --- zoo.images -------------------------------------------------------------------------------------

def test_bvlc_preprocessing_equals_the_hand_computed_reference(tmp_path):
    from zoo import images

    spec = InputSpec(**BVLC_SPEC)
    geo = images.geometry(spec)
    assert (geo.resize, geo.crop) == (256, (227, 227))  # BVLC: 256 then a 227 crop
    assert images.geometry(InputSpec(**{**BVLC_SPEC, "shape": [None, 3, 224, 224]})).crop == (224, 224)
    wide, tall = photo(tmp_path / "wide.png", 300, 400), photo(tmp_path / "tall.png", 410, 260, seed=1)
    for path in (wide, tall):
        got = images.preprocess(images.load_images([path], geo), spec)
        assert got.shape == (1, 3, 227, 227) and got.dtype == np.float32
        np.testing.assert_allclose(got[0], bvlc_reference(path, 227), atol=1e-4)
    # raw pixels given as an array of another size go through the same resize and crop
    from PIL import Image

    raw = np.asarray(Image.open(wide), dtype=np.float32)[None]
    # the float resize differs from the 8-bit one by its rounding only
    np.testing.assert_allclose(images.preprocess(raw, spec)[0], bvlc_reference(wide, 227), atol=1.0 + 1e-3)


def test_keras_preprocessing_equals_the_hand_computed_reference(tmp_path):
    from zoo import images

    spec = InputSpec(shape=[None, 48, 48, 3], layout="NHWC", mean=[127.5] * 3, std=[127.5] * 3,
                     channel_order="RGB", pixel_range=[0, 255])
    geo = images.geometry(spec)
    assert (geo.resize, geo.crop) == ((48, 48), None)  # Keras: straight to the input size, no crop
    path = photo(tmp_path / "a.png", 70, 100)
    got = images.preprocess(images.load_images([path], geo), spec)
    assert got.shape == (1, 48, 48, 3)
    np.testing.assert_allclose(got[0], keras_reference(path, 48), atol=1e-5)
    # torchvision-style: pixels on [0, 1], then mean/std; an explicit resize + crop in the spec wins
    torch_style = InputSpec(shape=[None, 3, 32, 32], layout="NCHW", mean=[0.485, 0.456, 0.406],
                            std=[0.229, 0.224, 0.225], channel_order="RGB", pixel_range=[0, 1],
                            resize=[40, 50], crop=[32, 32])
    geo = images.geometry(torch_style)
    assert (geo.resize, geo.crop) == ((40, 50), (32, 32))
    got = images.preprocess(images.to_pixel_range(images.load_images([path], geo), torch_style), torch_style)
    from PIL import Image

    pixels = np.asarray(Image.open(path).resize((50, 40), Image.BILINEAR), dtype=np.float32)[4:36, 9:41] / 255
    want = ((pixels - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
    np.testing.assert_allclose(got[0], want, atol=1e-5)


def test_spec_sizes_are_checked_and_round_trip_through_the_index(tmp_path):
    from zoo import images
    from zoo.errors import IndexFormatError
    from zoo.index import parse_index

    def index(**input_fields):
        return {"format": "zoo-index/1", "name": "acme", "models": [{
            "name": "net.acme", "framework": "onnx", "input": {"shape": [None, 3, 224, 224], **input_fields},
            "files": [{"role": "model", "filename": "net.onnx", "url": "https://example.org/net.onnx"}]}]}

    (model,) = parse_index(index(resize=256, crop=[224, 224]), source="acme")
    assert (model.input.resize, model.input.crop) == (256, [224, 224])
    assert InputSpec.from_dict(model.input.to_dict()) == model.input
    (model,) = parse_index(index(resize=[240, 320]), source="acme")
    assert model.input.resize == [240, 320]
    with pytest.raises(IndexFormatError, match="crop"):
        parse_index(index(crop=224), source="acme")
    with pytest.raises(IndexFormatError, match="resize"):
        parse_index(index(resize=[0, 3]), source="acme")
    with pytest.raises(InputError, match="smaller than the 224x224 crop"):
        images.load_image(photo(tmp_path / "p.png", 100, 100), images.Geometry(200, (224, 224)))


# --- the extractor on image files ---------------------------------------------------------------------

def test_extractor_takes_one_file_a_list_and_a_flat_folder(tmp_path):
    from zoo.extract import load_extractor

    register("bvlc_like", conv_net(tmp_path / "net.onnx", 227), **BVLC_SPEC)
    folder = tmp_path / "photos"
    paths = [photo(folder / f"{i}.png", 240 + 20 * i, 300, seed=i) for i in range(3)]
    (folder / "notes.txt").write_text("not an image")  # a flat folder's non-images are left out
    extractor = load_extractor("bvlc_like", "relu2")
    plain = extractor(np.stack([bvlc_reference(p, 227) for p in paths]))
    np.testing.assert_allclose(extractor(paths), plain, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(extractor(folder), plain, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(extractor(str(paths[1])), plain[1:2], rtol=1e-4, atol=1e-4)
    # raw pixels without the spec are another thing entirely
    raw = load_extractor("bvlc_like", "relu2", options=ExtractorOptions(preprocess=False))
    assert not np.allclose(raw(paths), plain, atol=1e-2)
    with pytest.raises(InputError, match="does not exist"):
        extractor(tmp_path / "missing")
    with pytest.raises(InputError, match="holds no images"):
        extractor(_empty(tmp_path))
    # the scikit-learn transformer passes paths through
    from zoo.extract import ExtractorTransformer

    flat = ExtractorTransformer("bvlc_like", "relu2").fit_transform(paths)
    np.testing.assert_allclose(flat, plain.reshape(3, -1), rtol=1e-4, atol=1e-4)


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def test_cache_preprocesses_flat_folders_lists_and_class_folders(tmp_path):
    from zoo.extract import load_extractor
    from zoo.features import extract_features

    register("bvlc_like", conv_net(tmp_path / "net.onnx", 227), **BVLC_SPEC)
    extractor = load_extractor("bvlc_like", "relu2")
    flat = [photo(tmp_path / "flat" / f"{i}.png", 260, 250 + 30 * i, seed=i) for i in range(3)]
    want = extractor(np.stack([bvlc_reference(p, 227) for p in flat]))
    from_folder = extract_features(extractor, tmp_path / "flat", progress=False)
    assert from_folder.classes is None and from_folder.labels is None
    np.testing.assert_allclose(from_folder.features, want, rtol=1e-4, atol=1e-4)
    from_list = extract_features(extractor, [str(p) for p in flat], progress=False)
    np.testing.assert_allclose(from_list.features, want, rtol=1e-4, atol=1e-4)
    single = extract_features(extractor, flat[2], progress=False)
    np.testing.assert_allclose(single.features, want[2:], rtol=1e-4, atol=1e-4)
    # an extractor loaded with preprocess=True gets raw pixels from the cache, and the same features
    cooked = load_extractor("bvlc_like", "relu2", options=ExtractorOptions(preprocess=True))
    np.testing.assert_allclose(extract_features(cooked, tmp_path / "flat", progress=False).features, want,
                               rtol=1e-4, atol=1e-4)
    # preprocess=False: pixels as decoded (0-255 RGB, resized and cropped), another cache entry
    raw = extract_features(extractor, as_source(tmp_path / "flat", extractor, preprocess=False), progress=False)
    assert raw.key != from_folder.key and not np.allclose(raw.features, want, atol=1e-2)


def test_train_and_sweep_on_an_image_folder_cache_preprocessed_features(tmp_path):
    from zoo.catalog import open_catalog
    from zoo.extract import load_extractor
    from zoo.features import FeatureCache
    from zoo.layer_sweep import sweep
    from zoo.transfer import train

    register("bvlc_like", conv_net(tmp_path / "net.onnx", 227), **BVLC_SPEC)
    root = tmp_path / "pets"
    files = []
    for c, label in enumerate(("cat", "dog")):
        for i in range(4):
            files.append(photo(root / label / f"{i}.png", 240 + 10 * i, 280, seed=10 * c + i))
    result = train("bvlc_like", root, None, new_name="pets", training=TrainingConfig(epochs=1, progress=False),
                   extractor=ExtractorOptions(layer="relu2"))
    entry = FeatureCache().load(result.cache_key)
    plain = load_extractor("bvlc_like", "relu2")
    want = plain(np.stack([bvlc_reference(p, 227) for p in files]))
    np.testing.assert_allclose(entry.features, want, rtol=1e-4, atol=1e-4)
    raw = np.stack([np.asarray(_resized_crop(p), np.float32).transpose(2, 0, 1) for p in files])
    assert not np.allclose(entry.features, plain(raw), atol=1e-2)  # what zoo cached before
    # the trained model keeps the base's preprocessing, so images reach it the same way
    saved = open_catalog().get("pets").input
    assert (saved.mean, saved.channel_order, saved.shape) == (BVLC_MEAN, "BGR", [None, 3, 227, 227])

    swept = sweep("bvlc_like", root, layers=["relu2"], training=TrainingConfig(epochs=1, progress=False))
    assert swept.rows[0].reused  # the same preprocessed features as train's
    again = FeatureCache().load(FeatureCache().key(plain, root))
    np.testing.assert_allclose(again.features, want, rtol=1e-4, atol=1e-4)
    # --no-preprocess caches what the net would see without the spec
    unprocessed = sweep("bvlc_like", root, layers=["relu2"], training=TrainingConfig(epochs=1, progress=False),
                        extractor=ExtractorOptions(preprocess=False))
    assert not unprocessed.rows[0].reused


def _resized_crop(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        w, h = image.size
        image = image.convert("RGB").resize((int(256 * w / h), 256) if h <= w else (256, int(256 * h / w)),
                                            Image.BILINEAR)
        left, top = (image.width - 227) // 2, (image.height - 227) // 2
        return image.crop((left, top, left + 227, top + 227))


def test_train_on_a_flat_folder_needs_labels_and_drops_unreadable_files(tmp_path):
    from zoo.transfer import train

    register("small", conv_net(tmp_path / "net.onnx", 32), shape=[None, 3, 32, 32], layout="NCHW")
    for i in range(6):
        photo(tmp_path / "flat" / f"{i}.png", 40, 40, seed=i)
    (tmp_path / "flat" / "7.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError, match="labels are missing"):
        train("small", tmp_path / "flat", None, new_name="m", training=TrainingConfig(epochs=1, progress=False),
              extractor=ExtractorOptions(layer="relu2"))
    labels = np.array([0, 1, 0, 1, 0, 1, 1])  # the last one is the broken file's
    result = train("small", tmp_path / "flat", labels, new_name="m",
                   training=TrainingConfig(epochs=1, progress=False), extractor=ExtractorOptions(layer="relu2"))
    assert len(result.fit.history) == 1


# --- pooling ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout, axes, layer", [("NCHW", (2, 3), "relu2"), ("NHWC", (1, 2), "relu2_nhwc")])
def test_pooling_averages_or_maxes_the_spatial_axes(tmp_path, layout, axes, layer):
    from zoo.extract import load_extractor

    path = conv_net(tmp_path / "net.onnx", 16, layout)
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16) if layout == "NCHW" else (3, 16, 16, 3)).astype(np.float32)
    plain = load_extractor(path, layer)
    avg, biggest = load_extractor(path, layer, options=ExtractorOptions(pooling="avg")), load_extractor(path,
                                  layer, options=ExtractorOptions(pooling="max"))
    full = plain(x)
    assert full.ndim == 4 and avg.output_shape == (None, 5) == biggest.output_shape
    np.testing.assert_allclose(avg(x), full.mean(axis=axes), rtol=1e-5)
    np.testing.assert_allclose(biggest(x), full.max(axis=axes), rtol=1e-6)
    assert len({plain.fingerprint, avg.fingerprint, biggest.fingerprint}) == 3
    # several layers: 4-D outputs are pooled, vectors pass unchanged
    both = load_extractor(path, [layer, "fc"], options=ExtractorOptions(pooling="avg"))(x)
    np.testing.assert_allclose(both[layer], full.mean(axis=axes), rtol=1e-5)
    np.testing.assert_allclose(both["fc"], plain_fc(path, x), rtol=1e-5)
    with pytest.raises(InputError, match="not one of avg, max"):
        load_extractor(path, layer, options=ExtractorOptions(pooling="mean"))


def plain_fc(path: Path, x: np.ndarray) -> np.ndarray:
    from zoo.extract import load_extractor

    return load_extractor(path, "fc")(x)


def test_pooling_module_is_scriptable_and_saveable(tmp_path):
    import torch

    from zoo.pooling import pool_module

    x = torch.randn(2, 4, 5, 3)
    module = torch.jit.script(pool_module("max", "NHWC"))
    torch.testing.assert_close(module(x), x.amax(dim=(1, 2)))
    torch.save(pool_module("avg", "NCHW"), tmp_path / "pool.pt")
    loaded = torch.load(tmp_path / "pool.pt", weights_only=False)
    torch.testing.assert_close(loaded(x), x.mean(dim=(2, 3)))


def test_to_torch_pools_and_preprocesses_as_the_extractor_does(tmp_path):
    import torch

    from zoo.extract import load_extractor
    from zoo.images import preprocess

    register("small", conv_net(tmp_path / "net.onnx", 16), shape=[None, 3, 16, 16], layout="NCHW",
             mean=[120.0, 110.0, 100.0], std=[60.0, 50.0, 40.0], channel_order="BGR")
    pixels = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3)).astype(np.float32)  # NHWC, RGB
    extractor = load_extractor("small", "relu2", options=ExtractorOptions(pooling="max"))
    want = extractor(preprocess(pixels, extractor.input_spec))
    assert want.shape == (3, 5)
    net = extractor.to_torch()
    raw = extractor.to_torch(preprocess=True)
    with torch.no_grad():
        pooled = net(torch.from_numpy(preprocess(pixels, extractor.input_spec)))
        from_pixels = raw(torch.from_numpy(pixels))
    np.testing.assert_allclose(pooled.numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(from_pixels.numpy(), want, rtol=1e-5, atol=1e-5)
    scripted = torch.jit.script(raw)
    with torch.no_grad():
        np.testing.assert_allclose(scripted(torch.from_numpy(pixels)).numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_train_with_pooling_saves_a_model_that_pools(tmp_path):
    import onnxruntime as ort

    from zoo.extract import load_extractor
    from zoo.transfer import train

    register("small", conv_net(tmp_path / "net.onnx", 32), shape=[None, 3, 32, 32], layout="NCHW")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 3, 32, 32)).astype(np.float32)
    y = np.arange(24) % 2
    for unfreeze in (0, 1):
        result = train("small", x, y, new_name=f"pooled{unfreeze}",
                       training=TrainingConfig(unfreeze=unfreeze, epochs=2, progress=False),
                       extractor=ExtractorOptions(layer="relu2", pooling="avg"))
        if unfreeze == 0:
            features = load_extractor("small", "relu2", options=ExtractorOptions(pooling="avg"))(x)
            assert features.shape == (24, 5)
        onnx_path = result.model.artifact("model").path
        logits = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        import torch

        with torch.no_grad():
            np.testing.assert_allclose(logits, result.module(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)
        assert result.model.meta["pooling"] == "avg" and logits.shape == (24, 2)


# --- devices ------------------------------------------------------------------------------------------

def test_device_cpu_works_and_an_unavailable_one_names_the_providers(tmp_path):
    from zoo.extract import execution_providers, load_extractor

    path = conv_net(tmp_path / "net.onnx", 16)
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    on_cpu = load_extractor(path, "fc", options=ExtractorOptions(device="cpu"))
    np.testing.assert_allclose(on_cpu(x), load_extractor(path, "fc")(x), rtol=1e-6)
    assert on_cpu.session.get_providers() == ["CPUExecutionProvider"]
    assert execution_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    for device in ("cuda", "cuda:1", ["CUDAExecutionProvider"]) if not _has_cuda() else ():
        with pytest.raises(InputError, match=r"CUDAExecutionProvider.*available: .*CPUExecutionProvider.*device='cpu'"):
            load_extractor(path, "fc", options=ExtractorOptions(device=device))
    with pytest.raises(InputError, match="not one of"):
        load_extractor(path, "fc", options=ExtractorOptions(device="tpu"))
    with pytest.raises(InputError, match="not both"):
        load_extractor(path, "fc", options=ExtractorOptions(device="cpu", providers=["CPUExecutionProvider"]))


def _has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


# --- the CLI --------------------------------------------------------------------------------------------

def test_cli_extract_images_with_pooling_and_device(tmp_path):
    import json

    from click.testing import CliRunner

    from zoo.cli import cli
    from zoo.extract import load_extractor

    register("bvlc_like", conv_net(tmp_path / "net.onnx", 227), **BVLC_SPEC)
    paths = [photo(tmp_path / "flat" / f"{i}.png", 256, 300, seed=i) for i in range(2)]
    out = tmp_path / "f.npy"
    runner = CliRunner()
    done = runner.invoke(cli, ["extract", "bvlc_like", "-l", "relu2", "-i", str(tmp_path / "flat"), "-o", str(out),
                               "--pooling", "avg", "--device", "cpu", "--json"])
    assert done.exit_code == 0, done.output
    want = load_extractor("bvlc_like", "relu2")(np.stack([bvlc_reference(p, 227) for p in paths])).mean(axis=(2, 3))
    np.testing.assert_allclose(np.load(out), want, rtol=1e-4, atol=1e-4)
    bad = runner.invoke(cli, ["extract", "bvlc_like", "-l", "relu2", "-i", str(paths[0]), "-o", str(out),
                              "--device", "cuda"])
    if not _has_cuda():
        assert bad.exit_code == 1 and "CUDAExecutionProvider" in bad.output and "Traceback" not in bad.output
        assert len(bad.output.strip().splitlines()) == 1
    raw = runner.invoke(cli, ["extract", "bvlc_like", "-l", "relu2", "-i", str(paths[0]), "-o", str(out),
                              "--no-preprocess", "--pooling", "max"])
    assert raw.exit_code == 0, raw.output
    assert not np.allclose(np.load(out), want[:1], atol=1e-2)
    # several layers at once (an .npz) from a flat folder
    npz = tmp_path / "f.npz"
    both = runner.invoke(cli, ["extract", "bvlc_like", "-l", "relu2", "-l", "fc", "-i", str(tmp_path / "flat"),
                               "-o", str(npz), "--pooling", "avg", "--json"])
    assert both.exit_code == 0, both.output
    np.testing.assert_allclose(np.load(npz)["relu2"], want, rtol=1e-4, atol=1e-4)
    assert json.loads(both.output)["rows"] == 2


def test_cli_train_takes_preprocess_and_pooling(tmp_path):
    from click.testing import CliRunner

    from zoo.cli import cli

    register("small", conv_net(tmp_path / "net.onnx", 32), shape=[None, 3, 32, 32], layout="NCHW",
             mean=[120.0, 110.0, 100.0], std=[60.0, 60.0, 60.0])
    for c in ("a", "b"):
        for i in range(3):
            photo(tmp_path / "imgs" / c / f"{i}.png", 36, 44, seed=i + (10 if c == "b" else 0))
    args = ["train", "small", "-l", "relu2", "-d", str(tmp_path / "imgs"), "--epochs", "1", "--pooling", "max",
            "--val-fraction", "0", "--json"]
    done = CliRunner().invoke(cli, [*args, "--name", "mine", "--device", "cpu"])
    assert done.exit_code == 0, done.output
    no_pre = CliRunner().invoke(cli, [*args, "--name", "mine2", "--no-preprocess"])
    assert no_pre.exit_code == 0, no_pre.output
    import json

    assert json.loads(done.output)["cache_key"] != json.loads(no_pre.output)["cache_key"]
    swept = CliRunner().invoke(cli, ["sweep", "small", "-l", "relu1,relu2", "-d", str(tmp_path / "imgs"), "--epochs",
                                     "1", "--pooling", "avg", "--json"])
    assert swept.exit_code == 0, swept.output
    assert [row["features"] for row in json.loads(swept.output)["rows"]] == [[4], [5]]
    if not _has_cuda():
        gpu = CliRunner().invoke(cli, [*args, "--name", "gpu", "--device", "cuda:0"])
        assert gpu.exit_code == 1 and "CUDAExecutionProvider" in gpu.output and "Traceback" not in gpu.output


@pytest.mark.slow
def test_a_real_architecture_with_its_published_spec_takes_photos(tmp_path):
    """AlexNet (random weights) with the built-in catalog's bvlc_alexnet input spec, fed photo files."""
    import json

    from helpers.extract import save_randomized

    from zoo.extract import load_extractor

    builtin = json.loads((Path(__file__).parent.parent / "zoo" / "data" / "caffe.json").read_text())
    published = next(m for m in builtin["models"] if m["name"] == "bvlc_alexnet")["input"]
    published.pop("shape")  # this export takes 224x224 (the ONNX zoo's); the cut says so
    published.pop("name")  # the input tensor of this export is named differently
    register("alexnet.photos", save_randomized("bvlc_alexnet", tmp_path), **published)
    paths = [photo(tmp_path / "p" / f"{i}.png", 300 + 40 * i, 260, seed=i) for i in range(2)]
    plain = load_extractor("alexnet.photos", "conv5")
    pooled = load_extractor("alexnet.photos", "conv5", options=ExtractorOptions(pooling="max"))
    want = plain(np.stack([bvlc_reference(p, 224) for p in paths]))
    np.testing.assert_allclose(plain(paths), want, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(pooled(tmp_path / "p"), want.max(axis=(2, 3)), rtol=1e-3, atol=1e-3)
    assert pooled.output_shape == (None, 256)

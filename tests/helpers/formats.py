"""Real model files in every format zoo reads, built once per test process (TF is slow to start)."""
from __future__ import annotations

import atexit
import os
import shutil
import sqlite3  # noqa: F401  before tensorflow: TF's own SQLite (no FTS5) would otherwise win
import struct
import tempfile
from pathlib import Path

# Carried by the project (tests/data/caffe), so the suite needs nothing beside the checkout.
LENET_PROTOTXT = Path(__file__).resolve().parents[1] / "data" / "caffe" / "lenet" / "deploy.prototxt"

_BUILT: dict[str, dict[str, Path]] = {}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def write_caffemodel(path: Path, layers: list[tuple[str, str, list[list[int]]]], name: str = "net") -> Path:
    """A minimal binary NetParameter: named layers with zero-filled blobs of the given shapes.

    Encoded by hand (NetParameter.name=1, layer=100; LayerParameter.name=1, type=2, blobs=7;
    BlobProto.data=5 packed, shape=7; BlobShape.dim=1 packed) so the test does not rely on the
    converter it checks.
    """
    body = _field(1, name.encode())
    for layer_name, layer_type, shapes in layers:
        blobs = b""
        for shape in shapes:
            count = 1
            for d in shape:
                count *= d
            dims = b"".join(_varint(d) for d in shape)
            blob = _field(5, struct.pack(f"<{count}f", *([0.01] * count))) + _field(7, _field(1, dims))
            blobs += _field(7, blob)
        layer = _field(1, layer_name.encode()) + _field(2, layer_type.encode()) + blobs
        body += _field(100, layer)
    path.write_bytes(body)
    return path


def caffe_pair(folder: Path, stem: str = "lenet") -> tuple[Path, Path]:
    """LeNet's deploy.prototxt (carried in tests/data/caffe), with a caffemodel of the right shapes."""
    folder.mkdir(parents=True, exist_ok=True)
    prototxt = folder / f"{stem}.prototxt"
    shutil.copy(LENET_PROTOTXT, prototxt)
    weights = folder / f"{stem}.caffemodel"
    try:
        from converters.caffe import make_random_caffemodel  # the Caffe converter's own writer
    except ImportError:
        make_random_caffemodel = None
    if make_random_caffemodel is not None:
        make_random_caffemodel(prototxt, weights, seed=0)
    else:
        write_caffemodel(weights, [
            ("conv1", "Convolution", [[20, 1, 5, 5], [20]]),
            ("conv2", "Convolution", [[50, 20, 5, 5], [50]]),
            ("ip1", "InnerProduct", [[500, 800], [500]]),
            ("ip2", "InnerProduct", [[10, 500], [10]]),
        ], name="LeNet")
    return prototxt, weights


def onnx_file(path: Path, scale: float = 2.0) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[helper.make_tensor("s", TensorProto.FLOAT, [1], [scale])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def torch_files(folder: Path) -> dict[str, Path]:
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return torch.relu(self.fc(x))

    torch.manual_seed(0)
    module = Tiny()
    scripted = folder / "tiny_script.pt"
    torch.jit.script(module).save(str(scripted))
    checkpoint = folder / "tiny_state.pt"
    torch.save(module.state_dict(), checkpoint)
    return {"torchscript": scripted, "torch_checkpoint": checkpoint}


def tensorflow_files(folder: Path) -> dict[str, Path]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    keras = tf.keras
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(2, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(2, name="fc")(x)
    model = keras.Model(inputs, outputs, name="tiny")

    files: dict[str, Path] = {}
    files["keras"] = folder / "tiny.keras"
    model.save(files["keras"])
    files["h5"] = folder / "tiny_full.h5"
    model.save(files["h5"])
    files["h5_weights"] = folder / "tiny.weights.h5"
    model.save_weights(files["h5_weights"])

    function = tf.function(lambda x: model(x)).get_concrete_function(
        tf.TensorSpec([1, 8, 8, 3], tf.float32, name="image"))
    frozen = convert_variables_to_constants_v2(function)
    files["frozen_graph"] = folder / "tiny_frozen.pb"
    files["frozen_graph"].write_bytes(frozen.graph.as_graph_def().SerializeToString())

    module = tf.Module()
    module.v = tf.Variable(tf.ones([4]))
    module.f = tf.function(lambda x: x * module.v, input_signature=[tf.TensorSpec([None, 4])])
    files["saved_model"] = folder / "tiny_saved_model"
    tf.saved_model.save(module, str(files["saved_model"]))

    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    files["tflite"] = folder / "tiny.tflite"
    files["tflite"].write_bytes(converter.convert())
    return files


def model_files(kind: str) -> dict[str, Path]:
    """Built files by format name, cached for the whole test process.

    kind "light": onnx, caffe (graph + weights), torchscript, torch checkpoint;
    kind "tensorflow": keras, h5, h5_weights, frozen_graph, saved_model, tflite.
    Tests must copy a file before changing or moving it.
    """
    if kind not in _BUILT:
        folder = Path(tempfile.mkdtemp(prefix=f"zoo-formats-{kind}-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        if kind == "light":
            files = {"onnx": onnx_file(folder / "tiny.onnx")}
            files["caffe_graph"], files["caffe_weights"] = caffe_pair(folder / "caffe")
            files.update(torch_files(folder))
        else:
            files = tensorflow_files(folder)
        _BUILT[kind] = files
    return _BUILT[kind]

"""Tiny real models in every source format, built once per test session, for the conversion tests."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from zoo.records import Artifact, Model


def _tf():
    import sqlite3  # noqa: F401  (before TensorFlow, whose bundled SQLite lacks FTS5)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf


def build_keras_functional(folder: Path) -> dict[str, Path]:
    """A small CNN with VGG/ResNet-style layer names, saved as .keras and as a full-model .h5."""
    _tf()
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="block1_conv1")(inp)
    x = keras.layers.BatchNormalization(name="block1_bn")(x)
    x = keras.layers.Activation("relu", name="conv5_block3_out")(x)
    x = keras.layers.MaxPooling2D(name="block4_pool")(x)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="block5_conv1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    out = keras.layers.Dense(5, activation="softmax", name="predictions")(x)
    model = keras.Model(inp, out, name="tiny_cnn")
    # Non-trivial batch-norm statistics, so that a wrong fold would show.
    bn = model.get_layer("block1_bn")
    bn.set_weights([w + 0.3 * (i + 1) for i, w in enumerate(bn.get_weights())])
    paths = {"keras": folder / "functional.keras", "h5": folder / "functional.h5"}
    model.save(paths["keras"])
    model.save(paths["h5"])
    return paths


def build_keras_sequential(folder: Path) -> Path:
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((12,), name="features"),
        keras.layers.Dense(16, activation="tanh", name="hidden"),
        keras.layers.Dropout(0.5, name="drop"),
        keras.layers.Dense(3, name="logits"),
    ], name="tiny_mlp")
    path = folder / "sequential.keras"
    model.save(path)
    return path


def build_keras_application(folder: Path) -> tuple[Path, dict]:
    """A Keras Applications architecture with weights only, as the built-in index ships them."""
    import keras

    keras.utils.set_random_seed(2)
    options = {"alpha": 0.25, "input_shape": [32, 32, 3], "include_top": True, "classes": 7}
    model = keras.applications.MobileNet(weights=None, **{**options, "input_shape": (32, 32, 3)})
    path = folder / "mobilenet.weights.h5"
    model.save_weights(path)
    # The same weights in the legacy Keras 2 layout the built-in index's downloads use.
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(folder / "mobilenet_legacy.h5", "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, model)
    # What the saved weights compute, to prove a conversion loaded them (not fresh random ones).
    import numpy as np

    probe = np.random.default_rng(9).standard_normal((2, 32, 32, 3)).astype("float32")
    np.save(folder / "mobilenet_probe_in.npy", probe)
    np.save(folder / "mobilenet_probe_out.npy", model(probe, training=False).numpy())
    return path, options


def build_saved_model(folder: Path) -> Path:
    """A TF2 SavedModel whose only signature is a custom one ("embed"), with two named outputs."""
    tf = _tf()

    class Embedder(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([6, 4], seed=[3, 4]), name="w")
            self.b = tf.Variable(tf.linspace(-1.0, 1.0, 4), name="b")

        @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32, name="tokens")])
        def embed(self, tokens):
            with tf.name_scope("encoder"):
                hidden = tf.nn.relu(tf.matmul(tokens, self.w) + self.b)
            return {"embedding": hidden, "norm": tf.norm(hidden, axis=1, keepdims=True)}

    module = Embedder()
    path = folder / "custom_signature"
    tf.saved_model.save(module, str(path), signatures={"embed": module.embed})
    return path


def build_saved_model_with_optimizer(folder: Path) -> Path:
    """A TF1-style SavedModel (SavedModelBuilder) whose checkpoint carries Adam slot variables."""
    import numpy as np

    tf = _tf()
    path = folder / "tf1_with_adam"
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        target = tf.compat.v1.placeholder(tf.float32, [None, 2], name="target")
        with tf.compat.v1.variable_scope("dense1"):
            w = tf.compat.v1.get_variable("w", [4, 8], initializer=tf.compat.v1.random_normal_initializer(seed=1))
            b = tf.compat.v1.get_variable("b", [8], initializer=tf.compat.v1.zeros_initializer())
            hidden = tf.nn.relu(tf.matmul(x, w) + b)
        with tf.compat.v1.variable_scope("logits"):
            w2 = tf.compat.v1.get_variable("w", [8, 2], initializer=tf.compat.v1.random_normal_initializer(seed=2))
            scores = tf.identity(tf.matmul(hidden, w2), name="scores")
        loss = tf.reduce_mean(tf.square(scores - target))
        train = tf.compat.v1.train.AdamOptimizer(0.05).minimize(loss)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            rng = np.random.default_rng(0)
            for _ in range(3):  # a few steps, so the slots and the weights hold trained values
                sess.run(train, {x: rng.standard_normal((8, 4)).astype("float32"),
                                 target: rng.standard_normal((8, 2)).astype("float32")})
            builder = tf.compat.v1.saved_model.Builder(str(path))
            signature = tf.compat.v1.saved_model.predict_signature_def({"features": x}, {"scores": scores})
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": signature})
            builder.save()
    return path


def build_saved_model_with_slots(folder: Path) -> Path:
    """A TF2 SavedModel whose object graph carries optimizer slot variables (Adam's m and v).

    tf.saved_model.load in current releases rejects it ("'_UserObject' object has no attribute
    'add_slot'"), like SavedModels written by tf.keras 2.x with their optimizer. The output for a
    fixed input is saved beside it, to prove a conversion restored the trained weights.
    """
    import numpy as np

    tf = _tf()

    class Regressor(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([4, 2], seed=[1, 2]), name="w")
            self.optimizer = tf.compat.v1.train.AdamOptimizer(0.1)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"scores": tf.matmul(x, self.w)}

    net = Regressor()
    for _ in range(3):
        net.optimizer.minimize(lambda: tf.reduce_sum(net.serve(tf.ones((2, 4)))["scores"] ** 2), var_list=[net.w])
    path = folder / "tf2_with_slots"
    tf.saved_model.save(net, str(path), signatures={"serving_default": net.serve})
    probe = np.arange(8, dtype="float32").reshape(2, 4) / 8
    np.save(folder / "slots_probe_out.npy", net.serve(tf.constant(probe))["scores"].numpy())
    return path


def build_frozen_graph(folder: Path) -> Path:
    """A frozen GraphDef: one Placeholder, a conv net, one unconsumed output."""
    tf = _tf()
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    kernel = tf.Variable(tf.random.stateless_normal([3, 3, 3, 4], seed=[5, 6]))
    dense = tf.Variable(tf.random.stateless_normal([4, 3], seed=[7, 8]))

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32, name="input")])
    def net(image):
        with tf.name_scope("features"):
            x = tf.nn.relu(tf.nn.conv2d(image, kernel, 1, "SAME"))
            x = tf.reduce_mean(x, axis=[1, 2])
        return tf.nn.softmax(tf.matmul(x, dense), name="probabilities")

    frozen = convert_variables_to_constants_v2(net.get_concrete_function())
    path = folder / "frozen.pb"
    path.write_bytes(frozen.graph.as_graph_def().SerializeToString())
    return path


def build_tflite(folder: Path) -> Path:
    import keras

    tf = _tf()
    keras.utils.set_random_seed(3)
    inp = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = keras.layers.Flatten(name="flat")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(x))
    data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    path = folder / "model.tflite"
    path.write_bytes(data)
    return path


QUANTIZATION_KINDS = ("dynamic-range", "full-integer", "int8-io")


def build_quantized_tflite(folder: Path, kind: str = "full-integer") -> Path:
    """A tiny Keras CNN as a quantized TFLite, one of three ways (the three `tf.lite.Optimize.DEFAULT` gives):

    "dynamic-range": int8 weights, float activations, float in and out (no representative data);
    "full-integer": int8 weights and activations calibrated on a representative dataset, float
    in and out; "int8-io": the same with int8 input and output.

    He-initialised convolutions with residual adds keep the activations spread out, so onnxruntime's
    and TFLite's kernels round differently somewhere, as they do on real quantized models.
    """
    import keras
    import numpy as np

    tf = _tf()
    keras.utils.set_random_seed(4)
    init = keras.initializers.HeNormal(seed=1)
    inp = keras.Input((32, 32, 3), name="image")
    x = inp
    for i, channels in enumerate((16, 32, 32)):
        x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", kernel_initializer=init,
                                name=f"conv{i}")(x)
        y = keras.layers.DepthwiseConv2D(3, padding="same", depthwise_initializer=init, name=f"dw{i}")(x)
        x = keras.layers.AveragePooling2D(2, name=f"pool{i}")(keras.layers.Add(name=f"add{i}")([x, y]))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, keras.layers.Dense(10, kernel_initializer=init, name="logits")(x))
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(32):
            yield [rng.standard_normal((1, 32, 32, 3)).astype("float32")]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind != "dynamic-range":
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]  # float in and out
    if kind == "int8-io":
        converter.inference_input_type = converter.inference_output_type = tf.int8
    path = folder / ("quantized.tflite" if kind == "full-integer" else f"quantized-{kind}.tflite")
    path.write_bytes(converter.convert())
    return path


def _torch_net():
    """A small CNN class defined at module level, so that torch.save(model) can pickle it."""
    import torch

    global TorchNet

    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(6)
            self.fc = torch.nn.Linear(6, 4)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x)))
            return self.fc(x.mean(dim=(2, 3)))

    TorchNet.__qualname__ = "TorchNet"
    return TorchNet


def build_torchscript(folder: Path) -> dict[str, Path]:
    """A TorchScript CNN, plus a state_dict and a pickled full model that must be refused."""
    import torch

    torch.manual_seed(0)

    net = _torch_net()().eval()
    with torch.no_grad():  # running statistics that are not the identity
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    paths = {"script": folder / "net.pt", "state_dict": folder / "state_dict.pt", "pickle": folder / "pickled.pt"}
    torch.jit.script(net).save(str(paths["script"]))
    torch.save(net.state_dict(), paths["state_dict"])
    torch.save(net, paths["pickle"])
    return paths


def _speech_net():
    """A Silero-VAD-like net: forward(x, sr: int) on 512-sample frames, with a branch on the rate."""
    import torch

    class SpeechNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(1, 4, 9, stride=4)
            self.out = torch.nn.Linear(4, 1)

        def forward(self, x: torch.Tensor, sr: int) -> torch.Tensor:
            if sr == 8000:
                x = torch.nn.functional.interpolate(x.unsqueeze(1), scale_factor=2.0).squeeze(1)
            h = torch.relu(self.conv(x.unsqueeze(1))).mean(dim=2)
            return torch.sigmoid(self.out(h))

    return SpeechNet


def _text_net():
    """A text encoder: token ids (int64) and an attention mask in, mean of unmasked embeddings out."""
    import torch

    class TextNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(100, 8)
            self.proj = torch.nn.Linear(8, 6)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            mask = attention_mask.unsqueeze(-1).to(torch.float32)
            pooled = (self.embed(input_ids) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            return torch.tanh(self.proj(pooled))

    return TextNet


def build_torchscript_with_args(folder: Path) -> dict[str, Path]:
    """TorchScript archives whose forward needs more than one image tensor: (x, sr: int), (ids, mask)."""
    import torch

    torch.manual_seed(0)
    paths = {"speech": folder / "vad.pt", "text": folder / "text.pt"}
    torch.jit.script(_speech_net()().eval()).save(str(paths["speech"]))
    torch.jit.script(_text_net()().eval()).save(str(paths["text"]))
    return paths


@pytest.fixture(scope="session")
def tf_models(tmp_path_factory) -> dict:
    """Every TensorFlow-side format, built once per session (TF is slow to start)."""
    folder = tmp_path_factory.mktemp("tf-models")
    keras_paths = build_keras_functional(folder)
    app_path, app_options = build_keras_application(folder)
    return {
        "keras": keras_paths["keras"],
        "h5": keras_paths["h5"],
        "sequential": build_keras_sequential(folder),
        "application": app_path,
        "application_options": app_options,
        "application_legacy": app_path.parent / "mobilenet_legacy.h5",
        "saved_model": build_saved_model(folder),
        "saved_model_adam": build_saved_model_with_optimizer(folder),
        "saved_model_slots": build_saved_model_with_slots(folder),
        "frozen": build_frozen_graph(folder),
        "tflite": build_tflite(folder),
    }


@pytest.fixture(scope="session")
def torch_models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("torch-models")
    return {**build_torchscript(folder), **build_torchscript_with_args(folder)}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def local_model(name: str, framework: str, path: Path, role: str = "model", fmt: str | None = None,
                copy_to: Path | None = None, **fields) -> Model:
    """A catalog entry for a local file (copied first when `copy_to` is given, so tests may edit it)."""
    path = Path(path)
    if copy_to is not None:
        copy_to.mkdir(parents=True, exist_ok=True)
        target = copy_to / path.name
        if path.is_dir():
            shutil.copytree(path, target)
        else:
            shutil.copy2(path, target)
        path = target
    digest = None if path.is_dir() else sha256(path)
    artifact = Artifact(role=role, filename=path.name, path=str(path), sha256=digest)
    return Model(name=name, framework=framework, format=fmt, source="local", artifacts=[artifact], **fields)

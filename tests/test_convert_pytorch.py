"""PyTorch conversions: TorchScript archives and nn.Modules, compared with torch; unsafe files refused."""
from __future__ import annotations

import numpy as np
import pytest

from zoo.errors import ConversionError, ModelFormatError


def test_torchscript_matches_torch_with_dynamic_batch(torch_models):
    import torch

    from converters import pytorch as cp
    from converters.onnx_model import run

    conversion = cp.convert_torchscript(torch_models["script"])
    report = conversion.report
    assert report.verified is True and report.outputs[0].shape == [2, 4]
    assert report.input_layout == "NCHW" and report.source_format == "torchscript"
    model = conversion.model
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # The input shape was guessed from the first conv's weights: 3 channels, 224 x 224.
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:] == [3, 224, 224]
    # Any batch size runs and matches torch.
    x = np.random.default_rng(1).standard_normal((5, 3, 224, 224)).astype("float32")
    (got,) = run(model, {"input": x})[1]
    want = torch.jit.load(str(torch_models["script"])).eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_module_with_two_outputs_and_given_shape():
    import torch

    from converters import pytorch as cp

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(10, 6)

        def forward(self, x):
            h = torch.tanh(self.body(x))
            return h, h.softmax(dim=1)

    conversion = cp.convert_module(TwoHeads(), input_shape=[None, 10])
    assert conversion.report.verified is True
    assert [o.name for o in conversion.model.graph.output] == ["output_0", "output_1"]
    assert conversion.report.input_layout == "NC"


def test_module_that_fails_on_the_guessed_input_says_how_to_fix():
    import torch

    from converters import pytorch as cp

    class NeedsSixteen(torch.nn.Module):
        def forward(self, x):
            return x.reshape(-1, 16) * 2

    with pytest.raises(ConversionError, match=r"input_shape=\[None, C, H, W\]"):
        cp.convert_module(NeedsSixteen(), input_shape=[None, 3, 5, 5])


def test_non_torchscript_files_are_refused_with_the_reason(torch_models, tmp_path):
    from converters import pytorch as cp

    with pytest.raises(ModelFormatError, match=r"is a state_dict \(\d+ entries such as conv.weight"):
        cp.convert_torchscript(torch_models["state_dict"])
    with pytest.raises(ModelFormatError, match="never unpickles arbitrary objects"):
        cp.convert_torchscript(torch_models["pickle"])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(ModelFormatError, match="not a zip file"):
        cp.convert_torchscript(junk)
    import zipfile

    other = tmp_path / "other.pt"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ModelFormatError, match="not a PyTorch file"):
        cp.convert_torchscript(other)


def test_pickled_model_is_never_unpickled(torch_models, tmp_path):
    """A pickle whose loading would run code must be refused without running it."""
    import pickle
    import zipfile

    from converters import pytorch as cp

    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(Boom()))
        archive.writestr("evil/version", "3\n")
    with pytest.raises(ModelFormatError, match="never unpickles"):
        cp.convert_torchscript(evil)
    assert not marker.exists()


# ---- forward() with input specs and non-tensor arguments (issue 12) ----------------------------


def test_input_specs_parse_shapes_dtypes_and_args():
    from zoo.errors import InputError
    from zoo.input_specs import arg_values, format_spec, input_specs

    specs = input_specs(["x=1x512", "y=Nx3x224x224:float32", "ids=n*128:int64"])
    assert specs == [{"name": "x", "shape": [1, 512], "dtype": "float32"},
                     {"name": "y", "shape": [None, 3, 224, 224], "dtype": "float32"},
                     {"name": "ids", "shape": [None, 128], "dtype": "int64"}]
    assert input_specs({"x": [None, 512], "m": ([1, 7], "bool"), "s": ""}) == [
        {"name": "x", "shape": [None, 512], "dtype": "float32"},
        {"name": "m", "shape": [1, 7], "dtype": "bool"}, {"name": "s", "shape": [], "dtype": "float32"}]
    assert [format_spec(s) for s in specs] == ["x=1x512", "y=Nx3x224x224", "ids=Nx128:int64"]
    assert arg_values(["sr=16000", "scale=0.5", "flag=true", "mode=fast", "none=None"]) == {
        "sr": 16000, "scale": 0.5, "flag": True, "mode": "fast", "none": None}
    for bad, message in [(["x"], "has no name"), (["x=1xq"], "not a whole number"), (["x=0x3"], "positive"),
                         (["x=1:int7"], "not one of float32"), (["x=1", "x=2"], "given twice"),
                         (["9x=1"], "not a Python identifier")]:
        with pytest.raises(InputError, match=message):
            input_specs(bad)
    with pytest.raises(InputError, match="NAME=VALUE"):
        arg_values(["16000"])


def test_forward_with_an_int_argument_is_bound_and_verified(torch_models):
    import torch

    from converters import pytorch as cp
    from converters.onnx_model import run

    path = torch_models["speech"]
    net = torch.jit.load(str(path)).eval()
    frames = np.random.default_rng(2).standard_normal((3, 512)).astype("float32")
    for rate in (16000, 8000):  # the two branches of forward
        conversion = cp.convert_torchscript(path, inputs=[{"name": "x", "shape": [None, 512], "dtype": "float32"}],
                                            args={"sr": rate})
        report = conversion.report
        assert report.verified is True and report.reference.startswith("torch")
        assert f"sr={rate}" in " ".join(report.notes)
        inputs = conversion.model.graph.input
        assert [i.name for i in inputs] == ["x"]  # sr is a constant, not an input
        assert [d.dim_param or d.dim_value for d in inputs[0].type.tensor_type.shape.dim] == ["batch", 512]
        (got,) = run(conversion.model, {"x": frames})[1]
        np.testing.assert_allclose(got, net(torch.from_numpy(frames), rate).detach().numpy(), atol=1e-5)


def test_two_tensor_inputs_with_int64_token_ids(torch_models):
    import torch

    from converters import pytorch as cp
    from converters.onnx_model import run
    from zoo.input_specs import input_specs

    path = torch_models["text"]
    specs = input_specs(["attention_mask=Nx12:int64", "input_ids=Nx12:int64"])  # any order
    conversion = cp.convert_torchscript(path, inputs=specs)
    assert conversion.report.verified is True
    types = {i.name: i.type.tensor_type.elem_type for i in conversion.model.graph.input}
    assert list(types) == ["input_ids", "attention_mask"] and set(types.values()) == {7}  # int64
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 100, (4, 12))
    mask = (rng.random((4, 12)) > 0.3).astype("int64")
    (got,) = run(conversion.model, {"input_ids": ids, "attention_mask": mask})[1]
    want = torch.jit.load(str(path))(torch.from_numpy(ids), torch.from_numpy(mask)).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_forward_that_needs_specs_names_the_options(torch_models):
    from converters import pytorch as cp
    from zoo.input_specs import input_specs

    with pytest.raises(ConversionError) as caught:
        cp.convert_torchscript(torch_models["speech"])
    message = str(caught.value)
    assert "forward(x: Tensor, sr: int)" in message and "--input x=SHAPE" in message
    assert "--arg sr=VALUE" in message and "args=" in message and "\n" not in message
    with pytest.raises(ConversionError, match=r"--input input_ids=SHAPE --input attention_mask=SHAPE"):
        cp.convert_torchscript(torch_models["text"])
    with pytest.raises(ConversionError, match="has no argument 'rate'; its arguments are x, sr"):
        cp.convert_torchscript(torch_models["speech"], inputs=input_specs(["x=1x512"]), args={"rate": 1})
    with pytest.raises(ConversionError, match="sr is a int, not a tensor; give it with --arg sr=VALUE"):
        cp.convert_torchscript(torch_models["speech"], inputs=input_specs(["x=1x512", "sr=1"]))
    with pytest.raises(ConversionError, match=r"fails on inputs input_ids: \[2, 5\] torch.float32.*indices"):
        cp.convert_torchscript(torch_models["text"], inputs=input_specs(["input_ids=Nx5", "attention_mask=Nx5"]))


def test_plain_module_with_keyword_inputs():
    import torch

    from converters import pytorch as cp

    class Scaled(torch.nn.Module):
        def forward(self, x, scale: float = 1.0, *, bias: float = 0.0):
            return x * scale + bias

    conversion = cp.convert_module(Scaled(), inputs=[{"name": "x", "shape": [2, 5], "dtype": "float32"}],
                                   args={"scale": 3.0, "bias": 1.0})
    assert conversion.report.verified is True
    from converters.onnx_model import run

    (got,) = run(conversion.model, {"x": np.ones((2, 5), "float32")})[1]
    np.testing.assert_allclose(got, np.full((2, 5), 4.0))
    # A fixed size stays fixed: no batch axis is claimed that was not asked for.
    assert [d.dim_value for d in conversion.model.graph.input[0].type.tensor_type.shape.dim] == [2, 5]


def test_forward_of_star_args_keeps_the_one_tensor_default():
    import torch

    from converters import pytorch as cp

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(6, 2)

        def forward(self, *args):
            return self.fc(args[0])

    conversion = cp.convert_module(Wrapper())  # shape guessed from the Linear weight, as before
    assert conversion.report.verified is True and conversion.report.outputs[0].shape == [2, 2]

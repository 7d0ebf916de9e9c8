"""PyTorch conversions: TorchScript archives and nn.Modules, compared with torch; unsafe files refused."""
from __future__ import annotations

import _convert_helpers
import numpy as np
import pytest

from zoo.errors import ConversionError, ModelFormatError

torch_models = _convert_helpers.torch_models  # the session fixture


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

"""ONNX pass-through on the real zoo architectures shipped inside the onnx package."""
from __future__ import annotations

import numpy as np
import pytest
from helpers.zoo_nets import onnx_light_models

from zoo.errors import ModelFormatError, UnsupportedLayerError

LIGHT = sorted(p.stem for p in onnx_light_models().glob("light_*.onnx"))
FAST = ["light_squeezenet", "light_shufflenet", "light_inception_v1"]


def _dummy_input(value_info) -> np.ndarray:
    """The input onnx's backend test runner feeds light models (its outputs were made from it)."""
    shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in value_info.type.tensor_type.shape.dim)
    n = int(np.prod(shape))
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


def _reference_output(name: str) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    tensor = onnx.TensorProto()
    tensor.ParseFromString((onnx_light_models() / f"{name}_output_0.pb").read_bytes())
    return numpy_helper.to_array(tensor)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in LIGHT])
def test_light_model_passes_through_and_matches_shipped_outputs(name):
    import onnx

    from converters import onnx_model as om

    path = onnx_light_models() / f"{name}.onnx"
    conversion = om.convert(path)
    report = conversion.report
    assert report.verified is True and report.source_format == "onnx"
    assert report.opset == om.opset_of(onnx.load(path))
    model = conversion.model
    assert all(i.type.tensor_type.shape.dim[0].dim_param == "batch" for i in om.graph_inputs(model))
    original_input = om.graph_inputs(onnx.load(path))[0]
    x = _dummy_input(original_input)
    expected = _reference_output(name)
    # The shipped reference output (verification above already ran batch 2 against the original).
    (got,) = om.run(model, {original_input.name: x})[1]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(expected).max())))


@pytest.mark.parametrize("name", ["light_squeezenet", "light_resnet50"])
def test_opset_upgrade(name):
    from converters import onnx_model as om

    conversion = om.convert(onnx_light_models() / f"{name}.onnx", opset=17)
    assert conversion.report.opset == 17 and conversion.report.verified is True
    assert "opset upgraded from 9 to 17" in conversion.report.notes


def test_opset_downgrade_is_refused():
    from converters import onnx_model as om

    with pytest.raises(UnsupportedLayerError, match="cannot lower the opset from 9 to 7"):
        om.convert(onnx_light_models() / "light_squeezenet.onnx", opset=7)


def test_bad_files(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from converters import onnx_model as om

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 definitely not protobuf \xff" * 10)
    with pytest.raises(ModelFormatError, match="is not an ONNX model"):
        om.convert(junk)
    with pytest.raises(ModelFormatError, match="is not a file"):
        om.convert(tmp_path)
    # A node whose input nobody produces fails the checker, with its message.
    graph = helper.make_graph([helper.make_node("Relu", ["missing"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    broken = tmp_path / "broken.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), broken)
    with pytest.raises(ModelFormatError, match="fails onnx.checker"):
        om.convert(broken)
    # An op no ONNX schema defines is named.
    graph = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    custom = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), custom)
    with pytest.raises((UnsupportedLayerError, ModelFormatError), match="Frobnicate"):
        om.convert(custom)


def test_fixed_batch_becomes_dynamic_but_other_fixed_sizes_stay():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from converters import onnx_model as om

    nodes = [
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
        helper.make_node("Constant", [], ["table"], value=numpy_helper.from_array(np.arange(3, dtype="float32"))),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2]),
         helper.make_tensor_value_info("table", TensorProto.FLOAT, [3])],
        initializer=[numpy_helper.from_array(np.array([1, 2, 2], dtype="int64"), "target")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    notes = om.make_batch_dynamic(model)
    assert any("Reshape" in n for n in notes)
    first = {v.name: v.type.tensor_type.shape.dim[0] for v in [*model.graph.input, *model.graph.output]}
    assert first["x"].dim_param == first["y"].dim_param == "batch"
    assert first["table"].dim_value == 3
    onnx.checker.check_model(model)
    x = np.arange(12, dtype="float32").reshape(3, 4) - 6
    y, table = om.run(model, {"x": x})[1]
    np.testing.assert_array_equal(y, np.maximum(x, 0).reshape(3, 2, 2))
    np.testing.assert_array_equal(table, [0, 1, 2])

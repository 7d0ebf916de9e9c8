"""Models for the extraction tests: the onnx package's light zoo models with random weights, tiny graphs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from helpers.zoo_nets import onnx_light_models


def light_path(name: str) -> Path:
    return onnx_light_models() / f"light_{name}.onnx"


def randomized(name: str, seed: int = 0):
    """A light model whose weights are random initializers instead of ConstantOfShape(0.02).

    The shipped weights are one constant, which makes every output channel equal: a wrong cut
    would still match. Random weights (He-scaled, positive 1-D tensors for BatchNorm) do not.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(light_path(name))
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in model.graph.initializer}
    keep, new_inits = [], []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            dims = [int(d) for d in numpy_helper.to_array(inits[node.input[0]])]
            if len(dims) > 1:
                fan_in = int(np.prod(dims[1:]))
                value = rng.standard_normal(dims, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
            else:
                value = rng.uniform(0.5, 1.5, dims).astype(np.float32)
            new_inits.append(numpy_helper.from_array(value, node.output[0]))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    model.graph.initializer.extend(new_inits)
    if model.ir_version < 4:  # IR 3 lists every initializer among the graph inputs
        from onnx import helper

        model.graph.input.extend(
            helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in new_inits
        )
    onnx.checker.check_model(model)
    return model


def save_randomized(name: str, folder: Path, seed: int = 0) -> Path:
    import onnx

    path = folder / f"{name}.onnx"
    onnx.save(randomized(name, seed), path)
    return path


def tiny_resnet(batch: int | str = "N", seed: int = 0):
    """A small residual CNN, 3x8x8 -> 4 classes: stem conv, one residual block, pool, fc, softmax.

    Node names are Caffe-style layer names (stem, block_a, block_b, add, pool, fc, prob).
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name, *dims):
        return numpy_helper.from_array(rng.normal(0, 0.5, dims).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "stem_w", "stem_b"], ["stem"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["stem"], ["stem_relu"], name="stem_relu"),
        helper.make_node("Conv", ["stem_relu", "a_w"], ["block_a"], name="block_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["block_a"], ["block_a_relu"], name="block_a_relu"),
        helper.make_node("Conv", ["block_a_relu", "b_w"], ["block_b"], name="block_b", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["block_b", "stem_relu"], ["add"], name="add"),
        helper.make_node("Relu", ["add"], ["block_out"], name="block_out"),
        helper.make_node("GlobalAveragePool", ["block_out"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc"], name="fc", transB=1),
        helper.make_node("Softmax", ["fc"], ["prob"], name="prob"),
    ]
    inits = [
        weight("stem_w", 6, 3, 3, 3), weight("stem_b", 6), weight("a_w", 6, 6, 3, 3),
        weight("b_w", 6, 6, 3, 3), weight("fc_w", 4, 6), weight("fc_b", 4),
    ]
    graph = helper.make_graph(
        nodes, "tiny_resnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [batch, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="zoo-tests")
    model.ir_version = 8
    return model


def save_tiny(folder: Path, batch: int | str = "N", seed: int = 0) -> Path:
    import onnx

    path = folder / f"tiny_resnet_{batch}_{seed}.onnx"
    onnx.save(tiny_resnet(batch, seed), path)
    return path


def run_onnx(path_or_model, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
    """Outputs of a model (path or ModelProto) under a bare onnxruntime session."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = path_or_model if isinstance(path_or_model, (str, Path)) else path_or_model.SerializeToString()
    session = ort.InferenceSession(str(source) if isinstance(source, Path) else source, options,
                                   providers=["CPUExecutionProvider"])
    return session.run(outputs, feeds)

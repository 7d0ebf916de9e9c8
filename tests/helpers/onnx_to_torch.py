"""Build one-node ONNX graphs and run them in onnxruntime, for the ONNX-to-PyTorch converter tests."""
from __future__ import annotations

from typing import Any

import numpy as np


def single_node_model(op_type: str, inputs: dict[str, np.ndarray], attrs: dict[str, Any] | None = None,
                      constants: dict[str, np.ndarray] | None = None, n_outputs: int = 1,
                      opset: int = 17, input_order: list[str] | None = None):
    """A model with one `op_type` node; `inputs` are graph inputs, `constants` initializers.

    `input_order` gives the node's input names in order ("" for an omitted optional input).
    """
    import onnx
    from onnx import helper, numpy_helper

    constants = constants or {}
    order = input_order or list(inputs) + list(constants)
    outs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, order, outs, name=f"the_{op_type.lower()}", **(attrs or {}))
    graph_inputs = [helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(value.dtype), ["batch"] + list(value.shape[1:]))
        for name, value in inputs.items()]
    graph = helper.make_graph(
        [node], f"{op_type}_test", graph_inputs,
        [onnx.ValueInfoProto(name=o) for o in outs],
        [numpy_helper.from_array(np.asarray(v), name) for name, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8)
    # Give the outputs their inferred types: onnxruntime rejects untyped graph outputs.
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type for v in inferred.graph.value_info}
    for out in model.graph.output:
        if out.name in types:
            out.type.CopyFrom(types[out.name])
    return model


def ort_session(model, threads: int = 1):
    """An onnxruntime CPU session for `model` (ModelProto or path)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    source = str(model) if not hasattr(model, "SerializeToString") else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_ort(model, feeds: dict[str, np.ndarray], threads: int = 1) -> list[np.ndarray]:
    """Outputs of `model` (ModelProto or path) in onnxruntime on the CPU."""
    return ort_session(model, threads).run(None, feeds)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| divided by the output scale (max |want|, at least 1)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    if got.size == 0:
        return 0.0
    scale = max(1.0, float(np.abs(want).max()))
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) / scale


def light_model_randomized(path, seed: int = 0):
    """A light model with random weights, a dynamic batch and its pre-softmax logits as an extra output.

    The shipped light models fill every weight with one constant (ConstantOfShape), which makes all
    channels equal and would hide a wrong channel order; random He-scaled weights do not.
    """
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights: set[str] = set()
    nodes = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = [int(v) for v in inits[node.input[0]]]
            if len(shape) >= 2:
                # He-scaled normals; big fc weights repeat a 1M-value draw (drawing 100M costs seconds).
                fan_in = int(np.prod(shape[1:]))
                draw = rng.standard_normal(min(int(np.prod(shape)), 1 << 20), dtype=np.float32)
                value = np.resize(draw * np.float32(np.sqrt(2.0 / fan_in)), shape)
            else:
                value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            weights.add(node.output[0])
            continue
        if node.op_type == "Reshape" and node.input[0] not in weights and node.input[1] in inits:
            # The zoo models hard-code batch 1; 0 copies the batch dimension instead.
            shape = inits[node.input[1]].copy()
            shape[0] = 0
            name = f"{node.input[1]}_batch"
            graph.initializer.append(numpy_helper.from_array(shape, name))
            node.input[1] = name
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    # Initializers listed as graph inputs (IR 3) are overridable to onnxruntime, which then neither
    # folds nor prepacks them: keep only the data input, as a model exported today would.
    kept = [i for i in graph.input if i.name not in inits]
    del graph.input[:]
    graph.input.extend(kept)
    used = {name for node in graph.node for name in node.input}
    live = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)
    model.ir_version = max(model.ir_version, 4)  # initializers that are not graph inputs need IR 4
    data = graph.input[0]
    data.type.tensor_type.shape.dim[0].dim_param = "N"
    for out in graph.output:
        out.type.tensor_type.shape.dim[0].dim_param = "N"
    softmax = [n for n in nodes if n.op_type == "Softmax"]
    if softmax:
        graph.output.append(helper.make_tensor_value_info(softmax[-1].input[0], onnx.TensorProto.FLOAT, None))
    return model


def text_encoder_onnx(path, vocab: int = 50, dim: int = 16):
    """A small text encoder exported from torch: token ids + attention mask -> masked mean of a
    one-head self-attention layer over embeddings (the shape of a sentence-embedding model)."""
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, dim)
            self.query = torch.nn.Linear(dim, dim)
            self.key = torch.nn.Linear(dim, dim)
            self.value = torch.nn.Linear(dim, dim)
            self.norm = torch.nn.LayerNorm(dim)

        def forward(self, input_ids, attention_mask):
            x = self.embed(input_ids)
            scores = self.query(x) @ self.key(x).transpose(1, 2) / dim ** 0.5
            keep = attention_mask.unsqueeze(1).to(torch.bool)
            scores = scores.masked_fill(~keep, -1e9)
            x = self.norm(x + torch.softmax(scores, -1) @ self.value(x))
            weights = attention_mask.unsqueeze(-1).to(x.dtype)
            return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    torch.manual_seed(0)
    net = TextEncoder().eval()
    ids = torch.randint(0, vocab, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.int64)
    torch.onnx.export(net, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["embedding"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                    "embedding": {0: "batch"}})
    return path


def gru_onnx(path, features: int = 5, hidden: int = 8, layers: int = 2, bidirectional: bool = False):
    """A GRU exported from torch with its state as a second input and the new state as a second output."""
    import torch

    class Recurrent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(features, hidden, num_layers=layers, bidirectional=bidirectional)
            self.head = torch.nn.Linear(hidden * (2 if bidirectional else 1), 3)

        def forward(self, x, state):
            y, state = self.gru(x, state)
            return self.head(y), state

    torch.manual_seed(0)
    net = Recurrent().eval()
    dirs = 2 if bidirectional else 1
    x, state = torch.randn(4, 2, features), torch.randn(layers * dirs, 2, hidden)
    torch.onnx.export(net, (x, state), str(path), input_names=["input", "state"],
                      output_names=["output", "state_out"], opset_version=17, dynamo=False,
                      dynamic_axes={"input": {0: "time", 1: "batch"}, "state": {1: "batch"},
                                    "output": {0: "time", 1: "batch"}, "state_out": {1: "batch"}})
    return path


def control_flow_onnx():
    """x [n, 4] -> If(sum(x) > 0: x * 2, else: -x), then a Loop adding x to a running total 3 times
    with every total as a scan output, and a Scan summing the rows: real subgraphs in all three."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    then_branch = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["doubled"])], "then", [],
                                    [helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["n", 4])], [two])
    else_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["negated"])], "else", [],
                                    [helper.make_tensor_value_info("negated", TensorProto.FLOAT, ["n", 4])])
    body = helper.make_graph(
        [helper.make_node("Add", ["total_in", "branch"], ["total_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["total_out"], ["scanned"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("total_in", TensorProto.FLOAT, ["m", 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("total_out", TensorProto.FLOAT, ["m", 4]),
         helper.make_tensor_value_info("scanned", TensorProto.FLOAT, ["m", 4])])
    scan_body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "row"], ["acc_out"]), helper.make_node("Identity", ["acc_out"], ["seen"])],
        "scan_body",
        [helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("row", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("seen", TensorProto.FLOAT, [4])])
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["branch"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Loop", ["trips", "yes", "start"], ["total", "totals"], body=body),
        helper.make_node("Scan", ["acc0", "x"], ["rows_sum", "partials"], body=scan_body, num_scan_inputs=1),
    ]
    inits = [numpy_helper.from_array(v, n) for n, v in {
        "zero": np.array(0.0, np.float32), "trips": np.array(3, np.int64), "yes": np.array(True),
        "start": np.zeros((1, 4), np.float32), "acc0": np.zeros(4, np.float32)}.items()]
    outputs = {"branch": ["n", 4], "total": ["n", 4], "totals": [3, "n", 4], "rows_sum": [4], "partials": ["n", 4]}
    graph = helper.make_graph(nodes, "control", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in outputs.items()],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def small_float_cnn_onnx(path, seed: int = 0):
    """conv -> relu -> conv -> global pool -> linear, exported from torch: a model to quantize."""
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 3),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(6, 5)).eval()
    torch.onnx.export(net, (torch.randn(2, 3, 12, 12),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False, dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return path


def quantized_onnx(float_path, out_path, kind: str, seed: int = 0):
    """The float model quantized by onnxruntime's own tools: "qdq" (QuantizeLinear/DequantizeLinear
    pairs), "qoperator" (QLinearConv, QLinearMatMul...) or "dynamic" (DynamicQuantizeLinear, *Integer)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    rng = np.random.default_rng(seed)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": rng.standard_normal((2, 3, 12, 12)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    if kind == "dynamic":
        quantize_dynamic(str(float_path), str(out_path), weight_type=QuantType.QUInt8,
                         op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    else:
        # QOperator for Conv only: its Gemm and pooling forms are com.microsoft ops, not ONNX ones.
        quantize_static(str(float_path), str(out_path), Reader(),
                        quant_format=QuantFormat.QDQ if kind == "qdq" else QuantFormat.QOperator,
                        per_channel=kind == "qdq", op_types_to_quantize=None if kind == "qdq" else ["Conv"])
    return out_path

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
    data = next(i for i in graph.input if i.name not in inits)
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

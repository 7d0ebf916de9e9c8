"""Named rewrites of the parsed graph, run in order before any module exists.

`prune_dead_nodes` keeps what an output needs (in topological order), `fold_constants` computes
what depends on constants alone through the op table, `find_layers` decides which constants are
trainable weights (grouped per source layer), `attach_bias` folds a layer's bias Add into it,
and `group_blocks` groups layers into fine-tuning blocks (a conv with its BatchNorm, Scale and
activation). Conv+BatchNorm fusion is not here: the BatchNorm keeps its own parameters and batch
statistics for training, so the fusion is done from the current weights when a frozen module
runs inference (converters.onnx_to_torch._inference).
"""
from __future__ import annotations

from collections import Counter

import torch

from converters.onnx_to_torch._graph import Block, Graph, LayerSpec, Node
from converters.onnx_to_torch._lower import evaluate
from zoo.errors import ModelFormatError

__all__ = ["PASSES", "attach_bias", "fold_constants", "find_layers", "group_blocks", "prune_dead_nodes", "run"]

# Ops whose output differs between runs: never folded into constants.
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                    "Bernoulli"}
# Which constant inputs of a node are trainable weights, and the role each takes.
PARAMETERS: dict[str, dict[int, str]] = {
    "Conv": {1: "weight", 2: "bias"},
    "ConvTranspose": {1: "weight", 2: "bias"},
    "Gemm": {1: "weight", 2: "bias"},
    "MatMul": {0: "weight", 1: "weight"},
    "BatchNormalization": {1: "weight", 2: "bias"},
    "InstanceNormalization": {1: "weight", 2: "bias"},
    "LayerNormalization": {1: "weight", 2: "bias"},
    "GroupNormalization": {1: "weight", 2: "bias"},
    "RMSNormalization": {1: "weight"},
    "PRelu": {1: "weight"},
    "Gather": {0: "weight"},  # a float table indexed by token ids: an embedding
    # Recurrent layers: W (input-hidden), R (hidden-hidden), B, and LSTM's peepholes P.
    "GRU": {1: "weight_ih", 2: "weight_hh", 3: "bias"},
    "RNN": {1: "weight_ih", 2: "weight_hh", 3: "bias"},
    "LSTM": {1: "weight_ih", 2: "weight_hh", 3: "bias", 7: "peephole"},
    # A per-channel constant added or multiplied in is a layer's bias or scale (Caffe Scale, Keras
    # Dense bias after MatMul); a scalar constant is arithmetic, not a weight.
    "Add": {0: "bias", 1: "bias"},
    "Sub": {0: "bias", 1: "bias"},
    "Mul": {0: "weight", 1: "weight"},
}
ELEMENTWISE = {"Add", "Sub", "Mul"}
# Constant inputs that belong to a layer but are statistics, not trained by gradient.
STATISTICS: dict[str, dict[int, str]] = {"BatchNormalization": {3: "running_mean", 4: "running_var"}}
# Layers that take a following per-channel Add/Sub as their own `bias` (Keras Dense, Caffe Scale).
BIAS_HOSTS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Mul"}
# A fine-tuning block starts at one of these; norms and scales join the block they follow.
BLOCK_HEADS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "GRU", "LSTM", "RNN", "Gather"}
# Parameter-free ops a block extends through (its activation).
ACTIVATIONS = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish",
               "Softplus", "Softsign", "Gelu", "Mish", "Swish", "ThresholdedRelu", "Dropout", "Identity"}


def prune_dead_nodes(graph: Graph) -> None:
    """Keep only the nodes some output depends on, in an order where every input comes first."""
    producer = {name: i for i, node in enumerate(graph.nodes) for name in node.outputs if name}
    keep: set[int] = set()
    stack = [name for name in graph.outputs if name in producer]
    while stack:
        i = producer[stack.pop()]
        if i not in keep:
            keep.add(i)
            stack.extend(name for name in _reads(graph.nodes[i]) if name in producer)
    nodes = [graph.nodes[i] for i in sorted(keep)]
    graph.nodes = _toposort(nodes, set(graph.inputs) | set(graph.constants) | set(graph.opaque) | set(graph.outer))
    used = {name for node in graph.nodes for name in _reads(node)} | set(graph.outputs)
    graph.constants = {k: v for k, v in graph.constants.items() if k in used}


def fold_constants(graph: Graph) -> None:
    """Compute every node whose inputs are all known now; its outputs become constants."""
    live: list[Node] = []
    for node in graph.nodes:
        if _foldable(node, graph.constants):
            try:
                outs = evaluate(node, [graph.constants[name] if name else None for name in node.inputs])
            except Exception:  # noqa: BLE001 - unsupported or failing here: it stays a node and says why later
                outs = None
            if outs is not None and all(isinstance(o, torch.Tensor) for o, name in zip(outs, node.outputs) if name):
                for name, value in zip(node.outputs, outs):
                    if name:
                        graph.constants[name] = value
                continue
        live.append(node)
    graph.nodes = live


def _foldable(node: Node, constants: dict) -> bool:
    if node.op_type in NONDETERMINISTIC or node.subgraphs or node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type in ("Optional", "SequenceEmpty"):
        return False
    return all(not name or name in constants for name in node.inputs)


def find_layers(graph: Graph) -> None:
    """Decide which constant inputs are weights: one LayerSpec per weighted node, in graph order."""
    for node in graph.nodes:
        roles = PARAMETERS.get(node.op_type, {})
        weights = {k: role for k, role in roles.items()
                   if k < len(node.inputs) and node.inputs[k] in graph.constants
                   and graph.constants[node.inputs[k]].is_floating_point()}
        if node.op_type in ELEMENTWISE:
            # Only a per-channel (not scalar) constant against a run-time tensor is a layer's weight.
            consts = [k for k, name in enumerate(node.inputs) if name in graph.constants]
            weights = {k: r for k, r in weights.items()
                       if graph.constants[node.inputs[k]].numel() > 1 and len(consts) == 1}
        if node.op_type == "Gather" and (len(node.inputs) < 2 or node.inputs[1] in graph.constants):
            weights = {}
        if not weights:
            continue
        stats = {k: r for k, r in STATISTICS.get(node.op_type, {}).items()
                 if k < len(node.inputs) and node.inputs[k] in graph.constants}
        spec = LayerSpec(node.name, graph.layer_names.get(node.name, node.name), node.op_type, [node.name],
                         {r: node.inputs[k] for k, r in weights.items()},
                         {r: node.inputs[k] for k, r in stats.items()})
        for k, role in {**weights, **stats}.items():
            graph.weights[(node.name, k)] = (len(graph.layers), role)
        graph.layers.append(spec)


def attach_bias(graph: Graph) -> None:
    """An Add/Sub of a per-channel constant that alone reads a layer's output becomes that layer's bias."""
    uses = Counter(name for node in graph.nodes for name in node.inputs if name)
    uses.update(graph.outputs)
    by_main = {spec.name: i for i, spec in enumerate(graph.layers)}
    last_node = {spec.nodes[-1]: i for i, spec in enumerate(graph.layers)}
    producer = {name: node for node in graph.nodes for name in node.outputs if name}
    drop: set[int] = set()
    for node in graph.nodes:
        if node.op_type not in ("Add", "Sub") or node.name not in by_main:
            continue
        (k, role), = [(k, r) for (n, k), (_, r) in graph.weights.items() if n == node.name]
        x = node.inputs[1 - k]
        host_node = producer.get(x)
        if host_node is None or host_node.name not in last_node or uses[x] != 1 or (node.op_type == "Sub" and k == 0):
            continue
        host = graph.layers[last_node[host_node.name]]
        if host.op_type not in BIAS_HOSTS or "bias" in host.params:
            continue
        host.params["bias"] = node.inputs[k]
        host.nodes.append(node.name)
        del last_node[host_node.name]
        last_node[node.name] = graph.layers.index(host)
        drop.add(by_main[node.name])
        graph.weights[(node.name, k)] = (graph.layers.index(host), "bias")
    if drop:
        remap, kept = {}, []
        for i, spec in enumerate(graph.layers):
            if i not in drop:
                remap[i] = len(kept)
                kept.append(spec)
        graph.layers = kept
        graph.weights = {key: (remap[i], role) for key, (i, role) in graph.weights.items() if i in remap}


def group_blocks(graph: Graph) -> None:
    """Group layers into fine-tuning blocks: a conv/linear layer with the norms, scales and activation
    after it; a norm before a conv (pre-activation nets) opens the block the conv then joins."""
    layer_of = {name: i for i, spec in enumerate(graph.layers) for name in spec.nodes}
    origin: dict[str, int] = {}  # tensor -> the block whose output it is
    has_head: list[bool] = []
    for node in graph.nodes:
        data = next((name for k, name in enumerate(node.inputs)
                     if name and (node.name, k) not in graph.weights and name not in graph.constants), None)
        source = origin.get(data) if data is not None else None
        if node.name in layer_of:
            spec = graph.layers[layer_of[node.name]]
            if spec.block < 0:
                head = spec.op_type in BLOCK_HEADS
                if source is not None and (not head or not has_head[source]):
                    spec.block = source
                    has_head[source] = has_head[source] or head
                else:
                    spec.block = len(graph.blocks)
                    graph.blocks.append(Block(spec.layer_name, []))
                    has_head.append(head)
                block = graph.blocks[spec.block]
                block.layers.append(layer_of[node.name])
                if head and (len(block.layers) == 1 or not any(graph.layers[i].op_type in BLOCK_HEADS
                                                                for i in block.layers[:-1])):
                    block.name = spec.layer_name
            origin.update((name, spec.block) for name in node.outputs if name)
        elif node.op_type in ACTIVATIONS and source is not None:
            origin.update((name, source) for name in node.outputs if name)


PASSES = [prune_dead_nodes, fold_constants, find_layers, attach_bias, group_blocks]


def run(graph: Graph) -> Graph:
    """Every pass over the main graph, then the ones that apply to its subgraphs."""
    for rewrite in PASSES:
        rewrite(graph)
    _prepare_subgraphs(graph)
    return graph


def _prepare_subgraphs(graph: Graph) -> None:
    """If branches, Loop and Scan bodies: pruned and folded (their constants stay constants: no weights)."""
    for node in graph.nodes:
        for sub in node.subgraphs.values():
            prune_dead_nodes(sub)
            fold_constants(sub)
            _prepare_subgraphs(sub)


def _reads(node: Node) -> list[str]:
    return [*node.inputs, *(name for sub in node.subgraphs.values() for name in sub.outer)]


def _toposort(nodes: list[Node], available: set[str]) -> list[Node]:
    """Nodes in an order where every input is produced before use (ONNX files are usually sorted)."""
    produced = set(available)
    done: list[Node] = []
    pending = list(nodes)
    while pending:
        rest = []
        for node in pending:
            if all(not name or name in produced for name in _reads(node)):
                done.append(node)
                produced.update(node.outputs)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({n for node in rest for n in _reads(node) if n and n not in produced})
            raise ModelFormatError(f"ONNX graph has a cycle or undefined tensors {missing[:5]}; "
                                   f"check it with onnx.checker.check_model")
        pending = rest
    return done

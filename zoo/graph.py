"""ONNX graph analysis for cutting: layers, cut points (dominators), cutting, dynamic batch, MACs."""
from __future__ import annotations

import difflib
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from zoo.errors import UnknownLayerError

if TYPE_CHECKING:
    import onnx

# Nodes that only compute shapes or constants; they are never a layer of their own.
SHAPE_OPS = {"Shape", "Size", "Constant", "ConstantOfShape", "Range", "EyeLike"}
# Producers whose node names are scopes ("model/conv1/Conv2D"): several nodes make one layer.
KERAS_PRODUCERS = ("tf2onnx", "keras2onnx")
# tf2onnx inserts glue nodes named like "Transpose__26": they belong to the layer that follows.
_GLUE = re.compile(r"^[A-Za-z]+__\d+$")
# Auto-generated node names (onnx-caffe2 "n12", empty) say nothing; a weight name says more.
_AUTO_NAME = re.compile(r"^(n\d+|node_\d+|)$")
_PARAM_SUFFIX = re.compile(
    r"(_(w|b|s|rm|riv|scale|bias|mean|var|weights?))?(_0)?$|/(weights?|biases?|kernel)$"
)
_FLOAT_TYPES = {1, 10, 11, 16}  # float, float16, double, bfloat16
# The dim_param of the batch dimension in every graph zoo writes (converted, cut, rewritten).
BATCH = "batch"


def dim_value(dim: Any) -> int | str | None:
    """One ONNX dimension: its size when fixed, its symbol when named, None when neither.

    Some exporters (paddle2onnx) write -1 for a dynamic size: it is one.
    """
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else (dim.dim_param or None)


def value_dims(value_info: Any) -> list[int | str | None] | None:
    """A graph value's dimensions (see `dim_value`), or None when its shape is unknown."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [dim_value(d) for d in tensor.shape.dim]


@dataclass
class LayerInfo:
    """One layer of a model: a node, or the nodes of one framework layer (a Keras scope)."""

    index: int
    name: str
    op_type: str  # the main op; "Conv+Relu" style when a layer holds several compute ops
    output: str  # the tensor a cut at this layer returns
    shape: list[int | str | None] | None  # batch axis as None
    parameters: int
    is_cut_point: bool
    nodes: list[str] = field(default_factory=list)  # ONNX node names (or output names)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GraphInfo:
    """Producers, consumers, constants and inferred shapes of one ONNX graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.inputs = [i.name for i in graph.input if i.name not in self.initializers]
        self.outputs = [o.name for o in graph.output]
        self.nodes = list(graph.node)
        # What each node reads: its inputs, and for If/Loop/Scan the outer tensors its bodies use
        # by name (an If whose only input is its condition may compute everything from them).
        self.node_inputs: list[list[str]] = [node_reads(node) for node in self.nodes]
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, node in enumerate(self.nodes):
            for out in node.output:
                if out:
                    self.producer[out] = i
            for inp in self.node_inputs[i]:
                self.consumers[inp].append(i)
        # Constant tensors: initializers and whatever is computed from them alone (the onnx
        # package's light models build every weight with ConstantOfShape).
        self.constant: set[str] = set(self.initializers)
        # Shape tensors: computed from data only through Shape/Size, never from its values.
        self.shape_like: set[str] = set()
        data = set(self.inputs)
        for node, ins in zip(self.nodes, self.node_inputs):
            if all(x in self.constant for x in ins) and node.op_type not in ("Shape", "Size"):
                self.constant.update(o for o in node.output if o)
            elif node.op_type in ("Shape", "Size") or all(
                x in self.constant or x in self.shape_like for x in ins
            ):
                self.shape_like.update(o for o in node.output if o)
            if any(x in data for x in ins) and node.op_type not in ("Shape", "Size"):
                data.update(o for o in node.output if o)
        self.data = data - self.shape_like
        self.types = _inferred_types(model)

    def is_compute(self, i: int) -> bool:
        """A node that transforms data (not shape arithmetic, not constant folding)."""
        node = self.nodes[i]
        return node.op_type not in SHAPE_OPS and any(o in self.data for o in node.output)

    def shape(self, name: str) -> list[int | str | None] | None:
        entry = self.types.get(name)
        return None if entry is None else entry[1]

    def elem_type(self, name: str) -> int | None:
        entry = self.types.get(name)
        return None if entry is None else entry[0]

    def size(self, name: str) -> int:
        """Number of elements of a constant tensor (0 when unknown)."""
        if name in self.initializers:
            n = 1
            for d in self.initializers[name].dims:
                n *= d
            return n
        dims = self.shape(name)
        if not dims or any(not isinstance(d, int) for d in dims):
            return 0
        n = 1
        for d in dims:
            n *= d
        return n

    def is_float(self, name: str) -> bool:
        if name in self.initializers:
            return self.initializers[name].data_type in _FLOAT_TYPES
        return self.elem_type(name) in _FLOAT_TYPES


def node_reads(node) -> list[str]:
    """The tensors a node reads: its inputs, then the outer names its subgraphs (If/Loop bodies) use."""
    names = [x for x in node.input if x]
    for attr in node.attribute:
        for sub in [attr.g, *attr.graphs] if attr.type in (5, 10) else []:  # GRAPH, GRAPHS
            names += [x for x in _outer_names(sub) if x not in names]
    return names


def _inferred_types(model: onnx.ModelProto) -> dict[str, tuple[int, list[int | str | None] | None]]:
    """name -> (elem_type, dims) for every tensor shape inference can type."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(_without_weights(model))
    except Exception:  # a model shape inference rejects can still be cut; shapes stay unknown
        inferred = model
    graph = inferred.graph
    out: dict[str, tuple[int, list[int | str | None] | None]] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        out[vi.name] = (vi.type.tensor_type.elem_type, value_dims(vi))
    for t in graph.initializer:
        out[t.name] = (t.data_type, list(t.dims))
    return out


def _without_weights(model: onnx.ModelProto, limit: int = 1024) -> onnx.ModelProto:
    """The model with its large initializers turned into typed inputs, for shape inference.

    Inference serializes the whole model; for a 500 MiB Caffe VGG that costs seconds and twice
    the memory, while only small constants (Reshape targets) ever decide a shape.
    """
    from onnx import helper

    graph = model.graph
    light = helper.make_model(
        helper.make_graph([], graph.name, [], []), opset_imports=list(model.opset_import)
    )
    light.ir_version = max(model.ir_version, 4)  # inputs without initializers need IR >= 4
    light.functions.extend(model.functions)
    new = light.graph
    new.node.extend(graph.node)
    new.input.extend(graph.input)
    new.output.extend(graph.output)
    new.value_info.extend(graph.value_info)
    listed = {i.name for i in graph.input}
    for t in graph.initializer:
        if _prod(t.dims) <= limit:  # elements; ByteSize() would walk the data
            new.initializer.append(t)
        elif t.name not in listed:
            new.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


# --- cut points -------------------------------------------------------------------------------

def cut_points(info: GraphInfo) -> set[str]:
    """Tensors every path from the inputs they depend on to the outputs goes through.

    With one input these are the dominators of the outputs. With several, each tensor is judged
    against the inputs it is computed from: an encoder's output that every path from the audio
    goes through is a cut point even though a recurrent state, another input, joins after it
    (a cut there needs the audio only, and nothing computed from the audio bypasses it).
    Only values count: a shape computed from an earlier tensor (the batch size a Reshape target
    takes from the input) bypasses nothing a cut loses, since the cut graph still computes it
    from the inputs it is fed.
    """
    preds: dict[str, set[str]] = defaultdict(set)
    order: list[str] = list(info.inputs)
    depends: dict[str, frozenset[str]] = {name: frozenset([name]) for name in info.inputs}
    for node, reads in zip(info.nodes, info.node_inputs):
        ins = [x for x in reads if x in info.data or x in info.inputs]
        below = frozenset().union(*(depends.get(x, frozenset()) for x in ins))
        for o in node.output:
            if o and o in info.data:
                preds[o].update(ins)
                order.append(o)
                depends[o] = below
    points: set[str] = set()
    for inputs in set(depends.values()):
        points |= {v for v in _dominators(preds, order, inputs, info.outputs) if depends.get(v) == inputs}
    return points


def _dominators(preds: dict[str, set[str]], order: list[str], inputs: frozenset[str],
                outputs: list[str]) -> set[str]:
    """Tensors every path from `inputs` to the outputs goes through (other inputs count as constants).

    The graph of tensors is a DAG in topological order, so one pass finds immediate dominators:
    idom(v) is the nearest common dominator of v's predecessors.
    """
    source, sink = "\0source", "\0sink"
    idom: dict[str, str] = {source: source}
    depth = {source: 0}
    for v in [*order, sink]:
        if v in inputs:
            ps = [source]
        elif v == sink:
            ps = [o for o in outputs if o in idom]
        else:
            ps = [p for p in preds.get(v, ()) if p in idom]
        if not ps:
            continue
        d = ps[0]
        for p in ps[1:]:
            a, b = d, p
            while a != b:
                if depth[a] >= depth[b]:
                    a = idom[a]
                else:
                    b = idom[b]
            d = a
        idom[v] = d
        depth[v] = depth[d] + 1
    points: set[str] = set()
    v = idom.get(sink)
    while v is not None and v != source:
        points.add(v)
        v = idom[v]
    return points


# --- layers -----------------------------------------------------------------------------------

def _scope(name: str) -> str:
    return name.rsplit("/", 1)[0] if "/" in name else ""


def _stem(param: str) -> str:
    """'gpu_0/res2_0_branch2a_w_0' -> 'res2_0_branch2a'; 'conv1/7x7_s2_b_0' -> 'conv1/7x7_s2'."""
    name = re.sub(r"^gpu_\d+/", "", param)
    return _PARAM_SUFFIX.sub("", name) or name


def list_layers(model: onnx.ModelProto, info: GraphInfo | None = None) -> list[LayerInfo]:
    """The model's layers in graph order, with names, shapes, parameter counts and cut points."""
    info = info or GraphInfo(model)
    compute = [i for i in range(len(info.nodes)) if info.is_compute(i)]
    producer = model.producer_name.lower()
    if producer.startswith(KERAS_PRODUCERS):
        groups = _group_scoped(info, compute)
    elif producer == "pytorch" or _torch_prefix(info, compute) is not None:
        groups = _group_torch(info, compute, _torch_prefix(info, compute) or "")
    else:
        groups = _group_helpers(info, compute)
    points = cut_points(info)
    channels_first = _channels_first_layers(model)

    layers: list[LayerInfo] = []
    for label, members in groups:
        member_set = set(members)
        last = info.nodes[members[-1]]
        output = next((o for o in last.output if o), "")
        # A layer hands on the output its last node makes; prefer one consumed outside the group.
        for i in reversed(members):
            outs = [
                o for o in info.nodes[i].output
                if o and (o in info.outputs or any(c not in member_set for c in info.consumers.get(o, [])))
            ]
            if outs:
                output = outs[0]
                break
        params = {
            x
            for i in members
            for x in info.nodes[i].input
            if x and x in info.constant and info.is_float(x)
        }
        ops = [info.nodes[i].op_type for i in members if not _GLUE.match(info.nodes[i].name)]
        op_type = "+".join(dict.fromkeys(ops)) or info.nodes[members[0]].op_type
        shape = info.shape(output)
        if shape:
            shape = [None, *shape[1:]]
            if output in channels_first and len(shape) == 4:  # a cut there hands back NHWC
                shape = [None, shape[2], shape[3], shape[1]]
        layers.append(
            LayerInfo(
                index=len(layers),
                name=label or _node_label(info, members[0], params),
                op_type=op_type,
                output=output,
                shape=shape,
                parameters=sum(info.size(p) for p in params),
                is_cut_point=output in points,
                nodes=[info.nodes[i].name or info.nodes[i].output[0] for i in members],
            )
        )
    _dedupe_names(layers, info)
    return layers


def _node_label(info: GraphInfo, i: int, params: set[str]) -> str:
    node = info.nodes[i]
    if not _AUTO_NAME.match(node.name):
        return node.name
    # onnx-caffe2 exports call nodes n0, n1...; the weights still carry the Caffe layer name.
    stems = sorted({_stem(_origin(info, p)) for p in params if info.size(p) > 1 or len(params) == 1})
    if len(stems) == 1:
        return stems[0]
    return node.name or node.output[0]


def _origin(info: GraphInfo, name: str) -> str:
    """The named weight behind a derived constant (densenet's Unsqueeze(conv1/bn_w_0) -> 'r2')."""
    for _ in range(8):
        i = info.producer.get(name)
        if i is None or not _AUTO_NAME.match(info.nodes[i].name) or not re.fullmatch(r"r\d+", name):
            return name
        node = info.nodes[i]
        if node.op_type in ("ConstantOfShape", "Constant") or not node.input:
            return name
        name = node.input[0]
    return name


def _dedupe_names(layers: list[LayerInfo], info: GraphInfo) -> None:
    """Later layers that share a derived name get the op appended ('conv1/bn', 'conv1/bn/mul')."""
    taken: set[str] = set()
    for layer in layers:
        if layer.name in taken:
            alt = f"{layer.name}/{layer.op_type.lower()}"
            layer.name = alt if alt not in taken else (layer.nodes[-1] if layer.nodes[-1] not in taken else layer.output)
        taken.add(layer.name)


def _group_helpers(info: GraphInfo, compute: list[int]) -> list[tuple[str | None, list[int]]]:
    """One node per layer, except helper nodes named '<layer>/<what>' join that layer.

    The Caffe converter names a layer's last node after the layer and its helpers
    'ip1/Reshape'; a Caffe name with a slash of its own ('inception_3a/1x1') has no node
    called 'inception_3a', so it stays a layer.
    """
    names = {info.nodes[i].name for i in compute if info.nodes[i].name}
    groups: dict[str, list[int]] = {}
    for i in compute:
        name = info.nodes[i].name or info.nodes[i].output[0]
        key = name
        prefix = name
        while "/" in prefix:
            prefix = prefix.rsplit("/", 1)[0]
            if prefix in names:
                key = prefix
                break
        groups.setdefault(key, []).append(i)
    return [(key if len(members) > 1 else None, members) for key, members in groups.items()]


def _torch_module(scope: str) -> str:
    """torch.onnx scope 'layer1/layer1.0/conv1' -> the named_modules() path 'layer1.0.conv1'."""
    path = ""
    for part in scope.split("/"):
        if not part:
            continue
        path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
    return path


def _torch_prefix(info: GraphInfo, compute: list[int]) -> str | None:
    """The prefix before torch.onnx-style names ('/encoder/0/Conv') that most compute nodes share.

    A graph rewritten by another tool keeps the names torch gave its nodes behind a prefix of
    its own (spox inlines a branch as 'If_0_then_branch__Inline_0__/stft/Conv'). None when the
    names are not torch's.
    """
    prefixes = [info.nodes[i].name.split("/", 1)[0] for i in compute if "/" in info.nodes[i].name[1:]
                and info.nodes[i].name.split("/", 1)[1][:1] not in ("", "/")]
    if not prefixes:
        return None
    common = max(set(prefixes), key=prefixes.count)
    return common if prefixes.count(common) >= 0.5 * len(compute) and (
        common == "" or not any(c in common for c in " :")) and _looks_torch(info, compute, common) else None


def _looks_torch(info: GraphInfo, compute: list[int], prefix: str) -> bool:
    """torch.onnx names end in the op type ('/encoder/0/reparam_conv/Conv', 'Conv_1')."""
    names = [info.nodes[i] for i in compute if info.nodes[i].name.startswith(prefix + "/")]
    return sum(n.name.rsplit("/", 1)[-1].split("_")[0] == n.op_type for n in names) >= 0.6 * len(names)


def _group_torch(info: GraphInfo, compute: list[int], prefix: str = "") -> list[tuple[str | None, list[int]]]:
    """Group torch.onnx.export nodes by module ('/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1')."""
    groups: dict[str, list[int]] = {}
    for i in compute:
        name = info.nodes[i].name
        if prefix and name.startswith(prefix + "/"):
            name = name[len(prefix):]
        scope = _scope(name.lstrip("/"))
        label = _torch_module(scope) if scope else (name.lstrip("/") or info.nodes[i].output[0])
        groups.setdefault(label, []).append(i)
    return [(label, members) for label, members in groups.items()]


def _group_scoped(info: GraphInfo, compute: list[int]) -> list[tuple[str, list[int]]]:
    """Group the nodes of one framework layer by name scope ('model/fc1/MatMul' -> 'fc1')."""
    names = [info.nodes[i].name.lstrip("/") for i in compute]
    if any(_JAX_WRAPPER.match(part) for n in names for part in n.split("/")[:-1]):
        return _group_runs(info, compute, [_jax_label(n) for n in names])
    scopes = [_scope(n) for n in names]
    # Strip a scope every node shares (the Keras model's own name, "sequential_1/").
    common = _common_scope([s for s in scopes if s])
    # Keras 3 under tf2onnx suffixes every scope with "_1" ("mynet_1/fc1_1/MatMul").
    labels: list[str | None] = []
    for name, scope in zip(names, scopes):
        if _GLUE.match(name) or not scope:
            labels.append(None)
            continue
        # The Keras layer is the first scope below the model's; deeper ones are TF op scopes.
        labels.append((scope[len(common):].lstrip("/") or scope).split("/")[0])
    if labels and common.endswith("_1") and all(lab is None or lab.endswith("_1") for lab in labels):
        labels = [None if lab is None else lab[:-2] for lab in labels]
    return _group_labelled(info, compute, labels)


def _group_labelled(info: GraphInfo, compute: list[int], labels: list[str | None]) -> list[tuple[str, list[int]]]:
    """Nodes grouped by label; unlabelled tf2onnx glue joins the next labelled layer."""
    groups: dict[str, list[int]] = {}
    order: list[str] = []
    pending: list[int] = []  # unscoped glue waits for the next scoped layer
    for i, label in zip(compute, labels):
        if label is None:
            if _GLUE.match(info.nodes[i].name):
                pending.append(i)
                continue
            label = info.nodes[i].name or info.nodes[i].output[0]
        if label not in groups:
            groups[label] = []
            order.append(label)
        groups[label].extend(pending)
        groups[label].append(i)
        pending = []
    if pending:  # trailing glue: its own layer
        for i in pending:
            label = info.nodes[i].name
            groups[label] = [i]
            order.append(label)
    return [(label, sorted(groups[label])) for label in order]


# jax2tf wraps every traced function in a scope of its own ("jax2tf_get_logits_/pjit_get_logits_/");
# flax names submodules "<Class>_<n>" ("MagikaV2/Dense_0/einsum/Einsum").
_JAX_WRAPPER = re.compile(r"^(jax2tf_|pjit_|jit_|xla_call|checkpoint|remat|custom_jvp|custom_vjp|vmap)")
_FLAX_MODULE = re.compile(r"^[A-Za-z]\w*_\d+$")


def _jax_label(name: str) -> str | None:
    """The layer of a jax2tf node: its flax submodule below the root module ('Dense_0', 'LayerNorm_0');
    an op the root module applies itself ('Reshape', 'Max'); else the jitted function it is in
    ('one_hot', 'get_logits'). None for unscoped tf2onnx glue."""
    parts = name.split("/")
    scope, op = parts[:-1], parts[-1]
    if not scope:
        return None
    modules = [p for p in scope if not _JAX_WRAPPER.match(p)]
    for part in modules[1:]:
        if _FLAX_MODULE.match(part):
            return part
    if modules:  # an op of the root module's own __call__: name it by the op ('Max_Squeeze__213' -> 'Max')
        return re.sub(r"_[A-Z]\w*$", "", re.sub(r"__\d+$", "", op)) or op
    wrapper = [p for p in scope if _JAX_WRAPPER.match(p)][-1]
    return _JAX_WRAPPER.sub("", wrapper).strip("_") or wrapper


def _group_runs(info: GraphInfo, compute: list[int], labels: list[str | None]) -> list[tuple[str, list[int]]]:
    """Like _group_labelled, but a label that comes back after another layer starts a new layer
    ('Reshape', then 'Reshape_2'): ops of a root module repeat names flax submodules do not."""
    runs: list[str | None] = []
    seen: dict[str, int] = {}
    previous = None
    for label in labels:
        if label is None:
            runs.append(None)
            continue
        if label != previous:
            seen[label] = seen.get(label, 0) + 1
            previous = label
        runs.append(label if seen[label] == 1 else f"{label}_{seen[label]}")
    return _group_labelled(info, compute, runs)


def _common_scope(scopes: list[str]) -> str:
    if len(scopes) < 2:
        return ""
    parts = [s.split("/") for s in scopes]
    common: list[str] = []
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    # Keep at least one component so a layer never loses its own name.
    if common and all(len(p) == len(common) for p in parts):
        common = common[:-1]
    return "/".join(common)


# --- resolving a layer spec -------------------------------------------------------------------

def resolve(
    layers: list[LayerInfo], spec: str | int | Sequence[str | int], model_name: str, info: GraphInfo | None = None
) -> list[LayerInfo]:
    """Layers a spec names: a name, a position (-1 the last layer), or a list of those."""
    specs = [spec] if isinstance(spec, (str, int)) else list(spec)
    if not specs:
        raise UnknownLayerError(f"no layer given for {model_name}; pass a name or a position like -2")
    chosen: list[LayerInfo] = []
    for s in specs:
        layer = _resolve_one(layers, s, model_name, info)
        if layer not in chosen:
            chosen.append(layer)
    return chosen


def _resolve_one(layers: list[LayerInfo], spec: str | int, model_name: str, info: GraphInfo | None) -> LayerInfo:
    hint = f"List them with `zoo layers {model_name}`."
    if isinstance(spec, str) and re.fullmatch(r"[+-]?\d+", spec.strip()):
        spec = int(spec)
    if isinstance(spec, int) and not isinstance(spec, bool):
        if -len(layers) <= spec < len(layers):
            return layers[spec]
        raise UnknownLayerError(
            f"layer position {spec} is out of range for {model_name}: it has {len(layers)} layers "
            f"(positions 0..{len(layers) - 1} or -1..-{len(layers)}). {hint}"
        )
    if not isinstance(spec, str):
        raise UnknownLayerError(f"layer {spec!r} must be a name or an integer position. {hint}")
    for layer in layers:
        if spec == layer.name:
            return layer
    for layer in layers:  # an ONNX output tensor or node name works too
        if spec == layer.output or spec in layer.nodes:
            return layer
    if info is not None and spec in info.data:
        # Any data tensor can be an output, even one inside a layer.
        shape = info.shape(spec)
        return LayerInfo(-1, spec, "tensor", spec, shape and [None, *shape[1:]], 0,
                         spec in cut_points(info), [])
    if info is not None and (spec in info.constant or spec in info.shape_like):
        what = "a weight (constant)" if spec in info.constant else "shape arithmetic"
        raise UnknownLayerError(
            f"{spec!r} in {model_name} is {what}, not computed from the input, so it cannot be "
            f"cut at; pick a layer. {hint}"
        )
    close = difflib.get_close_matches(spec, [layer.name for layer in layers], n=3, cutoff=0.5)
    closest = f"; closest: {', '.join(close)}" if close else ""
    raise UnknownLayerError(f"layer {spec!r} is not in {model_name}{closest}. {hint}", layer=spec, closest=close)


# --- cutting ----------------------------------------------------------------------------------

def ancestors(info: GraphInfo, tensors: Iterable[str]) -> tuple[set[str], set[int]]:
    """(every tensor `tensors` are computed from, themselves included; the indices of the nodes computing them).

    Subgraphs (If/Loop bodies) read outer tensors by name: `info.node_inputs` counts those reads too.
    """
    needed: set[str] = set()
    nodes: set[int] = set()
    stack = list(tensors)
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        i = info.producer.get(name)
        if i is None or i in nodes:
            continue
        nodes.add(i)
        stack.extend(info.node_inputs[i])
    return needed, nodes


def cut(model: onnx.ModelProto, outputs: list[str], info: GraphInfo | None = None) -> onnx.ModelProto:
    """A model that computes only `outputs`: the nodes they need, typed outputs, batch kept.

    >>> sub = cut(onnx.load("resnet50.onnx"), ["r171"])   # doctest: +SKIP
    """
    import onnx
    from onnx import helper

    info = info or GraphInfo(model)
    graph = model.graph
    known = set(info.producer) | set(info.initializers) | {i.name for i in graph.input}
    missing = [o for o in outputs if o not in known]
    if missing:
        raise UnknownLayerError(f"tensor(s) {', '.join(missing)} are not in the graph")
    needed, keep = ancestors(info, outputs)
    nodes = [info.nodes[i] for i in sorted(keep)]
    channels_first = _channels_first_layers(model)
    new_outputs = []
    for name in outputs:
        elem, dims = info.types.get(name, (None, None))
        if elem is None:
            elem = onnx.TensorProto.FLOAT
        if name in channels_first and dims is not None and len(dims) == 4:
            # tf2onnx computed this Keras layer channels-first; hand back Keras's own NHWC layout.
            nodes = _with_nhwc_output(nodes, name)
            dims = [dims[0], dims[2], dims[3], dims[1]]
        new_outputs.append(helper.make_tensor_value_info(name, elem, dims))
    new_graph = helper.make_graph(
        nodes,
        graph.name,
        [i for i in graph.input if i.name in needed],
        new_outputs,
        [t for t in graph.initializer if t.name in needed],
        value_info=[v for v in graph.value_info if v.name in needed and v.name not in outputs],
    )
    new = helper.make_model(
        new_graph,
        opset_imports=list(model.opset_import),
        producer_name=model.producer_name,
        producer_version=model.producer_version,
    )
    new.ir_version = model.ir_version
    new.functions.extend(model.functions)
    for prop in model.metadata_props:
        new.metadata_props.add(key=prop.key, value=prop.value)
    return new


def _channels_first_layers(model: onnx.ModelProto) -> set[str]:
    """Layers the TensorFlow converter marked as moved to NCHW (metadata ``zoo:layers``)."""
    import json

    for prop in model.metadata_props:
        if prop.key == "zoo:layers":
            return {name for name, layout in json.loads(prop.value).items() if layout == "NCHW"}
    return set()


def _with_nhwc_output(nodes: list, name: str) -> list:
    """`nodes` with tensor `name` renamed to `name/nchw` and a Transpose to NHWC producing `name`."""
    from onnx import helper

    inner = f"{name}/nchw"
    renamed = []
    for node in nodes:
        if name in node.output or name in node.input:
            node = _copy_node(node)
            for field in (node.output, node.input):
                for k, value in enumerate(field):
                    if value == name:
                        field[k] = inner
        renamed.append(node)
    renamed.append(helper.make_node("Transpose", [inner], [name], name=f"{name}/to_nhwc", perm=[0, 2, 3, 1]))
    return renamed


def _copy_node(node):
    from onnx import NodeProto

    copy = NodeProto()
    copy.CopyFrom(node)
    return copy


def _outer_names(graph) -> Iterable[str]:
    """Names a subgraph reads from enclosing scopes, its own nested subgraphs included."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        local.update(node.output)
    for node in graph.node:
        for x in node_reads(node):
            if x not in local:
                yield x


# --- dynamic batch ----------------------------------------------------------------------------



def batch_dim(model: onnx.ModelProto) -> int | str | None:
    """The first data input's batch axis: an int when fixed, its symbol when dynamic."""
    inits = {t.name for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if not dims:
            return None
        return dim_value(dims[0])
    return None


def make_batch_dynamic(model: onnx.ModelProto, *, check: bool = True,
                       notes: list[str] | None = None) -> onnx.ModelProto | None:
    """A copy whose fixed batch axis is symbolic, or None when it has none or that cannot be shown safe.

    Caffe prototxts and old exports fix the batch (often 1) and flatten with Reshape(shape=[1, -1]).
    Those constants become 0 ("copy this axis"), then shape inference must carry the symbol to
    every output that had the batch and leave the others (a constant table) as they were.
    With ``check=False`` the rewrite is returned without that proof: a converter proves it
    instead by running the model on batch 2. `notes` collects what changed, for a report.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    fixed = batch_dim(model)
    if not isinstance(fixed, int) or fixed <= 0 or fixed_batch(model) != fixed:
        return None
    in_axes, out_axes, _ = model_batch_axes(model)
    new = onnx.ModelProto()
    new.CopyFrom(model)
    graph = new.graph
    inits = {t.name: t for t in graph.initializer}
    for inp in graph.input:
        if inp.name in inits or in_axes.get(inp.name) is None:
            continue  # fed whole (a scalar, a fixed table): no batch axis to free
        dims = inp.type.tensor_type.shape.dim
        axis = in_axes[inp.name]
        if check and axis != 0:  # shape inference cannot prove a batch on another axis; the converter's run can
            return None
        dims[axis].Clear()
        dims[axis].dim_param = BATCH
    changed = [f"batch dimension was fixed at [{fixed}]; made dynamic"]
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    info = GraphInfo(model)
    rewritten: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[0] not in info.data:
            continue  # reshaping a weight has nothing to do with the batch
        if any(a.name == "allowzero" and a.i for a in node.attribute):
            if check:
                return None
            continue
        name = node.input[1]
        if name not in rewritten:
            if name in inits:
                value = numpy_helper.to_array(inits[name])
            elif name in consts and consts[name].attribute and consts[name].attribute[0].name == "value":
                value = numpy_helper.to_array(consts[name].attribute[0].t)
            else:
                continue  # computed from Shape: already follows the batch
            if not (value.ndim == 1 and value.size and value[0] == fixed):
                continue
            value = value.astype(np.int64)
            value[0] = 0  # Reshape's "copy this axis from the input"
            # A new tensor: the old one may also shape a weight elsewhere.
            fresh_name = f"{name}__dynamic_batch"
            graph.initializer.append(numpy_helper.from_array(value, fresh_name))
            if new.ir_version < 4:  # IR 3 lists initializers among the inputs
                graph.input.append(onnx.helper.make_tensor_value_info(fresh_name, onnx.TensorProto.INT64, [len(value)]))
            rewritten[name] = fresh_name
            changed.append(f"Reshape {node.name or node.output[0]}: batch in its target shape made dynamic")
        node.input[1] = rewritten[name]
    # Stale value_info would pin the old batch size.
    del graph.value_info[:]
    if not check:
        for out in graph.output:
            dims = out.type.tensor_type.shape.dim
            axis = out_axes.get(out.name, 0)
            # The batch when symbolic or equal to the fixed batch; a fixed size of its own (a [10] table) stays.
            if len(dims) > axis and (not dims[axis].HasField("dim_value") or dims[axis].dim_value == fixed):
                dims[axis].dim_param = BATCH
        if notes is not None:
            notes += changed
        return new
    before = _inferred_types(model)
    shapes = {out.name: list(out.type.tensor_type.shape.dim) for out in graph.output}
    for out in graph.output:
        out.type.tensor_type.ClearField("shape")
    after = _inferred_types(new)
    for out in graph.output:
        old, now = before.get(out.name, (0, None))[1], after.get(out.name, (0, None))[1]
        if not old or not now or len(old) != len(now) or old[1:] != now[1:]:
            return None
        if old[0] == fixed and now[0] != BATCH:
            return None
        if old[0] != fixed:  # not the batch (a constant table): keep its shape as declared
            if now[0] != old[0]:
                return None
            out.type.tensor_type.shape.dim.extend(shapes[out.name])
            continue
        elem = after[out.name][0]
        fresh = onnx.helper.make_tensor_value_info(out.name, elem, now)
        out.CopyFrom(fresh)
    if notes is not None:
        notes += changed
    return new


# --- batch axes ------------------------------------------------------------------------------

def fixed_batch(model: onnx.ModelProto, first: int | str | None = None) -> int | str | None:
    """The first input's batch size when the graph fixes it; None when a symbolic axis is the batch.

    With several inputs a fixed first axis may be something else (a state's number of layers)
    while the batch is a symbolic axis further in.
    """
    first = batch_dim(model) if first is None else first
    inits = {t.name for t in model.graph.initializer}
    dims = [value_dims(i) for i in model.graph.input if i.name not in inits]
    symbolic = any(d is None or not all(isinstance(x, int) for x in d) for d in dims)
    if isinstance(first, int) and len(dims) > 1 and symbolic:
        return None
    return first


def batch_axes(shapes: dict[str, list | None], fixed: int | str | None) -> dict[str, int | None]:
    """Each input's batch axis: where the batch symbol sits, or None for inputs fed whole (a scalar `sr`).

    The batch is the first axis of the first input whose first axis is not fixed. An input that
    names that symbol elsewhere (a recurrent state (layers, N, hidden)) is batched on that axis;
    one whose first axis is symbolic too (exporters that name axes per input) on axis 0; one
    whose only free axis is further in (Silero VAD's state (2, ?, 128)) on that axis; a
    fixed-shape one not at all. This one rule serves extractors (how to split batches) and
    converters (how to make sample inputs and run a fixed-batch model one sample at a time).
    """
    ranked = [dims for dims in shapes.values() if dims]
    reference = next((dims for dims in ranked if not isinstance(dims[0], int)), ranked[0] if ranked else [])
    if isinstance(fixed, int):
        symbol: int | str | None = fixed
    else:
        anywhere = [d for dims in ranked for d in dims if not isinstance(d, int)]
        symbol = reference[0] if reference and not isinstance(reference[0], int) else (anywhere or [None])[0]
    # Symbols the reference input uses for its other axes (a sequence length) are not the batch.
    others = {d for d in reference[1:] if isinstance(d, str) and d != symbol}
    axes: dict[str, int | None] = {}
    for name, dims in shapes.items():
        free = [k for k, d in enumerate(dims or []) if not isinstance(d, int) and d not in others]
        if dims is None:
            axes[name] = 0  # no shape recorded: the usual layout, checked against the array
        elif not dims:
            axes[name] = None
        elif symbol is not None and symbol in dims:
            axes[name] = dims.index(symbol)
        elif isinstance(symbol, int):
            axes[name] = None
        elif not isinstance(dims[0], int):
            axes[name] = 0
        else:
            axes[name] = free[0] if len(free) == 1 else None
    return axes


def output_batch_axis(
    dims: list | None, shapes: dict[str, list | None], axes: dict[str, int | None], fixed: int | str | None
) -> int:
    """The axis of an output that follows the batch (axis 0 unless the batch sits elsewhere)."""
    symbols = {shapes[n][a] for n, a in axes.items() if a is not None and shapes[n] and isinstance(shapes[n][a], str)}
    if not dims:
        return 0
    for k, d in enumerate(dims):
        if isinstance(d, str) and d in symbols:
            return k
    if isinstance(fixed, int):  # a fixed batch: axis 0 when it has that size, else the first axis that does
        return 0 if dims[0] == fixed else next((k for k, d in enumerate(dims) if d == fixed), 0)
    free = [k for k, d in enumerate(dims) if not isinstance(d, int)]
    if isinstance(dims[0], int) and len(free) == 1:  # unnamed: the only free axis
        return free[0]
    return 0


def model_batch_axes(model: onnx.ModelProto) -> tuple[dict[str, int | None], dict[str, int], int | str | None]:
    """(input name -> batch axis, output name -> batch axis, fixed batch size or None) of a model."""
    inits = {t.name for t in model.graph.initializer}
    shapes = {i.name: value_dims(i) for i in model.graph.input if i.name not in inits}
    fixed = fixed_batch(model)
    axes = batch_axes(shapes, fixed)
    outputs = {o.name: output_batch_axis(value_dims(o), shapes, axes, fixed) for o in model.graph.output}
    return axes, outputs, fixed


# --- cost ---------------------------------------------------------------------------------------

def macs(model: onnx.ModelProto, info: GraphInfo | None = None) -> int:
    """Multiply-accumulates of the Conv, ConvTranspose, Gemm and MatMul nodes for one sample."""
    info = info or GraphInfo(model)
    total = 0
    for node in info.nodes:
        out = info.shape(node.output[0]) if node.output else None
        if not out:
            continue
        out_elems = _prod(out[1:])
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
            w = info.shape(node.input[1])
            x = info.shape(node.input[0])
            if not w:
                continue
            if node.op_type == "Conv":  # each output element sums C_in/groups x kernel products
                total += out_elems * _prod(w[1:])
            elif x:  # each input element is spread over C_out/groups x kernel outputs
                total += _prod(x[2:]) * _prod(w)
        elif node.op_type in ("Gemm", "MatMul") and len(node.input) > 1:
            a = info.shape(node.input[0])
            if a:
                k = a[0] if any(x.name == "transA" and x.i for x in node.attribute) else a[-1]
                total += out_elems * (k if isinstance(k, int) else 0)
    return total


def _prod(dims: Sequence[Any]) -> int:
    n = 1
    for d in dims:
        n *= d if isinstance(d, int) else 1
    return n

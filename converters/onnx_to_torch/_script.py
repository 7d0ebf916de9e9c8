"""`torch.jit.script(OnnxModule)`: the graph written out as a torch.fx forward of typed op calls."""
from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from converters.onnx_to_torch import _script_ops as S
from converters.onnx_to_torch._ops import ONNX_DTYPES, Node, OpFunction
from zoo.errors import UnsupportedLayerError

if TYPE_CHECKING:
    from converters.onnx_to_torch._module import OnnxModule


@dataclass
class Arg:
    """One input of a node: its fx value (None when omitted) and, if known at conversion time, its tensor."""

    node: Any = None
    value: torch.Tensor | None = None

    @property
    def present(self) -> bool:
        return self.node is not None


class _Writer:
    """Builds the fx graph: op calls with attributes as literals, weights and constants as attributes."""

    def __init__(self, graph: fx.Graph):
        self.graph = graph

    def call(self, fn: Callable, *args) -> fx.Node:
        return self.graph.call_function(fn, tuple(a.node if isinstance(a, Arg) else a for a in args))

    def ints(self, arg: Arg) -> Any:
        """A list of ints known now as a literal, else the call that reads it at run time."""
        if arg.value is not None:
            return [int(v) for v in arg.value.reshape(-1).tolist()]
        return self.call(S.ints, arg)

    def floats(self, arg: Arg) -> Any:
        if arg.value is not None:
            return [float(v) for v in arg.value.reshape(-1).tolist()]
        return self.call(S.floats, arg)

    def scalar(self, arg: Arg, default: float) -> float:
        if not arg.present:
            return default
        if arg.value is None:
            raise _NoScript("a scalar computed at run time")
        return float(arg.value.reshape(-1)[0]) if arg.value.numel() else default


class _NoScript(Exception):
    """This node has no TorchScript form here."""


EMITTERS: dict[str, Callable[[_Writer, Node, list[Arg]], Any]] = {}


def emits(*names: str):
    def register(fn):
        for name in names:
            EMITTERS[name] = fn
        return fn

    return register


def _arg(args: list[Arg], k: int) -> Arg:
    return args[k] if k < len(args) else Arg()


def _direct(fn):
    return lambda w, node, args: w.call(fn, *args)


for _name, _fn in {
    "Abs": torch.abs, "Neg": torch.neg, "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Relu": torch.relu,
    "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf, "Sin": torch.sin, "Cos": torch.cos,
    "Sign": torch.sign, "Not": torch.logical_not, "Softsign": F.softsign, "Round": torch.round,
    "IsNaN": torch.isnan, "HardSwish": F.hardswish, "Softplus": F.softplus, "Mish": F.mish,
    "MatMul": torch.matmul, "Where": S.where, "CastLike": S.cast_like, "PRelu": S.prelu,
}.items():
    EMITTERS[_name] = _direct(_fn)

_BINARY = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": S.div, "Pow": S.pow_,
           "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
           "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
           "Xor": torch.logical_xor}


@emits(*_BINARY)
def _binary(w, node, args):
    if node.opset < 7 and node.attrs.get("broadcast") and node.attrs.get("axis") is not None:
        raise _NoScript("opset < 7 axis broadcasting")
    return w.call(_BINARY[node.op_type], *args)


@emits("Mod")
def _mod(w, node, args):
    return w.call(torch.fmod if node.attrs.get("fmod", 0) else torch.remainder, *args)


@emits("Max", "Min", "Sum", "Mean")
def _variadic(w, node, args):
    return w.call(S.variadic, [a.node for a in args], node.op_type)


@emits("Identity", "Dropout")
def _identity(w, node, args):
    x = args[0].node
    if node.op_type == "Dropout" and len([o for o in node.outputs if o]) > 1:
        return [x, w.graph.call_function(torch.ones_like, (x,), {"dtype": torch.bool})]
    return x


@emits("LeakyRelu")
def _leaky(w, node, args):
    return w.call(S.leaky_relu, args[0], float(node.attrs.get("alpha", 0.01)))


@emits("Elu", "Celu")
def _elu(w, node, args):
    return w.call(S.elu if node.op_type == "Elu" else S.celu, args[0], float(node.attrs.get("alpha", 1.0)))


@emits("Selu")
def _selu(w, node, args):
    return w.call(S.selu, args[0], float(node.attrs.get("alpha", 1.67326319217681884765625)),
                  float(node.attrs.get("gamma", 1.05070102214813232421875)))


@emits("HardSigmoid")
def _hard_sigmoid(w, node, args):
    return w.call(S.hard_sigmoid, args[0], float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5)))


@emits("Gelu")
def _gelu(w, node, args):
    return w.call(S.gelu, args[0], node.attrs.get("approximate", "none"))


@emits("Clip")
def _clip(w, node, args):
    if node.opset < 11:
        return w.call(S.clip_fixed, args[0], float(node.attrs.get("min", -math.inf)),
                      float(node.attrs.get("max", math.inf)))
    return w.call(S.clip, args[0], _arg(args, 1), _arg(args, 2))


@emits("Cast")
def _cast(w, node, args):
    return w.call(S.cast, args[0], ONNX_DTYPES[node.attrs["to"]])


@emits("Softmax", "LogSoftmax", "Hardmax")
def _softmax(w, node, args):
    legacy = node.opset < 13
    return w.call(S.softmax, args[0], int(node.attrs.get("axis", 1 if legacy else -1)), legacy, node.op_type)


def _window(node: Node, n: int) -> tuple[list[int], list[int], list[int], list[int], str]:
    a = node.attrs
    pads = list(a.get("pads", [])) or [0] * (2 * n)
    return (list(a.get("strides", [])) or [1] * n, list(a.get("dilations", [])) or [1] * n,
            pads[:n], pads[n:], a.get("auto_pad", "NOTSET"))


@emits("Conv")
def _conv(w, node, args):
    weight = args[1].value
    if weight is None:
        raise _NoScript("a weight computed at run time")
    strides, dilations, begin, end, auto_pad = _window(node, weight.dim() - 2)
    return w.call(S.conv, args[0], args[1], _arg(args, 2), strides, begin, end, dilations,
                  int(node.attrs.get("group", 1)), auto_pad)


@emits("MaxPool", "AveragePool")
def _pool(w, node, args):
    kernel = list(node.attrs["kernel_shape"])
    strides, dilations, begin, end, auto_pad = _window(node, len(kernel))
    ceil = bool(node.attrs.get("ceil_mode", 0))
    if node.op_type == "MaxPool":
        if node.attrs.get("storage_order", 0) or len([o for o in node.outputs if o]) > 1:
            raise _NoScript("MaxPool indices")
        return w.call(S.max_pool, args[0], kernel, strides, dilations, begin, end, auto_pad, ceil)
    if any(d != 1 for d in dilations):
        raise _NoScript("AveragePool dilations")
    return w.call(S.avg_pool, args[0], kernel, strides, begin, end, auto_pad, ceil,
                  bool(node.attrs.get("count_include_pad", 0)))


@emits("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(w, node, args):
    return w.call(S.global_pool, args[0], "max" if node.op_type == "GlobalMaxPool" else "avg")


@emits("LRN")
def _lrn(w, node, args):
    a = node.attrs
    return w.call(S.lrn, args[0], int(a["size"]), float(a.get("alpha", 1e-4)), float(a.get("beta", 0.75)),
                  float(a.get("bias", 1.0)))


@emits("BatchNormalization")
def _batch_norm(w, node, args):
    return w.call(S.batch_norm, *args[:5], float(node.attrs.get("epsilon", 1e-5)))


@emits("InstanceNormalization")
def _instance_norm(w, node, args):
    return w.call(S.instance_norm, *args[:3], float(node.attrs.get("epsilon", 1e-5)))


@emits("LayerNormalization")
def _layer_norm(w, node, args):
    return w.call(S.layer_norm, args[0], args[1], _arg(args, 2), int(node.attrs.get("axis", -1)),
                  float(node.attrs.get("epsilon", 1e-5)))


@emits("Gemm")
def _gemm(w, node, args):
    a = node.attrs
    return w.call(S.gemm, args[0], args[1], _arg(args, 2), float(a.get("alpha", 1.0)), float(a.get("beta", 1.0)),
                  bool(a.get("transA", 0)), bool(a.get("transB", 0)))


@emits("Shape")
def _shape(w, node, args):
    end = node.attrs.get("end")
    return w.call(S.shape, args[0], int(node.attrs.get("start", 0)), (1 << 31) if end is None else int(end))


@emits("Size")
def _size(w, node, args):
    return w.call(S.size, args[0])


@emits("ConstantOfShape")
def _constant_of_shape(w, node, args):
    value = node.attrs.get("value")
    fill = torch.from_numpy(np.array(value).reshape(-1)) if value is not None else torch.zeros(1)
    return w.call(S.full, w.ints(args[0]), float(fill[0]), fill.dtype, args[0])


@emits("Reshape")
def _reshape(w, node, args):
    sizes = list(node.attrs["shape"]) if node.opset < 5 else w.ints(args[1])
    return w.call(S.reshape, args[0], sizes, bool(node.attrs.get("allowzero", 0)))


@emits("Flatten")
def _flatten(w, node, args):
    return w.call(S.flatten, args[0], int(node.attrs.get("axis", 1)))


@emits("Transpose")
def _transpose(w, node, args):
    return w.call(S.transpose, args[0], list(node.attrs.get("perm", [])))


def _axes(w, node, args, k: int) -> Any:
    if node.opset < 13 or (node.op_type not in ("Squeeze", "Unsqueeze") and node.opset < 18):
        return list(node.attrs.get("axes", []))
    return w.ints(args[k]) if _arg(args, k).present else []


@emits("Squeeze")
def _squeeze(w, node, args):
    return w.call(S.squeeze, args[0], _axes(w, node, args, 1))


@emits("Unsqueeze")
def _unsqueeze(w, node, args):
    return w.call(S.unsqueeze, args[0], _axes(w, node, args, 1))


@emits("Concat")
def _concat(w, node, args):
    return w.call(S.concat, [a.node for a in args if a.present], int(node.attrs.get("axis", 1)))


@emits("Split")
def _split(w, node, args):
    fixed = node.attrs.get("split")
    sizes = list(fixed) if fixed else (w.ints(args[1]) if _arg(args, 1).present else [])
    n = int(node.attrs.get("num_outputs") or len(node.outputs))
    parts = w.call(S.split, args[0], sizes, int(node.attrs.get("axis", 0)), n)
    return [w.graph.call_function(operator.getitem, (parts, k)) for k in range(len(node.outputs))]


@emits("Slice")
def _slice(w, node, args):
    if node.opset < 10:
        a = node.attrs
        return w.call(S.slice_, args[0], list(a["starts"]), list(a["ends"]), list(a.get("axes", [])), [])
    optional = [w.ints(_arg(args, k)) if _arg(args, k).present else [] for k in (3, 4)]
    return w.call(S.slice_, args[0], w.ints(args[1]), w.ints(args[2]), *optional)


@emits("Gather")
def _gather(w, node, args):
    return w.call(S.gather, args[0], args[1], int(node.attrs.get("axis", 0)))


@emits("GatherElements")
def _gather_elements(w, node, args):
    return w.call(S.gather_elements, args[0], args[1], int(node.attrs.get("axis", 0)))


@emits("Expand")
def _expand(w, node, args):
    return w.call(S.expand, args[0], w.ints(args[1]))


@emits("Tile")
def _tile(w, node, args):
    return w.call(S.tile, args[0], w.ints(args[1]))


@emits("Range")
def _range(w, node, args):
    return w.call(S.range_, *args[:3])


@emits("Pad")
def _pad(w, node, args):
    a = node.attrs
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}[
        a.get("mode", "constant")]
    if node.opset < 11:
        return w.call(S.pad, args[0], list(a.get("pads", a.get("paddings", []))), float(a.get("value", 0.0)),
                      [], mode)
    axes = w.ints(args[3]) if _arg(args, 3).present else []
    return w.call(S.pad, args[0], w.ints(args[1]), w.scalar(_arg(args, 2), 0.0), axes, mode)


@emits("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
       "ReduceSumSquare", "ReduceLogSumExp")
def _reduce(w, node, args):
    a = node.attrs
    from_input = node.opset >= 18 or (node.op_type == "ReduceSum" and node.opset >= 13)
    if from_input:
        axes = w.ints(args[1]) if _arg(args, 1).present else []
    else:
        axes = list(a.get("axes", []))
    return w.call(S.reduce, args[0], axes, bool(a.get("keepdims", 1)), bool(a.get("noop_with_empty_axes", 0)),
                  node.op_type)


@emits("ArgMax", "ArgMin")
def _arg_op(w, node, args):
    a = node.attrs
    return w.call(S.arg, args[0], int(a.get("axis", 0)), bool(a.get("keepdims", 1)),
                  bool(a.get("select_last_index", 0)), node.op_type == "ArgMax")


@emits("Resize", "Upsample")
def _resize(w, node, args):
    from converters.onnx_to_torch._ops import OPS

    OPS[node.op_type](node)  # the same checks as the eager op (raises Unsupported)
    a = node.attrs
    mode = a.get("mode", "nearest")
    coord = a.get("coordinate_transformation_mode", "half_pixel" if node.op_type == "Resize"
                  and node.opset >= 11 else "asymmetric")
    if node.op_type == "Resize" and node.opset < 11:
        coord = "asymmetric"
    if mode == "nearest":
        torch_mode, align = ("nearest", None) if coord == "asymmetric" else ("nearest-exact", None)
    else:
        torch_mode, align = "linear", coord == "align_corners"
    scales, sizes = [], []
    if node.op_type == "Upsample" and node.opset < 9:
        scales = [float(s) for s in a["scales"]]
    elif node.op_type == "Upsample" or node.opset < 11:
        scales = w.floats(args[1])
    else:
        if _arg(args, 3).present and (args[3].value is None or args[3].value.numel()):
            sizes = w.ints(args[3])
        else:
            scales = w.floats(args[2])
    return w.call(S.resize, args[0], scales, sizes, torch_mode, align)


@emits("DepthToSpace")
def _depth_to_space(w, node, args):
    return w.call(S.depth_to_space, args[0], int(node.attrs["blocksize"]), node.attrs.get("mode", "DCR") == "DCR")


@emits("SpaceToDepth")
def _space_to_depth(w, node, args):
    return w.call(S.space_to_depth, args[0], int(node.attrs["blocksize"]))


@emits("Einsum")
def _einsum(w, node, args):
    return w.graph.call_function(torch.einsum, (node.attrs["equation"], [a.node for a in args]))


@emits("GRU", "LSTM", "RNN")
def _recurrent(w, node, args):
    from converters.onnx_to_torch._ops import OPS

    OPS[node.op_type](node)  # the same checks as the eager op (raises Unsupported)
    a = node.attrs
    dirs = 2 if a.get("direction", "forward") == "bidirectional" else 1
    defaults = {"GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"], "RNN": ["Tanh"]}[node.op_type]
    acts = list(a.get("activations", [])) or defaults * dirs
    clip = a.get("clip")
    out = w.call(S.recurrent, node.op_type, args[0], args[1], args[2], _arg(args, 3), _arg(args, 4),
                 _arg(args, 5), _arg(args, 6) if node.op_type == "LSTM" else None,
                 _arg(args, 7) if node.op_type == "LSTM" else None, a.get("direction", "forward"),
                 int(a.get("layout", 0)), math.inf if clip is None else float(clip),
                 bool(a.get("linear_before_reset", 0)), acts)
    return [w.graph.call_function(operator.getitem, (out, k)) for k in range(len(node.outputs))]


@emits("ConvTranspose")
def _conv_transpose(w, node, args):
    weight = args[1].value
    if weight is None:
        raise _NoScript("a weight computed at run time")
    strides, dilations, begin, end, auto_pad = _window(node, weight.dim() - 2)
    a = node.attrs
    return w.call(S.conv_transpose, args[0], args[1], _arg(args, 2), strides, begin, end, dilations,
                  int(a.get("group", 1)), auto_pad, list(a.get("output_padding", [])),
                  list(a.get("output_shape", [])))


@emits("CumSum")
def _cumsum(w, node, args):
    return w.call(S.cumsum, args[0], args[1], bool(node.attrs.get("exclusive", 0)), bool(node.attrs.get("reverse", 0)))


@emits("GatherND")
def _gather_nd(w, node, args):
    if node.attrs.get("batch_dims", 0):
        raise _NoScript("batch_dims")
    return w.call(S.gather_nd, *args[:2])


@emits("ScatterND")
def _scatter_nd(w, node, args):
    return w.call(S.scatter_nd, *args[:3])


@emits("OneHot")
def _one_hot(w, node, args):
    return w.call(S.one_hot, *args[:3], int(node.attrs.get("axis", -1)))


@emits("Shrink")
def _shrink(w, node, args):
    return w.call(S.shrink, args[0], float(node.attrs.get("bias", 0.0)), float(node.attrs.get("lambd", 0.5)))


@emits("ThresholdedRelu")
def _thresholded_relu(w, node, args):
    return w.call(S.thresholded_relu, args[0], float(node.attrs.get("alpha", 1.0)))


@emits("TopK")
def _topk(w, node, args):
    a = node.attrs
    rest = (int(a.get("axis", -1)), bool(a.get("largest", 1)), bool(a.get("sorted", 1)))
    if node.opset < 10:
        out = w.call(S.topk, args[0], int(a["k"]), *rest)
    else:
        out = w.call(S.topk_input, args[0], args[1], *rest)
    return [w.graph.call_function(operator.getitem, (out, k)) for k in range(len(node.outputs))]


@emits("Trilu")
def _trilu(w, node, args):
    return w.call(S.trilu, args[0], _arg(args, 1), bool(node.attrs.get("upper", 1)))


@emits("NonZero")
def _non_zero(w, node, args):
    return w.call(S.non_zero, args[0])


@emits("IsInf")
def _is_inf(w, node, args):
    return w.call(S.is_inf, args[0], bool(node.attrs.get("detect_positive", 1)),
                  bool(node.attrs.get("detect_negative", 1)))


# ---------------------------------------------------------------- the module
def scriptable(module: OnnxModule) -> fx.GraphModule:
    """An fx.GraphModule computing what `module` computes in eval mode, which torch.jit.script compiles.

    It shares the module's parameters and names them the same way. What it leaves out: the eager
    module's input checks and casts, dropout and batch statistics while training (it is the
    inference graph), and ops without a TorchScript form here, which raise UnsupportedLayerError.
    """
    from converters.onnx_to_torch._module import BatchNormLayer, OnnxLayer, _ConvBatchNorm, _sanitize

    graph = fx.Graph()
    writer = _Writer(graph)
    paths = {id(m): name for name, m in module.named_modules()}
    env: dict[str, Arg] = {}
    for name in module.input_names:
        env[name] = Arg(graph.placeholder(_sanitize(name)))
    for name, key in module._constant_names.items():
        env[name] = Arg(graph.get_attr(f"constants.{key}"), getattr(module.constants, key))
    problems: list[tuple[str, str, str]] = []

    def layer_args(layer: OnnxLayer, runtime: list[Arg]) -> list[Arg]:
        it = iter(runtime)
        out = []
        for slot in layer._slots:
            if slot:
                path = f"{paths[id(layer)]}.{slot}"
                out.append(Arg(graph.get_attr(path), getattr(layer, slot)))
            else:
                out.append(next(it))
        return out

    def run_layer(layer: OnnxLayer, runtime: list[Arg]) -> Any:
        node = layer._fn.node
        out = EMITTERS[node.op_type](writer, node, layer_args(layer, runtime))
        if layer._bias_fn is not None:
            bias = Arg(graph.get_attr(f"{paths[id(layer)]}.bias"), layer.bias)
            pair = (bias, Arg(out)) if layer._bias_first else (Arg(out), bias)
            out = EMITTERS[layer._bias_fn.node.op_type](writer, layer._bias_fn.node, list(pair))
        return out

    for step in module._steps:
        runtime = [env[n] if n else Arg() for n in step.args]
        call = step.call
        if isinstance(call, _ConvBatchNorm):
            node = call.bn._fn.node
        elif isinstance(call, OnnxLayer):
            node = call._fn.node
        else:
            assert isinstance(call, OpFunction), type(call)
            node = call.node
        try:
            if node.op_type not in EMITTERS:
                raise _NoScript("")
            if isinstance(call, _ConvBatchNorm):
                out = run_layer(call.bn, [Arg(run_layer(call.conv, runtime))])
            elif isinstance(call, (OnnxLayer, BatchNormLayer)):
                out = run_layer(call, runtime)
            else:
                out = EMITTERS[node.op_type](writer, node, runtime)
        except _NoScript as exc:
            problems.append((node.op_type, node.name, str(exc)))
            out = [None] * len(step.outputs)
        outs = out if isinstance(out, list) else [out]
        for name, value in zip(step.outputs, outs):
            if name:
                env[name] = Arg(value)
    if problems:
        listed = "; ".join(f"{name} ({op}{': ' + why if why else ''})" for op, name, why in problems[:20])
        raise UnsupportedLayerError(
            f"ONNX op(s) {', '.join(sorted({p[0] for p in problems}))} have no TorchScript form here; "
            f"nodes: {listed}. torch.jit.trace(module, example_inputs) records them instead")
    results = [env[name].node for name in module.output_names]
    graph.output(results[0] if len(results) == 1 else tuple(results))
    graph.eliminate_dead_code()
    scripted = fx.GraphModule(module, graph, class_name="OnnxScriptModule")
    scripted.input_names = list(module.input_names)
    scripted.output_names = list(module.output_names)
    return scripted.eval()

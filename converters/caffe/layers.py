"""Caffe layers as ONNX nodes, with Caffe's own arithmetic (pooling rounding, AVE divisors, BatchNorm scale)."""
from __future__ import annotations

# Naming rule, so a graph can be cut at a Caffe layer name:
# - a net input keeps its blob name (``data``);
# - a layer with one top writes a tensor named after the LAYER, not the blob, so each layer of an in-place
#   chain (conv1 -> bn_conv1 -> scale_conv1 -> conv1_relu, all on blob conv1) has its own output, and
#   cutting at a layer name gives exactly that layer's output; the ONNX node is named after the layer too;
# - a layer with several tops (Slice, Split) writes tensors named after its TOP blobs;
# - a name already taken (duplicate layer names) gets ``_1``, ``_2``... appended;
# - helper tensors and weights are named ``<layer>/<what>`` and never collide with layer or blob names.
# The graph outputs are the blobs no later layer reads (Caffe's net outputs), under their final tensor name.

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from zoo.errors import ConversionError, UnsupportedLayerError
from zoo.graph import BATCH  # the dim_param of the dynamic batch dimension

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from .parse import Net


@dataclass
class BlobSpec:
    """A weight blob a layer needs: its shape, what it is, and the fan-in for random initialisation."""

    shape: list[int]
    role: str  # weights, bias, mean, variance, scale_factor, scale, slope
    fan_in: float = 1.0


# A source of weights: (layer, specs) -> one float32 array per spec, shaped like the spec.
BlobSource = Callable[[Any, "list[BlobSpec]"], "list[np.ndarray]"]


@dataclass
class Builder:
    """Accumulates ONNX nodes and initializers while walking the Caffe net."""

    opset: int
    blob_source: BlobSource
    model: Any  # onnx.ModelProto being filled
    store_weights: bool = True  # False: only walk the net (shapes, blob specs), e.g. for random weights
    shapes: dict[str, list[int]] = field(default_factory=dict)
    reserved: set[str] = field(default_factory=set)  # layer names and blob names
    used: set[str] = field(default_factory=set)
    node_names: set[str] = field(default_factory=set)

    @property
    def graph(self):
        return self.model.graph

    def output_name(self, name: str) -> str:
        """A layer's (or top's) output tensor name: the name itself unless already used."""
        candidate, n = name, 0
        while candidate in self.used:
            n += 1
            candidate = f"{name}_{n}"
        self.used.add(candidate)
        return candidate

    def helper(self, layer: str, what: str) -> str:
        """A fresh internal tensor name that no layer or blob uses."""
        base = f"{layer}/{what}"
        candidate, n = base, 0
        while candidate in self.used or candidate in self.reserved:
            n += 1
            candidate = f"{base}_{n}"
        self.used.add(candidate)
        return candidate

    def const(self, layer: str, what: str, array) -> str:
        import numpy as np
        from onnx import helper

        name = self.helper(layer, what)
        if not self.store_weights:
            return name
        array = np.asarray(array)
        array = array.astype(np.float32 if array.dtype.kind == "f" else np.int64, copy=False)
        # Written straight into the model's graph: one copy of the weights instead of four.
        tensor = self.graph.initializer.add()
        tensor.name = name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.raw_data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        return name

    def ints(self, layer: str, what: str, values) -> str:
        import numpy as np

        return self.const(layer, what, np.asarray(values, dtype=np.int64))

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> None:
        from onnx import helper

        unique, n = name, 0
        while unique in self.node_names:
            n += 1
            unique = f"{name}_{n}"
        self.node_names.add(unique)
        self.graph.node.append(helper.make_node(op, inputs, outputs, name=unique, **attrs))


@dataclass
class Ctx:
    """One layer being converted: its message, input tensors and shapes, output tensor names."""

    b: Builder
    layer: Any
    inputs: list[str]
    shapes: list[list[int]]
    outputs: list[str]

    @property
    def name(self) -> str:
        return self.layer.name

    def tmp(self, what: str) -> str:
        return self.b.helper(self.name, what)

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        # The node that writes a layer's own output carries the layer's name; helpers get a suffix.
        node_name = self.name if outputs and outputs[0] in self.outputs else f"{self.name}/{op}"
        self.b.node(op, inputs, outputs, node_name, **attrs)

    def const(self, what: str, array) -> str:
        return self.b.const(self.name, what, array)

    def ints(self, what: str, values) -> str:
        return self.b.ints(self.name, what, values)

    def blobs(self, specs: list[BlobSpec]) -> list[np.ndarray]:
        return self.b.blob_source(self.layer, specs)

    def fail(self, message: str) -> ConversionError:
        return ConversionError(f"layer '{self.name}' ({self.layer.type}): {message}")

    def axis(self, axis: int, rank: int | None = None) -> int:
        rank = len(self.shapes[0]) if rank is None else rank
        if not -rank <= axis < rank:
            raise self.fail(f"axis {axis} is out of range for an input of shape {self.shapes[0]}")
        return axis % rank


def _prod(values) -> int:
    return int(math.prod(values))


# ----------------------------------------------------------------------------------------- spatial
def _spatial(ctx: Ctx, param, name: str, n: int, default: int | None) -> list[int]:
    """Caffe's repeated `pad`/`kernel_size`/`stride`/`dilation`, or their `_h`/`_w` forms for 2-D."""
    prefix = name.split("_")[0]
    h_name, w_name = f"{prefix}_h", f"{prefix}_w"
    if h_name in param.DESCRIPTOR.fields_by_name and (param.HasField(h_name) or param.HasField(w_name)):
        if n != 2:
            raise ctx.fail(f"{h_name}/{w_name} are for 2-D inputs; the input has {n} spatial axes")
        return [int(getattr(param, h_name)), int(getattr(param, w_name))]
    values = [int(v) for v in getattr(param, name)]
    if not values:
        if default is None:
            raise ctx.fail(f"{name} (or {h_name} and {w_name}) is required")
        return [default] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ctx.fail(f"{name} has {len(values)} values; the input has {n} spatial axes")
    return values


def convolution(ctx: Ctx) -> list[list[int]]:
    p = ctx.layer.convolution_param
    shape = ctx.shapes[0]
    if p.axis != 1:
        raise ctx.fail(f"convolution_param.axis {p.axis} is not supported (only 1, channels first)")
    n = len(shape) - 2
    if n < 1:
        raise ctx.fail(f"input shape {shape} has no spatial axes")
    kernel = _spatial(ctx, p, "kernel_size", n, None)
    stride = _spatial(ctx, p, "stride", n, 1)
    pad = _spatial(ctx, p, "pad", n, 0)
    dilation = _spatial(ctx, p, "dilation", n, 1)
    group, out_ch, in_ch = int(p.group), int(p.num_output), shape[1]
    if not p.HasField("num_output") or out_ch <= 0:
        raise ctx.fail("num_output is required")
    if in_ch % group or out_ch % group:
        raise ctx.fail(f"group {group} does not divide input channels {in_ch} and num_output {out_ch}")
    deconv = ctx.layer.type == "Deconvolution"
    if deconv:
        wshape = [in_ch, out_ch // group, *kernel]
        fan_in = in_ch // group * _prod(kernel) / _prod(stride)
        spatial = [s * (h - 1) + d * (k - 1) + 1 - 2 * q for h, k, s, q, d in zip(shape[2:], kernel, stride, pad, dilation)]
    else:
        wshape = [out_ch, in_ch // group, *kernel]
        fan_in = in_ch // group * _prod(kernel)
        spatial = [(h + 2 * q - (d * (k - 1) + 1)) // s + 1 for h, k, s, q, d in zip(shape[2:], kernel, stride, pad, dilation)]
    if min(spatial) < 1:
        raise ctx.fail(f"output would be empty for input {shape} (kernel {kernel}, stride {stride}, pad {pad})")
    specs = [BlobSpec(wshape, "weights", fan_in)]
    if p.bias_term:
        specs.append(BlobSpec([out_ch], "bias"))
    blobs = ctx.blobs(specs)
    inputs = [ctx.inputs[0], ctx.const("weights", blobs[0])]
    if p.bias_term:
        inputs.append(ctx.const("bias", blobs[1]))
    ctx.node(
        "ConvTranspose" if deconv else "Conv", inputs, ctx.outputs,
        kernel_shape=kernel, strides=stride, pads=pad + pad, dilations=dilation, group=group,
    )
    return [[shape[0], out_ch, *spatial]]


def inner_product(ctx: Ctx) -> list[list[int]]:
    import numpy as np

    p = ctx.layer.inner_product_param
    shape = ctx.shapes[0]
    axis = ctx.axis(p.axis)
    k, n = _prod(shape[axis:]), int(p.num_output)
    if not p.HasField("num_output") or n <= 0:
        raise ctx.fail("num_output is required")
    specs = [BlobSpec([k, n] if p.transpose else [n, k], "weights", k)]
    if p.bias_term:
        specs.append(BlobSpec([n], "bias"))
    blobs = ctx.blobs(specs)
    x = ctx.inputs[0]
    if len(shape) != axis + 1:
        flat = ctx.tmp("flatten")
        ctx.node("Reshape", [x, ctx.ints("flat_shape", [0] * axis + [-1])], [flat])
        x = flat
    if axis == 1:
        inputs = [x, ctx.const("weights", blobs[0])]
        if p.bias_term:
            inputs.append(ctx.const("bias", blobs[1]))
        ctx.node("Gemm", inputs, ctx.outputs, transB=0 if p.transpose else 1)
    else:
        weights = blobs[0] if p.transpose else np.ascontiguousarray(blobs[0].T)
        if p.bias_term:
            product = ctx.tmp("matmul")
            ctx.node("MatMul", [x, ctx.const("weights", weights)], [product])
            ctx.node("Add", [product, ctx.const("bias", blobs[1])], ctx.outputs)
        else:
            ctx.node("MatMul", [x, ctx.const("weights", weights)], ctx.outputs)
    return [shape[:axis] + [n]]


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool, any_pad: bool) -> int:
    """Caffe's pooling output size: ceil (or floor) rounding, then drop a window starting in the pad."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    # Caffe clips when any pad is set: the last window must start inside the image or its left pad.
    if any_pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pooling(ctx: Ctx) -> list[list[int]]:
    p = ctx.layer.pooling_param
    shape = ctx.shapes[0]
    if len(shape) != 4:
        raise ctx.fail(f"pooling needs a 4-D (N, C, H, W) input, got shape {shape}")
    method = {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}[p.pool]
    if method == "STOCHASTIC":
        raise UnsupportedLayerError(
            f"layer '{ctx.name}' (Pooling): pool STOCHASTIC is not supported; supported: MAX, AVE"
        )
    if p.global_pooling:
        ctx.node("GlobalMaxPool" if method == "MAX" else "GlobalAveragePool", ctx.inputs[:1], ctx.outputs)
        return [shape[:2] + [1, 1]]
    if p.HasField("kernel_h") or p.HasField("kernel_w"):
        kernel = [int(p.kernel_h), int(p.kernel_w)]
    elif p.HasField("kernel_size"):
        kernel = [int(p.kernel_size)] * 2
    else:
        raise ctx.fail("kernel_size (or kernel_h and kernel_w) is required unless global_pooling")
    pad = [int(p.pad_h), int(p.pad_w)] if p.HasField("pad_h") or p.HasField("pad_w") else [int(p.pad)] * 2
    if p.HasField("stride_h") or p.HasField("stride_w"):
        stride = [int(p.stride_h), int(p.stride_w)]
    else:
        stride = [int(p.stride)] * 2
    ceil = p.round_mode == 0
    any_pad = any(pad)
    out = [pooled_size(h, k, s, q, ceil, any_pad) for h, k, s, q in zip(shape[2:], kernel, stride, pad)]
    for o, s, q, h in zip(out, stride, pad, shape[2:]):
        if (o - 1) * s - q >= h:
            # Stride above kernel can put Caffe's last window wholly past the image, where Caffe writes
            # -FLT_MAX (MAX) or 0 / NaN (AVE): no model means that, so refuse rather than guess.
            raise ctx.fail(
                f"kernel {kernel}, stride {stride}, pad {pad} on input {shape[2:]} put the last window outside "
                "the image; use round_mode: FLOOR or a stride no larger than the kernel"
            )
    # End padding that makes ONNX (floor rounding) produce exactly Caffe's windows.
    end = [max((o - 1) * s + k - h - q, 0) for o, s, k, h, q in zip(out, stride, kernel, shape[2:], pad)]
    x = ctx.inputs[0]
    attrs = {"kernel_shape": kernel, "strides": stride}
    if method == "MAX":
        ctx.node("MaxPool", [x], ctx.outputs, pads=pad + end, **attrs)
    elif all(e <= q for e, q in zip(end, pad)):
        # Every window ends inside the padded image: Caffe's divisor is the full clipped window,
        # pad included, which is exactly ONNX's count_include_pad.
        ctx.node("AveragePool", [x], ctx.outputs, pads=pad + end, count_include_pad=1 if any_pad else 0, **attrs)
    else:
        # Windows overhang past the right/bottom pad: Caffe counts the pad but not the overhang.
        # Zero-pad explicitly (counted as data), then let ONNX exclude the overhang from the divisor.
        padded = x
        if any_pad:
            padded = ctx.tmp("pad")
            ctx.node("Pad", [x, ctx.ints("pads", [0, 0, pad[0], pad[1], 0, 0, pad[0], pad[1]])], [padded])
        over = [max(e - q, 0) for e, q in zip(end, pad)]
        ctx.node("AveragePool", [padded], ctx.outputs, pads=[0, 0] + over, count_include_pad=0, **attrs)
    return [shape[:2] + out]


# -------------------------------------------------------------------------------------- activations
def relu(ctx: Ctx) -> list[list[int]]:
    slope = ctx.layer.relu_param.negative_slope
    if slope:
        ctx.node("LeakyRelu", ctx.inputs[:1], ctx.outputs, alpha=float(slope))
    else:
        ctx.node("Relu", ctx.inputs[:1], ctx.outputs)
    return [ctx.shapes[0]]


def prelu(ctx: Ctx) -> list[list[int]]:
    shape = ctx.shapes[0]
    shared = ctx.layer.prelu_param.channel_shared
    if len(shape) < 2 and not shared:
        raise ctx.fail(f"needs an input with a channel axis, got shape {shape}")
    channels = 1 if shared else shape[1]
    (slope,) = ctx.blobs([BlobSpec([channels], "slope")])
    slope = slope.reshape([channels] + [1] * (len(shape) - 2)) if not shared else slope.reshape([1])
    ctx.node("PRelu", [ctx.inputs[0], ctx.const("slope", slope)], ctx.outputs)
    return [shape]


def _unary(op: str, **attrs) -> Callable[[Ctx], list[list[int]]]:
    def convert(ctx: Ctx) -> list[list[int]]:
        ctx.node(op, ctx.inputs[:1], ctx.outputs, **attrs)
        return [ctx.shapes[0]]

    return convert


def elu(ctx: Ctx) -> list[list[int]]:
    ctx.node("Elu", ctx.inputs[:1], ctx.outputs, alpha=float(ctx.layer.elu_param.alpha))
    return [ctx.shapes[0]]


def _affine(ctx: Ctx, x: str, scale: float, shift: float, final: bool) -> str:
    """x * scale + shift with the trivial steps left out; writes the layer output when `final`."""
    import numpy as np

    steps = [("Mul", scale)] if scale != 1 else []
    if shift != 0:
        steps.append(("Add", shift))
    if not steps:
        if final:
            ctx.node("Identity", [x], ctx.outputs)
            return ctx.outputs[0]
        return x
    for i, (op, value) in enumerate(steps):
        last = final and i == len(steps) - 1
        out = ctx.outputs[0] if last else ctx.tmp(op.lower())
        ctx.node(op, [x, ctx.const(op.lower(), np.array(value, dtype=np.float32))], [out])
        x = out
    return x


def power(ctx: Ctx) -> list[list[int]]:
    import numpy as np

    p = ctx.layer.power_param
    x = ctx.inputs[0]
    if p.power == 0:
        # Caffe writes 1 everywhere, whatever the input (even 0 ** 0 and NaN-free).
        shape = ctx.tmp("shape")
        ctx.node("Shape", [x], [shape])
        ctx.node("ConstantOfShape", [shape], ctx.outputs,
                 value=_onnx_tensor(np.ones([1], dtype=np.float32)))
        return [ctx.shapes[0]]
    if p.power == 1:
        _affine(ctx, x, p.scale, p.shift, final=True)
    else:
        base = _affine(ctx, x, p.scale, p.shift, final=False)
        ctx.node("Pow", [base, ctx.const("power", np.array(p.power, dtype=np.float32))], ctx.outputs)
    return [ctx.shapes[0]]


def _onnx_tensor(array):
    from onnx import numpy_helper

    return numpy_helper.from_array(array)


def exp(ctx: Ctx) -> list[list[int]]:
    import numpy as np

    p = ctx.layer.exp_param
    if p.base != -1 and p.base <= 0:
        raise ctx.fail(f"exp_param.base {p.base} must be positive or -1 (e)")
    log_base = 1.0 if p.base == -1 else math.log(p.base)
    inner, outer = log_base * p.scale, (1.0 if p.shift == 0 else math.exp(log_base * p.shift))
    x = _affine(ctx, ctx.inputs[0], inner, 0.0, final=False)
    if outer == 1:
        ctx.node("Exp", [x], ctx.outputs)
    else:
        e = ctx.tmp("exp")
        ctx.node("Exp", [x], [e])
        ctx.node("Mul", [e, ctx.const("outer_scale", np.array(outer, dtype=np.float32))], ctx.outputs)
    return [ctx.shapes[0]]


def log(ctx: Ctx) -> list[list[int]]:
    import numpy as np

    p = ctx.layer.log_param
    if p.base != -1 and p.base <= 0:
        raise ctx.fail(f"log_param.base {p.base} must be positive or -1 (e)")
    base_scale = 1.0 if p.base == -1 else 1.0 / math.log(p.base)
    x = _affine(ctx, ctx.inputs[0], p.scale, p.shift, final=False)
    if base_scale == 1:
        ctx.node("Log", [x], ctx.outputs)
    else:
        ln = ctx.tmp("log")
        ctx.node("Log", [x], [ln])
        ctx.node("Mul", [ln, ctx.const("base_scale", np.array(base_scale, dtype=np.float32))], ctx.outputs)
    return [ctx.shapes[0]]


def bnll(ctx: Ctx) -> list[list[int]]:
    # Caffe's stable form: max(x, 0) + log(1 + exp(-|x|)); a plain Softplus overflows for large x.
    import numpy as np

    x = ctx.inputs[0]
    names = {k: ctx.tmp(k) for k in ("relu", "abs", "neg", "exp", "log1p")}
    ctx.node("Relu", [x], [names["relu"]])
    ctx.node("Abs", [x], [names["abs"]])
    ctx.node("Neg", [names["abs"]], [names["neg"]])
    ctx.node("Exp", [names["neg"]], [names["exp"]])
    one = ctx.const("one", np.array(1.0, dtype=np.float32))
    plus = ctx.tmp("plus_one")
    ctx.node("Add", [names["exp"], one], [plus])
    ctx.node("Log", [plus], [names["log1p"]])
    ctx.node("Add", [names["relu"], names["log1p"]], ctx.outputs)
    return [ctx.shapes[0]]


def dropout(ctx: Ctx) -> list[list[int]]:
    # Caffe scales at training time, so inference is the identity.
    ctx.node("Identity", ctx.inputs[:1], ctx.outputs)
    return [ctx.shapes[0]]


def lrn(ctx: Ctx) -> list[list[int]]:
    import numpy as np

    p = ctx.layer.lrn_param
    size = int(p.local_size)
    if size % 2 == 0:
        raise ctx.fail(f"local_size {size} must be odd (Caffe requires it)")
    shape = ctx.shapes[0]
    if len(shape) != 4:
        raise ctx.fail(f"LRN needs a 4-D input, got shape {shape}")
    x = ctx.inputs[0]
    if p.norm_region == 0:
        ctx.node("LRN", [x], ctx.outputs, size=size, alpha=float(p.alpha), beta=float(p.beta), bias=float(p.k))
        return [shape]
    # WITHIN_CHANNEL: Caffe builds x * (1 + alpha * avgpool(x^2))^-beta; its pooling keeps the pad in
    # every divisor and uses shift 1 (k is ignored).
    half = (size - 1) // 2
    square, pooled, scaled, shifted, factor = (ctx.tmp(w) for w in ("square", "pool", "scale", "shift", "power"))
    ctx.node("Mul", [x, x], [square])
    ctx.node("AveragePool", [square], [pooled], kernel_shape=[size, size], strides=[1, 1],
             pads=[half] * 4, count_include_pad=1)
    ctx.node("Mul", [pooled, ctx.const("alpha", np.array(p.alpha, dtype=np.float32))], [scaled])
    ctx.node("Add", [scaled, ctx.const("one", np.array(1.0, dtype=np.float32))], [shifted])
    ctx.node("Pow", [shifted, ctx.const("beta", np.array(-p.beta, dtype=np.float32))], [factor])
    ctx.node("Mul", [x, factor], ctx.outputs)
    return [shape]


def softmax(ctx: Ctx) -> list[list[int]]:
    axis = ctx.axis(ctx.layer.softmax_param.axis)
    ctx.node("Softmax", ctx.inputs[:1], ctx.outputs, axis=axis)
    return [ctx.shapes[0]]


# --------------------------------------------------------------------------------------- structure
def concat(ctx: Ctx) -> list[list[int]]:
    p = ctx.layer.concat_param
    axis = ctx.axis(int(p.concat_dim) if p.HasField("concat_dim") else p.axis)
    shape = list(ctx.shapes[0])
    for other in ctx.shapes[1:]:
        if len(other) != len(shape) or any(a != b for i, (a, b) in enumerate(zip(shape, other)) if i != axis):
            raise ctx.fail(f"inputs of shapes {ctx.shapes} do not agree outside axis {axis}")
    shape[axis] = sum(s[axis] for s in ctx.shapes)
    if len(ctx.inputs) == 1:
        ctx.node("Identity", ctx.inputs, ctx.outputs)
    else:
        ctx.node("Concat", ctx.inputs, ctx.outputs, axis=axis)
    return [shape]


def eltwise(ctx: Ctx) -> list[list[int]]:
    import numpy as np

    p = ctx.layer.eltwise_param
    op = {0: "PROD", 1: "SUM", 2: "MAX"}[p.operation]
    for other in ctx.shapes[1:]:
        if other != ctx.shapes[0]:
            raise ctx.fail(f"inputs must have equal shapes, got {ctx.shapes}")
    coeffs = list(p.coeff)
    if coeffs and op != "SUM":
        raise ctx.fail("coeff is only allowed with operation SUM")
    if coeffs and len(coeffs) != len(ctx.inputs):
        raise ctx.fail(f"{len(coeffs)} coeff values for {len(ctx.inputs)} inputs")
    inputs = list(ctx.inputs)
    if op == "SUM" and coeffs:
        for i, c in enumerate(coeffs):
            if c != 1:
                scaled = ctx.tmp(f"coeff{i}")
                ctx.node("Mul", [inputs[i], ctx.const(f"coeff{i}", np.array(c, dtype=np.float32))], [scaled])
                inputs[i] = scaled
    onnx_op = {"SUM": "Sum", "PROD": "Mul", "MAX": "Max"}[op]
    if len(inputs) == 1:
        ctx.node("Identity", inputs, ctx.outputs)
    elif onnx_op == "Mul":
        acc = inputs[0]
        for i, other in enumerate(inputs[1:], 1):
            out = ctx.outputs[0] if i == len(inputs) - 1 else ctx.tmp(f"prod{i}")
            ctx.node("Mul", [acc, other], [out])
            acc = out
    elif len(inputs) == 2 and onnx_op == "Sum":
        ctx.node("Add", inputs, ctx.outputs)
    else:
        ctx.node(onnx_op, inputs, ctx.outputs)
    return [ctx.shapes[0]]


def batch_norm(ctx: Ctx) -> list[list[int]]:
    import numpy as np

    shape = ctx.shapes[0]
    channels = shape[1] if len(shape) > 1 else 1
    mean, var, factor = ctx.blobs(
        [BlobSpec([channels], "mean"), BlobSpec([channels], "variance"), BlobSpec([1], "scale_factor")]
    )
    # Caffe stores running sums: the statistics are blob / scale_factor (0 when the factor is 0).
    sf = float(factor.reshape(-1)[0])
    inv = 0.0 if sf == 0 else 1.0 / sf
    mean, var = (mean * inv).astype(np.float32), (var * inv).astype(np.float32)
    eps = float(ctx.layer.batch_norm_param.eps)
    ones, zeros = np.ones(channels, np.float32), np.zeros(channels, np.float32)
    ctx.node(
        "BatchNormalization",
        [ctx.inputs[0], ctx.const("gamma", ones), ctx.const("beta", zeros), ctx.const("mean", mean),
         ctx.const("variance", var)],
        ctx.outputs, epsilon=eps,
    )
    return [shape]


def _param_axes(ctx: Ctx, axis: int, num_axes: int) -> tuple[int, list[int]]:
    shape = ctx.shapes[0]
    axis = ctx.axis(axis)
    if num_axes < -1:
        raise ctx.fail(f"num_axes {num_axes} must be -1 or more")
    end = len(shape) if num_axes == -1 else axis + num_axes
    if end > len(shape):
        raise ctx.fail(f"axis {axis} + num_axes {num_axes} exceed the input's {len(shape)} axes")
    return axis, shape[axis:end]


def _broadcast(ctx: Ctx, what: str, array, axis: int) -> str:
    """A parameter shaped like input dims [axis, axis+k) as a tensor that broadcasts against the input."""
    rank = len(ctx.shapes[0])
    trailing = rank - axis - array.ndim
    return ctx.const(what, array.reshape(list(array.shape) + [1] * trailing))


def _second_bottom(ctx: Ctx, axis: int) -> str:
    """The second bottom of Scale/Bias, reshaped to broadcast from `axis`."""
    other = ctx.shapes[1]
    shape = ctx.shapes[0]
    if shape[axis : axis + len(other)] != other:
        raise ctx.fail(f"second input shape {other} does not match input {shape} from axis {axis}")
    trailing = len(shape) - axis - len(other)
    if trailing == 0:
        return ctx.inputs[1]
    out = ctx.tmp("broadcast")
    ctx.node("Reshape", [ctx.inputs[1], ctx.ints("broadcast_shape", [0] * len(other) + [1] * trailing)], [out])
    return out


def scale(ctx: Ctx) -> list[list[int]]:
    p = ctx.layer.scale_param
    if len(ctx.inputs) == 2:
        axis = ctx.axis(p.axis)
        factor = _second_bottom(ctx, axis)
        bias = None
        if p.bias_term:
            (bias_blob,) = ctx.blobs([BlobSpec(ctx.shapes[1], "bias")])
            bias = _broadcast(ctx, "bias", bias_blob, axis)
    else:
        axis, pshape = _param_axes(ctx, p.axis, p.num_axes)
        specs = [BlobSpec(pshape, "scale")] + ([BlobSpec(pshape, "bias")] if p.bias_term else [])
        blobs = ctx.blobs(specs)
        factor = _broadcast(ctx, "scale", blobs[0], axis)
        bias = _broadcast(ctx, "bias", blobs[1], axis) if p.bias_term else None
    if bias is None:
        ctx.node("Mul", [ctx.inputs[0], factor], ctx.outputs)
    else:
        product = ctx.tmp("mul")
        ctx.node("Mul", [ctx.inputs[0], factor], [product])
        ctx.node("Add", [product, bias], ctx.outputs)
    return [ctx.shapes[0]]


def bias(ctx: Ctx) -> list[list[int]]:
    p = ctx.layer.bias_param
    if len(ctx.inputs) == 2:
        term = _second_bottom(ctx, ctx.axis(p.axis))
    else:
        axis, pshape = _param_axes(ctx, p.axis, p.num_axes)
        (blob,) = ctx.blobs([BlobSpec(pshape, "bias")])
        term = _broadcast(ctx, "bias", blob, axis)
    ctx.node("Add", [ctx.inputs[0], term], ctx.outputs)
    return [ctx.shapes[0]]


def flatten(ctx: Ctx) -> list[list[int]]:
    p = ctx.layer.flatten_param
    shape = ctx.shapes[0]
    start, end = ctx.axis(p.axis), ctx.axis(p.end_axis)
    if end < start:
        raise ctx.fail(f"end_axis {p.end_axis} comes before axis {p.axis}")
    out = shape[:start] + [_prod(shape[start : end + 1])] + shape[end + 1 :]
    target = [0] * start + [-1] + shape[end + 1 :]
    ctx.node("Reshape", [ctx.inputs[0], ctx.ints("shape", target)], ctx.outputs)
    return [out]


def reshape(ctx: Ctx) -> list[list[int]]:
    p = ctx.layer.reshape_param
    shape = ctx.shapes[0]
    rank = len(shape)
    start = p.axis if p.axis >= 0 else rank + p.axis + 1  # Caffe counts negative axes from the end + 1
    if not 0 <= start <= rank:
        raise ctx.fail(f"reshape_param.axis {p.axis} is out of range for input shape {shape}")
    end = rank if p.num_axes == -1 else start + p.num_axes
    if p.num_axes < -1 or end > rank:
        raise ctx.fail(f"reshape_param.num_axes {p.num_axes} is out of range for input shape {shape}")
    dims = [int(d) for d in p.shape.dim]
    if dims.count(-1) > 1:
        raise ctx.fail(f"shape {dims} has more than one -1")
    new = []
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= rank:
                raise ctx.fail(f"shape dim {i} is 0 (copy) but the input has no axis {start + i}")
            new.append(shape[start + i])
        else:
            new.append(d)
    out = shape[:start] + new + shape[end:]
    if -1 in out:
        known = _prod(d for d in out if d != -1)
        if known == 0 or _prod(shape) % known:
            raise ctx.fail(f"cannot reshape {shape} into {dims}")
        out[out.index(-1)] = _prod(shape) // known
    if _prod(out) != _prod(shape):
        raise ctx.fail(f"cannot reshape {shape} ({_prod(shape)} values) into {out}")
    # The ONNX target copies the leading axes (0), keeps Caffe's 0/-1 in place, and spells out the rest;
    # the batch axis stays dynamic unless the prototxt sets it explicitly.
    target = [0] * start + dims + shape[end:]
    ctx.node("Reshape", [ctx.inputs[0], ctx.ints("shape", target)], ctx.outputs)
    return [out]


def split(ctx: Ctx) -> list[list[int]]:
    for out in ctx.outputs:
        ctx.b.node("Identity", ctx.inputs[:1], [out], f"{ctx.name}/{out}" if len(ctx.outputs) > 1 else ctx.name)
    return [ctx.shapes[0]] * len(ctx.outputs)


def slice_(ctx: Ctx) -> list[list[int]]:
    p = ctx.layer.slice_param
    shape = ctx.shapes[0]
    axis = ctx.axis(int(p.slice_dim) if p.HasField("slice_dim") else p.axis)
    count = len(ctx.outputs)
    points = [int(v) for v in p.slice_point]
    if points:
        if len(points) != count - 1 or points != sorted(points) or points[-1] >= shape[axis] or points[0] <= 0:
            raise ctx.fail(f"slice_point {points} does not cut axis {axis} of size {shape[axis]} into {count} parts")
        bounds = [0] + points + [shape[axis]]
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    else:
        if shape[axis] % count:
            raise ctx.fail(f"axis {axis} of size {shape[axis]} does not split evenly into {count} tops")
        sizes = [shape[axis] // count] * count
    if count == 1:
        ctx.node("Identity", ctx.inputs[:1], ctx.outputs)
    else:
        ctx.b.node("Split", [ctx.inputs[0], ctx.ints("split", sizes)], ctx.outputs, ctx.name, axis=axis)
    return [shape[:axis] + [s] + shape[axis + 1 :] for s in sizes]


def crop(ctx: Ctx) -> list[list[int]]:
    p = ctx.layer.crop_param
    if len(ctx.inputs) != 2:
        raise ctx.fail("Crop needs two bottoms: the blob to crop and the blob whose shape to crop to")
    shape, ref = ctx.shapes
    axis = ctx.axis(p.axis)
    offsets = [int(v) for v in p.offset]
    n = len(shape) - axis
    if not offsets:
        offsets = [0] * n
    elif len(offsets) == 1:
        offsets = offsets * n
    elif len(offsets) != n:
        raise ctx.fail(f"{len(offsets)} offsets for {n} cropped axes")
    starts, ends, axes = [], [], []
    for i, off in zip(range(axis, len(shape)), offsets):
        if off + ref[i] > shape[i]:
            raise ctx.fail(f"crop of axis {i} (offset {off}, size {ref[i]}) exceeds the input size {shape[i]}")
        if i == 0 and off == 0:
            continue  # leave the batch axis dynamic
        starts.append(off)
        ends.append(off + ref[i])
        axes.append(i)
    ctx.node("Slice", [ctx.inputs[0], ctx.ints("starts", starts), ctx.ints("ends", ends), ctx.ints("axes", axes)],
             ctx.outputs)
    return [shape[:axis] + ref[axis:]]


def permute(ctx: Ctx) -> list[list[int]]:
    shape = ctx.shapes[0]
    order = [int(v) for v in ctx.layer.permute_param.order]
    if len(set(order)) != len(order) or any(o >= len(shape) for o in order):
        raise ctx.fail(f"permute order {order} is not a permutation of the input's {len(shape)} axes")
    order += [a for a in range(len(shape)) if a not in order]
    ctx.node("Transpose", ctx.inputs[:1], ctx.outputs, perm=order)
    return [[shape[a] for a in order]]


def _top_k(ctx: Ctx, x: str, k: int, axis: int, size: int) -> tuple[str, str]:
    """Values and float indices of the k largest along `axis`, ties going to the LARGER index as in
    Caffe (it sorts (value, index) pairs descending); ONNX TopK would pick the smaller one."""
    import numpy as np

    flipped, values, indices = ctx.tmp("reversed"), ctx.tmp("values"), ctx.tmp("reversed_indices")
    ctx.node("Slice", [x, ctx.ints("starts", [-1]), ctx.ints("ends", [np.iinfo(np.int64).min]),
                       ctx.ints("axes", [axis]), ctx.ints("steps", [-1])], [flipped])
    ctx.node("TopK", [flipped, ctx.ints("k", [k])], [values, indices], axis=axis)
    as_float, original = ctx.tmp("indices_float"), ctx.tmp("indices")
    ctx.node("Cast", [indices], [as_float], to=1)
    ctx.node("Sub", [ctx.const("last_index", np.array(size - 1, dtype=np.float32)), as_float], [original])
    return values, original


def argmax(ctx: Ctx) -> list[list[int]]:
    p = ctx.layer.argmax_param
    shape = ctx.shapes[0]
    k = int(p.top_k)
    x = ctx.inputs[0]
    if p.HasField("axis"):
        axis = ctx.axis(p.axis)
        if k > shape[axis]:
            raise ctx.fail(f"top_k {k} exceeds axis {axis} size {shape[axis]}")
        values, indices = _top_k(ctx, x, k, axis, shape[axis])
        out = list(shape)
        out[axis] = k
        # With an axis, Caffe outputs either the values or the indices, never both.
        ctx.node("Identity", [values if p.out_max_val else indices], ctx.outputs)
        return [out]
    if len(shape) < 3:
        raise ctx.fail(f"without argmax_param.axis Caffe needs an input of 3+ axes, got {shape}")
    count = _prod(shape[1:])
    if k > count:
        raise ctx.fail(f"top_k {k} exceeds the {count} values per item")
    flat = ctx.tmp("flatten")
    ctx.node("Flatten", [x], [flat], axis=1)
    values, indices = _top_k(ctx, flat, k, 1, count)
    out = [shape[0], 2 if p.out_max_val else 1, k] + [1] * (len(shape) - 3)
    target = [0, out[1], k] + [1] * (len(shape) - 3)
    if p.out_max_val:
        both = ctx.tmp("concat")
        ctx.node("Concat", [indices, values], [both], axis=1)
        indices = both
    ctx.node("Reshape", [indices, ctx.ints("shape", target)], ctx.outputs)
    return [out]


HANDLERS: dict[str, Callable[[Ctx], list[list[int]]]] = {
    "Convolution": convolution,
    "Deconvolution": convolution,
    "InnerProduct": inner_product,
    "Pooling": pooling,
    "ReLU": relu,
    "PReLU": prelu,
    "ELU": elu,
    "Sigmoid": _unary("Sigmoid"),
    "TanH": _unary("Tanh"),
    "AbsVal": _unary("Abs"),
    "Power": power,
    "Exp": exp,
    "Log": log,
    "BNLL": bnll,
    "LRN": lrn,
    "Dropout": dropout,
    "Softmax": softmax,
    "Concat": concat,
    "Eltwise": eltwise,
    "BatchNorm": batch_norm,
    "Scale": scale,
    "Bias": bias,
    "Flatten": flatten,
    "Reshape": reshape,
    "Split": split,
    "Slice": slice_,
    "Crop": crop,
    "Permute": permute,
    "ArgMax": argmax,
}
SUPPORTED_LAYERS: tuple[str, ...] = ("Input", *HANDLERS)
_MIN_BOTTOMS = {"Crop": 2, "Eltwise": 1, "Concat": 1}


def check_supported(net: Net) -> None:
    """Raise UnsupportedLayerError for the first layer zoo cannot convert."""
    for layer in net.layers:
        if layer.type not in HANDLERS:
            raise UnsupportedLayerError(
                f"layer '{layer.name}' has type '{layer.type}', which zoo cannot convert; "
                f"supported types: {', '.join(SUPPORTED_LAYERS)}"
            )


def build_graph(
    net: Net, opset: int, blob_source: BlobSource, graph_name: str | None = None, store_weights: bool = True
) -> tuple[onnx.ModelProto, dict[str, tuple[str, int]]]:
    """Walk the net in prototxt order; return the ONNX model (inputs with a dynamic batch axis) and,
    for each layer output tensor, the Caffe (layer name, top index) that produced it."""
    from onnx import ModelProto, TensorProto, helper

    b = Builder(opset, blob_source, ModelProto(), store_weights)
    b.reserved.update(net.inputs)
    for layer in net.layers:
        b.reserved.add(layer.name)
        b.reserved.update(layer.top)
    tensor_of: dict[str, str] = {}  # blob -> its current tensor
    order: list[str] = []  # tensors in creation order
    producers: dict[str, tuple[str, int]] = {}
    consumed: set[str] = set()
    graph_inputs = []
    for blob, shape in net.inputs.items():
        if not shape:
            raise ConversionError(f"input '{blob}' has no dimensions; give its shape in the prototxt")
        name = b.output_name(blob)
        tensor_of[blob] = name
        b.shapes[name] = list(shape)
        graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH, *shape[1:]]))
    check_supported(net)
    for layer in net.layers:
        handler = HANDLERS[layer.type]
        missing = [blob for blob in layer.bottom if blob not in tensor_of]
        if missing:
            raise ConversionError(
                f"layer '{layer.name}' ({layer.type}) reads blob '{missing[0]}', which no earlier layer or "
                f"input produces; known blobs: {', '.join(tensor_of)}"
            )
        if not layer.top:
            raise ConversionError(f"layer '{layer.name}' ({layer.type}) has no top blob")
        if len(layer.bottom) < _MIN_BOTTOMS.get(layer.type, 1):
            raise ConversionError(f"layer '{layer.name}' ({layer.type}) needs {_MIN_BOTTOMS.get(layer.type, 1)} bottoms")
        inputs = [tensor_of[blob] for blob in layer.bottom]
        if len(layer.top) == 1:
            outputs = [b.output_name(layer.name)]
        else:
            outputs = [b.output_name(top) for top in layer.top]
        ctx = Ctx(b, layer, inputs, [b.shapes[t] for t in inputs], outputs)
        shapes = handler(ctx)
        consumed.update(inputs)
        for top, tensor, shape in zip(layer.top, outputs, shapes):
            tensor_of[top] = tensor
            b.shapes[tensor] = shape
            order.append(tensor)
        for i, tensor in enumerate(outputs):
            producers[tensor] = (layer.name, i)
    batch = next(iter(net.inputs.values()))[0]
    finals = set(tensor_of.values())
    outputs = [t for t in order if t in finals and t not in consumed]
    graph = b.graph
    graph.name = graph_name or net.name or "caffe_net"
    graph.input.extend(graph_inputs)
    graph.output.extend(
        helper.make_tensor_value_info(t, TensorProto.FLOAT, _dynamic(b.shapes[t], batch)) for t in outputs
    )
    model = b.model
    model.opset_import.append(helper.make_opsetid("", opset))
    model.producer_name = "zoo.converters.caffe"
    helper.set_model_props(model, {"input_layout": "NCHW"})
    # The oldest IR that carries this opset, so older onnxruntime releases still load the model.
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    return model, producers


def _dynamic(shape: list[int], batch: int) -> list[int | str]:
    # Axis 0 follows the input's batch unless a layer (Reshape, Concat on axis 0...) changed it.
    return [BATCH, *shape[1:]] if shape and shape[0] == batch else list(shape)

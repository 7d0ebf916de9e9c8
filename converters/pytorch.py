"""PyTorch to ONNX: TorchScript archives and in-memory nn.Modules, via torch.onnx.export.

A `.pt` file is only ever read with ``torch.jit.load`` (TorchScript) or, to explain a refusal,
``torch.load(weights_only=True)``: unpickling arbitrary objects from a downloaded file can run
any code, so a pickled full model is refused with the way to re-export it.

The exporter is torch's TorchScript-based one (``dynamo=False``): the dynamo exporter needs
onnxscript, which zoo does not depend on, and cannot trace a ScriptModule anyway.
"""
from __future__ import annotations

import io
import os
import time
import warnings
import zipfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from converters import onnx_model as ox
from converters.report import Conversion, ConversionReport
from zoo.errors import ConversionError, ModelFormatError, UnsupportedLayerError, require

if TYPE_CHECKING:
    import onnx
    import torch

DEFAULT_INPUT_SHAPE = (None, 3, 224, 224)  # used when neither the caller nor the module's weights tell


def check_file(path: str | os.PathLike, *, trust_model_code: bool = False, **_options: Any) -> None:
    """The checks that need no torch: a PyTorch zip archive whose serialized code uses no refused op.

    `zoo.convert` runs them in its own process before it starts the sandboxed converter.
    """
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise ModelFormatError(
            f"{path} is not a TorchScript archive (not a zip file); export the model with "
            f"torch.jit.script(model).save(path) or torch.onnx.export"
        )
    with zipfile.ZipFile(path) as archive:
        if not any(n.endswith(("data.pkl", "constants.pkl")) for n in archive.namelist()):
            raise ModelFormatError(
                f"{path} is a zip archive but not a PyTorch file (no data.pkl or constants.pkl in it)"
            )
    if not trust_model_code:
        from converters.model_code import check_torchscript_archive

        check_torchscript_archive(path)


def load_torchscript(path: str | os.PathLike, check_code: bool = False):
    """Load a TorchScript archive, or raise ModelFormatError saying what the file is instead.

    `check_code` refuses (UnsafeModelError) an archive whose code uses file, process or network
    ops or custom ops, before loading it and again on the loaded graphs (``converters.model_code``).
    """
    torch = require("torch", "torch")
    path = os.fspath(path)
    check_file(path, trust_model_code=not check_code)
    try:
        module = torch.jit.load(path, map_location="cpu").eval()
    except RuntimeError:
        module = None
    if module is not None:
        if check_code:
            from converters.model_code import check_torchscript_module

            check_torchscript_module(module, os.path.basename(path))
        return module
    raise ModelFormatError(f"{path} is not TorchScript: {_what_it_is(path)}")


def _what_it_is(path: str) -> str:
    """Explain a non-TorchScript .pt without unpickling anything but tensors."""
    import pickle

    torch = require("torch", "torch")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError):
        return (
            "it is a pickled Python object (for example torch.save(model)), and zoo never unpickles "
            "arbitrary objects from a file because unpickling can run any code; re-export it with "
            "torch.jit.script(model).save(path)"
        )
    if isinstance(data, dict):
        keys = [k for k in data if isinstance(k, str)][:3]
        return (
            f"it is a state_dict ({len(data)} entries such as {', '.join(keys)}): weights without "
            f"the architecture, which is Python code; build the model in Python, load_state_dict() "
            f"and call converters.pytorch.convert_module(model, input_shape=...)"
        )
    return (f"it holds a {type(data).__name__}, not a model; export the model with "
            f"torch.jit.script(model).save(path)")


def guess_input_shape(module) -> list[int | None]:
    """An input shape from the first weight: a conv's input channels, a linear layer's features."""
    for param in module.parameters():
        if param.dim() == 4:
            return [None, int(param.shape[1]), DEFAULT_INPUT_SHAPE[2], DEFAULT_INPUT_SHAPE[3]]
        if param.dim() == 2:
            return [None, int(param.shape[1])]
        break
    return list(DEFAULT_INPUT_SHAPE)


def convert_torchscript(
    path: str | os.PathLike,
    *,
    input_shape: Sequence[int | None] | None = None,
    inputs: Sequence[dict[str, Any]] | None = None,
    args: dict[str, Any] | None = None,
    opset: int = ox.DEFAULT_OPSET,
    verify: bool = True,
    trust_model_code: bool = False,
) -> Conversion:
    """Convert a TorchScript `.pt` archive; `input_shape` (None for dynamic dims) defaults to a guess.

    `inputs` (``[{"name", "shape", "dtype"}]``, see `zoo.input_specs`) names and shapes the tensors
    ``forward`` takes; `args` gives its other arguments (``{"sr": 16000}``), baked into the graph.
    Its code is checked before it is loaded and before it runs (``converters.model_code``) unless
    `trust_model_code`.
    """
    start = time.perf_counter()
    module = load_torchscript(path, check_code=not trust_model_code)
    conversion = convert_module(module, input_shape=input_shape, inputs=inputs, args=args, opset=opset,
                                verify=verify, source_files=[os.fspath(path)], source_format="torchscript",
                                label=os.path.basename(os.fspath(path)))
    conversion.report.seconds = time.perf_counter() - start
    return conversion


def convert_module(
    module: torch.nn.Module,
    *,
    input_shape: Sequence[int | None] | None = None,
    inputs: Sequence[dict[str, Any]] | None = None,
    args: dict[str, Any] | None = None,
    opset: int = ox.DEFAULT_OPSET,
    verify: bool = True,
    source_files: Sequence[str] = (),
    source_format: str = "pytorch",
    label: str = "the module",
) -> Conversion:
    """Convert an nn.Module (or ScriptModule) to ONNX and compare it with torch on the same inputs.

    Without `inputs` the module takes one float tensor with a dynamic batch axis (shape from
    `input_shape` or a guess from its first weight). With `inputs`, each ``forward`` tensor is
    fed as given (``None`` sizes become dynamic axes) and `args` are passed as constants.

    >>> conversion = convert_module(torchvision.models.resnet18(), input_shape=[None, 3, 224, 224])  # doctest: +SKIP
    >>> conversion = convert_module(vad, inputs=[{"name": "x", "shape": [1, 512]}], args={"sr": 8000})  # doctest: +SKIP
    """
    torch = require("torch", "torch")
    module = module.eval()
    params = forward_parameters(module)
    if inputs or args or _needs_specs(params):
        specs, calls = _plan_call(params, list(inputs or []), dict(args or {}), label)
        return _convert_with_specs(module, specs, calls, set(args or {}), opset, verify, source_files,
                                   source_format, torch)
    return _convert_single(module, input_shape, opset, verify, source_files, source_format, torch)


def _convert_single(module, input_shape, opset, verify, source_files, source_format, torch) -> Conversion:
    """The common case: one float tensor, batch made dynamic (see make_batch_dynamic)."""
    start = time.perf_counter()
    shape = list(input_shape) if input_shape else guess_input_shape(module)
    layout = "NCHW" if len(shape) == 4 else ox.layout_of(shape, None)
    feeds = ox.sample_inputs([("input", [None, *shape[1:]], "float32")], layout="NCHW")
    example = torch.from_numpy(feeds["input"])
    specialized = _specialized(module, [example], [[0]], {}, torch)
    with torch.no_grad():
        try:
            reference = (_fresh(module) if specialized else module)(example)
        except Exception as exc:  # noqa: BLE001  a third-party failure, re-raised as a zoo error
            raise ConversionError(
                f"the module fails on an input of shape {list(example.shape)} ({str(exc)[:200]}); "
                f"give its input shape with input_shape=[None, C, H, W] (zoo convert: "
                f"--input NAME=Nx3x224x224[:dtype])"
            ) from None
    outputs = _flat_outputs(reference)
    output_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    axes = {name: {0: ox.BATCH} for name in ["input", *output_names]}
    first = [p.name for p in forward_parameters(module)][:1] or ["input"]
    model = export(_bind_forward(module, first, {}, torch, function=specialized.function) if specialized
                   else module, (example,), input_names=["input"],
                   output_names=output_names, dynamic_axes=axes, opset=opset,
                   remaining=specialized.remaining if specialized else None)
    report = _report(source_format, source_files, opset, layout, torch)
    report.notes += specialized.notes if specialized else []
    report.notes += ox.make_batch_dynamic(model)
    return _checked(model, report, feeds, outputs, verify, start, torch)


def _specialized(module, examples: list, dynamic: list[list[int]], values: dict[str, Any], torch):
    """The module specialized on these inputs and argument values (converters.torchscript_ir), or None
    when it has no control flow or attribute writes to fold, or cannot be specialized."""
    from converters.torchscript_ir import needs_specializing, specialize
    from zoo.logs import step, write

    if not needs_specializing(module):
        return None
    try:
        with step("specializing the TorchScript graph on the given inputs"):
            return specialize(module, examples, dynamic, values)
    except Exception as exc:  # noqa: BLE001  the plain export is still tried, and says what fails
        write("specializing the TorchScript graph", f"{type(exc).__name__}: {exc}")
        return None


def _fresh(module):
    """A copy of a module that keeps state between calls, so the reference is one call from its state now."""
    import copy

    return copy.deepcopy(module)


def _convert_with_specs(module, specs, calls, given_args, opset, verify, source_files, source_format,
                        torch) -> Conversion:
    """Feed each forward tensor as specified; constants for the other arguments."""
    start = time.perf_counter()
    names = [s["name"] for s in specs]
    first = specs[0]["shape"] if specs else []
    layout = ox.layout_of(first, "NCHW") if len(specs) == 1 else None
    feeds = ox.sample_inputs([(s["name"], s["shape"], s["dtype"]) for s in specs], layout="NCHW")
    examples = tuple(torch.from_numpy(feeds[n]) for n in names)
    values = {k: v for k, v in calls.items() if k not in names}
    specialized = _specialized(module, list(examples), [[i for i, d in enumerate(s["shape"]) if d is None]
                                                        for s in specs], values, torch)
    bound = _bind_forward(_fresh(module) if specialized else module, names, calls, torch)
    with torch.no_grad():
        try:
            reference = bound(*examples)
        except Exception as exc:  # noqa: BLE001  a third-party failure, re-raised as a zoo error
            given = ", ".join(f"{n}: {list(e.shape)} {e.dtype}" for n, e in zip(names, examples))
            raise ConversionError(
                f"the module's forward fails on inputs {given or 'none'} ({_first_line(exc)[:200]}); "
                f"check the shapes and dtypes given with --input NAME=SHAPE[:dtype] and the values "
                f"given with --arg NAME=VALUE"
            ) from None
    outputs = _flat_outputs(reference)
    output_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    axes = {s["name"]: {i: (ox.BATCH if i == 0 else f"{s['name']}_{i}")
                        for i, d in enumerate(s["shape"]) if d is None} for s in specs}
    if any(s["shape"] and s["shape"][0] is None for s in specs):
        axes.update({n: {0: ox.BATCH} for n, o in zip(output_names, outputs) if o.dim() > 0})
    dynamic_axes = {k: v for k, v in axes.items() if v}

    def traced_export(bound, remaining=None):
        with warnings.catch_warnings():  # tracer notices about Python values; the trace is verified below
            warnings.simplefilter("ignore")
            try:
                traced = torch.jit.trace(bound, examples, check_trace=False)
            except Exception as exc:  # noqa: BLE001  a third-party failure, re-raised as a zoo error
                raise ConversionError(f"torch.jit.trace cannot trace the module's forward: "
                                      f"{_first_line(exc)[:300]}") from None
        return export(traced, examples, input_names=names, output_names=output_names,
                      dynamic_axes=dynamic_axes, opset=opset, remaining=remaining)

    notes = []
    if specialized:
        try:
            model = traced_export(_bind_forward(module, names, calls, torch, function=specialized.function),
                                  specialized.remaining)
            notes = specialized.notes
        except ConversionError as failed:
            # What is left (a loop in F.interpolate) may still be the exporter's to handle as written.
            try:
                model = traced_export(_bind_forward(_fresh(module), names, calls, torch))
            except ConversionError:
                raise failed from None
            notes = ["exported as scripted (the specialized graph does not export: "
                     f"{str(failed).split('; the full error')[0][:200]})"]
    else:
        model = traced_export(bound)
    report = _report(source_format, source_files, opset, layout, torch)
    report.notes += notes
    constants = {k: v for k, v in calls.items() if k in given_args}
    if constants:
        report.notes.append("forward arguments baked in as constants: "
                            + ", ".join(f"{k}={v!r}" for k, v in constants.items()))
    return _checked(model, report, feeds, outputs, verify, start, torch)


def _checked(model, report, feeds, outputs, verify, start, torch) -> Conversion:
    """The exported model through the ONNX checker, verified against torch's outputs on `feeds`."""
    model = ox.check(model)
    report.opset = ox.opset_of(model)
    if verify:
        ox.verify(report, model, feeds, [o.detach().numpy() for o in outputs], f"torch {torch.__version__}")
    report.seconds = time.perf_counter() - start
    return Conversion(model, report)


def _report(source_format, source_files, opset, layout, torch) -> ConversionReport:
    import onnx

    return ConversionReport(
        source_format=source_format,
        source_files={os.fspath(f): ox.file_sha256(f) for f in source_files},
        converter=f"torch.onnx.export {torch.__version__} (TorchScript-based)",
        versions={"torch": torch.__version__, "onnx": onnx.__version__},
        opset=opset,
        input_layout=layout,
    )


def export(module, examples: tuple, *, input_names: Sequence[str], output_names: Sequence[str],
           dynamic_axes: dict[str, dict[int, str]], opset: int = ox.DEFAULT_OPSET,
           remaining: Sequence[str] | None = None) -> onnx.ModelProto:
    """The one torch.onnx.export call: `module` traced on `examples` as an ONNX model (not yet checked).

    `remaining` lists the control flow a specialization left (converters.torchscript_ir), named
    in the error when the export fails.
    """
    import onnx
    import torch

    from zoo.logs import captured

    buffer = io.BytesIO()
    # The exporter prints the Torch IR of a graph it fails on: to the log file, with the error.
    with warnings.catch_warnings(), captured(f"torch.onnx.export at opset {opset}"):
        warnings.simplefilter("ignore")  # the legacy-exporter notice; it is the right exporter here
        try:
            torch.onnx.export(module, examples, buffer, dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dynamic_axes)
        except Exception as exc:  # noqa: BLE001 torch.onnx.errors.UnsupportedOperatorError and friends
            failure = _export_failure(exc, opset, remaining)
        else:
            failure = None
    if failure:
        raise UnsupportedLayerError(failure)
    return onnx.load_from_string(buffer.getvalue())


def _export_failure(exc: BaseException, opset: int, remaining: Sequence[str] | None) -> str:
    """One line for a failed export; the whole error (with its Torch IR) goes to the log file it names."""
    import re

    from zoo.logs import write

    text = str(exc)
    log = write(f"torch.onnx.export at opset {opset}", f"{type(exc).__name__}: {text}")
    line = f"torch.onnx.export cannot convert this module at opset {opset}: {_first_line(exc)[:300]}"
    if remaining:
        more = f" (and {len(remaining) - 1} more)" if len(remaining) > 1 else ""
        line += (f"; control flow on tensor values is left after specializing on the given --input/--arg: "
                 f"{remaining[0][:200]}{more}")
    newer = re.search(r"(?:added in|supported (?:from|since)) (?:opset )?(?:version )?(\d+)", text)
    if newer and int(newer.group(1)) > opset:  # only an op that a newer opset has is helped by one
        line += f"; retry with --opset {newer.group(1)}"
    return line + (f"; the full error and Torch IR are in {log}" if log else "")


def _first_line(exc: BaseException) -> str:
    """The line of an error that says what went wrong (TorchScript puts it last, after a traceback)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    return lines[-1] if lines[0].startswith("The following operation failed") else lines[0]


def _flat_outputs(reference) -> list:
    outputs = list(reference) if isinstance(reference, (list, tuple)) else [reference]
    if not all(hasattr(o, "detach") for o in outputs):
        kinds = ", ".join(type(o).__name__ for o in outputs)
        raise ConversionError(f"the module returns {kinds}; zoo converts modules that return a tensor "
                              f"or a tuple of tensors")
    return outputs


# ---------------------------------------------------------------------------------------------
# forward's signature, and what to pass to it


class _Param:
    """One argument of forward(): its name, whether it takes a tensor, and its default if any."""

    def __init__(self, name: str, type_name: str, required: bool, default: Any = None, keyword: bool = False):
        self.name, self.type_name, self.required, self.default, self.keyword = (
            name, type_name, required, default, keyword)

    @property
    def is_tensor(self) -> bool:
        return "Tensor" in self.type_name

    def __repr__(self) -> str:
        return f"{self.name}: {self.type_name}" + ("" if self.required else f" = {self.default!r}")


def forward_parameters(module) -> list[_Param]:
    """forward()'s arguments: from the TorchScript schema, else from the Python signature."""
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is not None:
        return [_Param(a.name, str(a.type), not a.has_default_value(),
                       a.default_value if a.has_default_value() else None, a.kwarg_only)
                for a in schema.arguments[1:]]
    import inspect

    params = []
    for p in inspect.signature(module.forward).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        annotation = p.annotation
        type_name = ("Tensor" if annotation is p.empty else getattr(annotation, "__name__", str(annotation)))
        required = p.default is p.empty
        params.append(_Param(p.name, type_name, required, None if required else p.default,
                             p.kind == p.KEYWORD_ONLY))
    return params


def _needs_specs(params: list[_Param]) -> bool:
    """True when one guessed float tensor cannot call forward (more tensors, or other arguments)."""
    if not params:  # forward(*args): nothing to check, so the one-tensor default as before
        return False
    required = [p for p in params if p.required]
    return len(required) != 1 or not required[0].is_tensor


def _plan_call(params: list[_Param], specs: list[dict], args: dict, label: str) -> tuple[list[dict], dict]:
    """Check the given inputs and args against forward()'s arguments; (tensor specs, name -> value)."""
    known = {p.name: p for p in params}
    signature = f"forward({', '.join(map(repr, params))})"
    for name in [*(s["name"] for s in specs), *args]:
        if name not in known:
            raise ConversionError(f"{label}: {signature} has no argument {name!r}; its arguments are "
                                  f"{', '.join(known) or 'none'}")
    given = {s["name"] for s in specs}
    both = given & set(args)
    if both:
        raise ConversionError(f"{label}: {', '.join(sorted(both))} given both as --input and --arg; give each once")
    wrong = [s["name"] for s in specs if not known[s["name"]].is_tensor]
    if wrong:
        p = known[wrong[0]]
        raise ConversionError(f"{label}: {p.name} is a {p.type_name}, not a tensor; give it with "
                              f"--arg {p.name}=VALUE instead of --input")
    missing = [p for p in params if p.required and p.name not in given and p.name not in args]
    if missing:
        tensors = [p.name for p in params if p.is_tensor and (p.required or p.name in given)]
        hint = " ".join([*(f"--input {n}=SHAPE" for n in tensors if n not in given),
                         *(f"--arg {p.name}=VALUE" for p in missing if not p.is_tensor)])
        raise ConversionError(
            f"{label}: {signature} needs {', '.join(p.name for p in missing)}, which the file does not "
            f"describe; give {hint} (SHAPE like 1x512 or Nx3x224x224:float32, N dynamic; in Python "
            f"inputs={{name: 'Nx...'}}, args={{name: value}}), or record them once with `zoo add ... "
            f"--input/--arg`"
        )
    order = {p.name: i for i, p in enumerate(params)}
    specs = sorted(specs, key=lambda s: order[s["name"]])
    calls = {}
    for p in params:
        if p.name in given:
            calls[p.name] = None  # filled with the tensor at call time
        elif p.name in args:
            calls[p.name] = args[p.name]
        elif not p.required:
            calls[p.name] = p.default
    return specs, calls


def _bind_forward(module, tensor_names: list[str], calls: dict, torch, function=None):
    """An nn.Module whose forward takes only the tensors, passing every other argument as a constant.

    `function`, when given, is called instead of `module` with the same arguments: the
    specialized forward as a script function (converters.torchscript_ir), which tracing inlines.
    """

    class BoundForward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            if function is None:
                self.inner = module
            else:
                object.__setattr__(self, "inner", function)  # not a submodule: traced as its code

        def forward(self, *tensors):
            values = dict(calls)
            values.update(zip(tensor_names, tensors))
            for name, value in values.items():
                if value is not None and not hasattr(value, "dim") and name in _tensor_params:
                    values[name] = torch.tensor(value)
            positional = [values[p.name] for p in _params if p.name in values and not p.keyword]
            keywords = {p.name: values[p.name] for p in _params if p.name in values and p.keyword}
            return self.inner(*positional, **keywords)

    _params = forward_parameters(module)
    _tensor_params = {p.name for p in _params if p.is_tensor}
    return BoundForward().eval()


def convert(path: str | os.PathLike, **options: Any) -> Conversion:
    """Convert a PyTorch model file (TorchScript only; see the module docstring)."""
    return convert_torchscript(path, **options)


__all__ = ["check_file", "convert", "convert_module", "convert_torchscript", "export", "forward_parameters",
           "guess_input_shape", "load_torchscript"]

"""Compare a converted Caffe net (onnxruntime) with OpenCV's independent Caffe importer, layer by layer."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from converters.report import ConversionReport, OutputDiff

    from .parse import Net


def sample_inputs(net: Net, batch: int = 1, seed: int = 0, low: float = -128.0, high: float = 128.0):
    """A fixed random input per net input, on the scale of mean-subtracted 0-255 pixels by default."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {
        name: rng.uniform(low, high, [batch, *shape[1:]]).astype(np.float32) for name, shape in net.inputs.items()
    }


def run_onnx(model: onnx.ModelProto, inputs: dict, names: list[str], threads: int = 1) -> list[np.ndarray]:
    """Run `model` in onnxruntime and return the tensors `names` (graph outputs or any intermediate)."""
    import onnx
    import onnxruntime as ort

    present = {o.name for o in model.graph.output}
    extra = [n for n in names if n not in present]
    if extra:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        for name in extra:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # failures are raised; onnxruntime's coloured log lines would only repeat them
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(names, inputs)


def run_opencv(
    prototxt: str, caffemodel: str, inputs: dict, pins: list[tuple[str, int]], threads: int = 1
) -> list[np.ndarray]:
    """Run the net in OpenCV's Caffe importer and return the outputs `pins`: (layer name, top index)."""
    import cv2

    previous = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        net = cv2.dnn.readNetFromCaffe(os.fspath(prototxt), os.fspath(caffemodel))
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        for name, value in inputs.items():
            net.setInput(value, name)
        layers = list(dict.fromkeys(layer for layer, _ in pins))
        # forwardAndRetrieve gives every top of a layer; plain forward() only the first.
        results = dict(zip(layers, net.forwardAndRetrieve(layers)))
        return [results[layer][index].copy() for layer, index in pins]
    finally:
        cv2.setNumThreads(previous)


def compare(
    model: onnx.ModelProto,
    producers: dict[str, tuple[str, int]],
    prototxt: str,
    caffemodel: str,
    net: Net,
    tensors: list[str] | None = None,
    batch: int = 1,
    seed: int = 0,
) -> list[OutputDiff]:
    """Max differences between onnxruntime and OpenCV at `tensors` (default: the graph outputs)."""
    from converters.report import compare_outputs

    tensors = tensors or [o.name for o in model.graph.output]
    inputs = sample_inputs(net, batch, seed)
    reference = run_opencv(prototxt, caffemodel, inputs, [producers[t] for t in tensors])
    converted = run_onnx(model, inputs, tensors)
    return compare_outputs(tensors, reference, converted)


def verify_report(model, producers, prototxt: str, caffemodel: str, net: Net, report: ConversionReport) -> None:
    """Fill `report` with the comparison against OpenCV, or say why there is none."""
    try:
        import cv2
    except ImportError:
        report.verified = None
        report.notes.append(
            "not verified: OpenCV is not installed (pip install 'zoo[caffe-check]' for opencv-python-headless<5)"
        )
        return
    import onnxruntime

    report.versions["onnxruntime"] = onnxruntime.__version__
    report.versions["opencv"] = cv2.__version__
    report.reference = f"opencv {cv2.__version__} (cv2.dnn.readNetFromCaffe)"
    try:
        report.outputs = compare(model, producers, prototxt, caffemodel, net)
    except cv2.error as exc:
        report.verified = None
        report.notes.append(f"not verified: OpenCV cannot run this net ({_last_line(exc)})")
        return
    except Exception as exc:  # onnxruntime raises its own classes, e.g. for an opset newer than it knows
        if type(exc).__module__.split(".")[0] != "onnxruntime":
            raise
        report.verified = None
        report.notes.append(
            f"not verified: onnxruntime {onnxruntime.__version__} cannot run the model ({_last_line(exc)})"
        )
        return
    divergent = opencv_divergences(net)
    if divergent:
        # OpenCV is not Caffe on these layers: a difference there says nothing about the conversion.
        report.verified = None
        report.notes.append(f"not verified: OpenCV's importer computes differently from Caffe for {'; '.join(divergent)}")
    else:
        report.verified = all(o.max_rel <= report.tolerance for o in report.outputs)
    worst = max(report.outputs, key=lambda o: o.max_rel)
    report.notes.append(
        f"onnxruntime vs OpenCV on a fixed random input: worst output '{worst.name}' max abs diff "
        f"{worst.max_abs:.3g} (scale {worst.scale:.3g}, tolerance {report.tolerance:g} x scale)"
    )


def opencv_divergences(net: Net) -> list[str]:
    """Layers whose options OpenCV 4's Caffe importer ignores (checked against numpy references of Caffe)."""
    found = []
    for layer in net.layers:
        if layer.type == "LRN" and layer.lrn_param.norm_region == 0 and layer.lrn_param.k != 1:
            found.append(f"layer '{layer.name}' (LRN k={layer.lrn_param.k:g}; OpenCV uses k=1)")
        elif layer.type == "Log" and any(layer.log_param.HasField(f) for f in ("base", "scale", "shift")):
            found.append(f"layer '{layer.name}' (Log base/scale/shift; OpenCV ignores them)")
        elif layer.type == "InnerProduct" and layer.inner_product_param.transpose:
            found.append(f"layer '{layer.name}' (InnerProduct transpose; OpenCV ignores it)")
        elif layer.type == "Pooling" and layer.pooling_param.round_mode == 1:
            found.append(f"layer '{layer.name}' (Pooling round_mode FLOOR; OpenCV reads field 13 as ceil_mode)")
    return found


def _last_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__

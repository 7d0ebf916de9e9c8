"""onnx2torch vs onnxruntime on the light models, for bench_torch_module.py --onnx2torch PYTHON.

Runs in an interpreter that has onnx2torch (a throw-away venv; never this project's): prints one
JSON line {model: {"ort": seconds, "onnx2torch": seconds}}, medians of interleaved calls.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved  # noqa: E402


def main() -> None:
    import numpy as np
    import onnx
    import onnx.version_converter
    import onnxruntime as ort
    import torch
    from onnx2torch import convert

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", required=True, help="name=path,name=path...")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = {}
    for spec in args.models.split(","):
        name, path = spec.split("=", 1)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        try:
            # onnx2torch converts opset 9+ ops and reads tensor ranks from value_info: give it the
            # model upgraded to opset 13 and shape inference's value_info.
            model = onnx.version_converter.convert_version(onnx.load(path), 13)
            net = convert(onnx.shape_inference.infer_shapes(model)).eval()
        except Exception as exc:  # noqa: BLE001 - reported per model
            out[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
            continue
        x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
        xt = torch.from_numpy(x)
        feed = {session.get_inputs()[0].name: x}

        def peer():
            with torch.inference_mode():
                net(xt)

        try:
            peer()
        except Exception as exc:  # noqa: BLE001 - converted, but it does not run
            out[name] = {"error": f"runs into {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
            continue
        out[name] = interleaved({"ort": lambda: session.run(None, feed), "onnx2torch": peer}, args.repeats)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

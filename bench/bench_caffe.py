"""Caffe converter: ResNet-152 conversion time, and onnxruntime vs OpenCV's Caffe importer inference time.

Run: .venv/bin/python bench/bench_caffe.py [--repeats 7] [--threads 1] [--model resnet_152]

Weights are random (make_random_caffemodel): they do not change the cost. Inference runs the same input
in the converted ONNX model (onnxruntime) and in cv2.dnn.readNetFromCaffe with the same thread count;
timings are interleaved (A, B, A, B...) and medians reported, so a neighbour's load hits both alike.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _timing import interleaved  # bench/ is the script's folder

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
MODELS = ROOT.parent / "shared" / "caffe" / "models"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet_152")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--convert-repeats", type=int, default=3)
    args = parser.parse_args()

    import cv2
    import onnxruntime as ort

    from converters.caffe import convert, make_random_caffemodel
    from converters.caffe.parse import read_prototxt

    prototxt = MODELS / args.model / "deploy.prototxt"
    with tempfile.TemporaryDirectory() as tmp:
        caffemodel = Path(tmp) / f"{args.model}.caffemodel"
        made = timed(lambda: make_random_caffemodel(prototxt, caffemodel))
        size_mb = caffemodel.stat().st_size / 1e6
        print(f"{args.model}: {len(read_prototxt(prototxt).layers)} layers, random caffemodel "
              f"{size_mb:.0f} MB written in {made:.2f} s")

        conversions = []
        for _ in range(args.convert_repeats):
            conversions.append(timed(lambda: convert(prototxt, caffemodel, verify=False)))
        conversion = convert(prototxt, caffemodel, verify=False)
        print(f"conversion (parse + weights + ONNX graph + checker, no verification): "
              f"median {statistics.median(conversions):.2f} s of {args.convert_repeats} "
              f"(min {min(conversions):.2f} s; goal < 10 s)")
        verified = timed(lambda: convert(prototxt, caffemodel, verify=True))
        print(f"conversion with the OpenCV verification: {verified:.2f} s")

        shape = next(iter(read_prototxt(prototxt).inputs.values()))
        x = np.random.default_rng(0).uniform(-128, 128, [1, *shape[1:]]).astype(np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(conversion.model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        output = conversion.model.graph.output[0].name
        cv2.setNumThreads(args.threads)
        net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

        def run_opencv():
            net.setInput(x, "data")
            return net.forward(output)

        def run_onnx():
            return session.run([output], {"data": x})[0]

        diff = float(np.abs(run_opencv().reshape(-1) - run_onnx().reshape(-1)).max())
        t = interleaved({"onnxruntime": run_onnx, "opencv": run_opencv}, args.repeats)
        print(f"inference, batch 1, {args.threads} thread(s), median of {args.repeats}: "
              f"onnxruntime {t['onnxruntime'] * 1e3:.1f} ms, OpenCV {t['opencv'] * 1e3:.1f} ms, "
              f"ratio onnxruntime/OpenCV {t['onnxruntime'] / t['opencv']:.2f} (max abs diff {diff:.2g})")


if __name__ == "__main__":
    main()

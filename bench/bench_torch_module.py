"""Forward time of the converted torch module vs onnxruntime on the same ONNX model, input and threads."""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _median_seconds(fns, repeats: int) -> list[float]:
    """Median time of each function, interleaved so that a load change on the machine hits both."""
    for fn in fns:
        fn()  # warm-up: first runs allocate and pick kernels
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


def bench(path: Path, batch: int, threads: int, repeats: int) -> tuple[float, float, float]:
    """(onnxruntime, torch module, TorchScript of it) seconds per forward pass, medians."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from converters.onnx_to_torch import to_torch

    torch.set_num_threads(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    net = to_torch(path)
    name = net.input_names[0]
    # The light models hard-code batch 1 in a Reshape, so batches > 1 run as repeated batch-1 calls
    # in both engines; the ratio is what matters.
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    xt = torch.from_numpy(x)

    def run_ort():
        for _ in range(batch):
            session.run(None, {name: x})

    def run_torch():
        with torch.inference_mode():
            for _ in range(batch):
                net(xt)

    scripted = torch.jit.script(net)

    def run_script():
        with torch.inference_mode():
            for _ in range(batch):
                scripted(xt)

    return tuple(_median_seconds([run_ort, run_torch, run_script], repeats))


def main() -> None:
    import onnx

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="squeezenet,resnet50,inception_v1",
                        help="comma-separated light model names from the onnx package")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1, help="forward passes per timed call")
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    print(f"threads={args.threads} (torch.set_num_threads = ort intra_op), input 1x3x224x224, "
          f"x{args.batch} per call, median of {args.repeats} interleaved runs")
    print(f"{'model':<14}{'onnxruntime ms':>16}{'torch ms':>12}{'torch/ort':>12}{'script ms':>12}"
          f"{'script/torch':>14}")
    for model in args.models.split(","):
        ort_s, torch_s, script_s = bench(light / f"light_{model}.onnx", args.batch, args.threads, args.repeats)
        print(f"{model:<14}{ort_s * 1e3:>16.1f}{torch_s * 1e3:>12.1f}{torch_s / ort_s:>12.2f}"
              f"{script_s * 1e3:>12.1f}{script_s / torch_s:>14.2f}")


if __name__ == "__main__":
    main()

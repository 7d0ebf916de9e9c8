"""Tiny real models for the feature-cache and transfer tests: a torch MLP exported to ONNX, run by onnxruntime."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from zoo.options import TrainingConfig


def export_mlp(path: Path, *, seed: int = 0, inputs: int = 16, hidden: int = 12, outputs: int = 8) -> Path:
    """A two-layer MLP with seeded random weights, exported to ONNX (legacy exporter, dynamic batch)."""
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(inputs, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, outputs), torch.nn.ReLU()
    ).eval()
    torch.onnx.export(
        net,
        (torch.zeros(2, inputs),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        dynamo=False,
    )
    return path


class OrtExtractor:
    """The feature-cache protocol over an onnxruntime session; can fail after N batches."""

    def __init__(self, path: Path, *, fail_after: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.fingerprint = hashlib.sha256(self.path.read_bytes()).hexdigest() + "|y|none"
        self.fail_after = fail_after
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("interrupted on purpose")
        self.calls += 1
        return self.session.run(None, {"x": np.asarray(batch, dtype=np.float32)})[0]


class ProjectionExtractor:
    """A numpy-only extractor (fixed random projection + ReLU), for subprocesses that measure memory."""

    def __init__(self, inputs: int, outputs: int, seed: int = 0) -> None:
        self.weights = np.random.default_rng(seed).standard_normal((inputs, outputs)).astype(np.float32)
        self.fingerprint = f"projection|{inputs}|{outputs}|{seed}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.maximum(batch.reshape(len(batch), -1) @ self.weights, 0)


def register_digits_cnn(name: str = "digits.cnn", *, catalog=None, seed: int = 0, train_epochs: int = 0):
    """The walkthrough's CNN (random, or briefly trained on digits 0-4) registered as the user's own model."""
    from zoo.transfer import fit_head, save_model
    from zoo.demos.walkthrough import digits, digits_cnn

    net = digits_cnn(5, seed=seed)
    if train_epochs:
        x, y = digits()
        fit_head(x[y < 5], y[y < 5], head=net,
                 config=TrainingConfig(epochs=train_epochs, batch_size=64, lr=3e-3, seed=seed))
    return save_model(net.eval(), name, input_shape=[1, 8, 8], catalog=catalog, layout="NCHW", replace=True)

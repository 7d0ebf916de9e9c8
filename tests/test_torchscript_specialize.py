"""TorchScript with control flow: specialized on the given --input shapes and --arg values, then exported.

The modules are built here: a stateful streaming net (branches on the rank of its input, on its
sample rate, on a size it checks, and on attributes it updates itself between calls), a net with a
branch on tensor values, and one using an op no ONNX opset has.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")


class StreamingNet(torch.nn.Module):
    """forward(x, sr) on 64-sample frames; keeps the last 8 samples and the batch size between calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.front = torch.nn.Conv1d(1, 6, 5, stride=2)
        self.head16k = torch.nn.Linear(6, 3)
        self.head8k = torch.nn.Linear(6, 3)
        self.context = torch.zeros(0)
        self.last_batch = 0
        self.last_sr = 0

    def reset(self):
        self.context = torch.zeros(0)
        self.last_batch = 0
        self.last_sr = 0

    def forward(self, x: torch.Tensor, sr: int) -> torch.Tensor:
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() > 2:
            raise ValueError("one frame per row")
        if x.shape[-1] != 64:
            raise ValueError("frames of 64 samples")
        batch = x.shape[0]
        if self.last_sr and self.last_sr != sr:
            self.reset()
        if self.last_batch and self.last_batch != batch:
            self.reset()
        if not len(self.context):
            self.context = torch.zeros(batch, 8)
        x = torch.cat([self.context, x], 1)
        h = torch.relu(self.front(x.unsqueeze(1))).mean(dim=2)
        if sr == 16000:
            out = self.head16k(h)
        else:
            out = self.head8k(h)
        self.context = x[:, -8:]
        self.last_sr = sr
        self.last_batch = batch
        return torch.sigmoid(out)


class ValueBranch(torch.nn.Module):
    """A branch on the values of the input: left to ONNX as an If."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if bool(x.sum() > 0):
            return self.fc(x)
        return -self.fc(x)


class NoOnnxOp(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svd(x)[1]


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scripted")
    paths = {}
    for name, cls in (("streaming", StreamingNet), ("value_branch", ValueBranch), ("svd", NoOnnxOp)):
        paths[name] = folder / f"{name}.pt"
        torch.jit.script(cls().eval()).save(str(paths[name]))
    return paths


def _fresh(path, x, sr):
    """One call of a freshly loaded module: what the ONNX graph stands for."""
    with torch.no_grad():
        return torch.jit.load(str(path)).eval()(torch.from_numpy(x), sr).numpy()


@pytest.mark.parametrize("sr", [16000, 8000])
def test_stateful_scripted_module_is_specialized_and_exported(scripted, zoo_env, sr):
    import onnx

    import zoo
    from converters.onnx_model import run

    path = scripted["streaming"]
    before = path.read_bytes()
    artifact = zoo.convert(str(path), inputs={"x": "Nx64"}, args={"sr": sr})
    report = artifact.meta["report"]
    assert report["verified"] is True, report
    assert any(f"specialized on sr={sr}" in note for note in report["notes"]), report["notes"]
    model = onnx.load(artifact.path)
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"If", "Loop"}, ops  # rank, size, rate and state branches all folded
    assert [i.name for i in model.graph.input] == ["x"]
    rng = np.random.default_rng(3)
    for batch in (2, 5):  # the batch stays dynamic: the cached context is sized from it
        x = rng.standard_normal((batch, 64)).astype("float32")
        (got,) = run(model, {"x": x})[1]
        np.testing.assert_allclose(got, _fresh(path, x, sr), rtol=1e-5, atol=1e-6)
    assert path.read_bytes() == before
    # A second conversion is up to date: the module's own state never leaked into the check.
    assert zoo.convert(artifact.meta["model"]).meta["reused"] is True


def test_specializing_keeps_the_original_module_and_folds_what_the_shapes_decide(scripted):
    from converters.torchscript_ir import needs_specializing, specialize

    module = torch.jit.load(str(scripted["streaming"])).eval()
    assert needs_specializing(module)
    x = torch.randn(3, 64)
    special = specialize(module, [x], [[0]], {"sr": 16000})
    assert special.remaining == [] and "attribute writes dropped" in special.notes[0]
    assert module.last_batch == 0 and len(module.context) == 0  # the original is untouched
    with torch.no_grad():
        np.testing.assert_allclose(special.function(x, 16000).numpy(), module(x, 16000).numpy(), rtol=1e-6)
    # Only fixed sizes fold: a frame length given as dynamic keeps its check.
    kept = specialize(torch.jit.load(str(scripted["streaming"])).eval(), [x], [[0, 1]], {"sr": 16000})
    assert len(kept.remaining) == 1 and kept.remaining[0].endswith("if x.shape[-1] != 64:"), kept.remaining


def test_a_branch_on_tensor_values_becomes_an_onnx_if(scripted):
    from converters import pytorch as cp
    from converters.onnx_model import run

    conversion = cp.convert_torchscript(scripted["value_branch"], inputs=[{"name": "x", "shape": [None, 4],
                                                                            "dtype": "float32"}])
    assert conversion.report.verified is True
    assert [n.op_type for n in conversion.model.graph.node].count("If") == 1  # the rank check folded
    module = torch.jit.load(str(scripted["value_branch"]))
    for sign in (1.0, -1.0):
        x = sign * np.abs(np.random.default_rng(4).standard_normal((3, 4))).astype("float32")
        (got,) = run(conversion.model, {"x": x})[1]
        np.testing.assert_allclose(got, module(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_an_op_without_onnx_export_is_one_line_naming_the_log(scripted, zoo_env):
    done = subprocess.run([sys.executable, "-c", "from zoo.cli import main; main()", "convert", "--quiet",
                           str(scripted["svd"]), "--input", "x=Nx4x4"], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "aten::linalg_svd" in lines[0] and "zoo.log" in lines[0]
    assert "higher --opset" not in lines[0] and "retry with --opset" not in lines[0]
    assert "Traceback" not in done.stderr and "graph(" not in done.stderr + done.stdout
    log = lines[0].split("are in ")[-1].strip()
    assert "linalg_svd" in open(log).read()

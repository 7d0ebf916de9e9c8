"""TFLite: int8-quantized models verified within their quantization step; corrupt files never crash zoo."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers.convert import build_quantized_tflite, local_model

from zoo.errors import ModelFormatError


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> Path:
    return build_quantized_tflite(tmp_path_factory.mktemp("quantized"))


@pytest.fixture
def hostile(tf_models, tmp_path) -> dict[str, Path]:
    """A real model cut short (as by an interrupted download) and a file that only starts like one."""
    data = Path(tf_models["tflite"]).read_bytes()
    files = {"truncated": tmp_path / "truncated.tflite", "fake": tmp_path / "fake.tflite"}
    files["truncated"].write_bytes(data[: len(data) // 2])
    rng = np.random.default_rng(0)
    files["fake"].write_bytes(b"\x1c\x00\x00\x00TFL3" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return files


# ---- quantized models --------------------------------------------------------------------------


@pytest.mark.slow
def test_int8_tflite_is_verified_within_its_quantization_step(quantized):
    from converters import tensorflow as ct
    from converters.report import DEFAULT_RTOL, ConversionReport

    report = ct.convert_tflite(quantized).report
    (diff,) = report.outputs
    # The float tolerance would refuse it: onnxruntime's int8 kernels round differently from TFLite's.
    assert diff.max_rel > DEFAULT_RTOL
    assert report.verified is True, report.quantization
    (out,) = report.quantization["outputs"]
    assert out["scale"] > 0 and out["max_lsb"] <= ct.QUANTIZED_LSB and out["within"] is True
    assert out["tolerance_abs"] == pytest.approx(ct.QUANTIZED_LSB * out["scale"])
    assert out["argmax_agree"] == "2/2"
    assert any("int8-quantized model" in note for note in report.notes)
    assert ConversionReport.from_dict(report.to_dict()).quantization == report.quantization


@pytest.mark.slow
def test_int8_tflite_through_the_catalog_and_info(quantized, zoo_env):
    import zoo
    from zoo.catalog import open_catalog

    cat = open_catalog()
    cat.add_model(local_model("tiny.int8", "tflite", quantized, fmt="tflite"))
    artifact = zoo.convert("tiny.int8")
    stored = cat.get("tiny.int8").artifact("onnx").meta["report"]
    assert artifact.meta["verified"] is True and stored["quantization"]["outputs"][0]["within"] is True
    from click.testing import CliRunner

    from zoo.cli import cli

    result = CliRunner().invoke(cli, ["convert", "tiny.int8"])
    assert result.exit_code == 0 and "quantization steps, within 4 for this int8 model" in result.stdout
    result = CliRunner().invoke(cli, ["info", "tiny.int8"])
    assert "int8-quantized model: verified within 4 steps" in result.stdout


def test_quantized_verdict_refuses_more_steps_and_another_top_class():
    from converters.report import ConversionReport, compare_outputs
    from converters.tensorflow import QUANTIZED_LSB, _verify_quantized

    step = 0.01
    probe = {"outputs": [{"name": "logits", "quantization_scale": step}]}
    reference = np.array([[0.50, 0.20, 0.10], [0.30, 0.295, 0.0]], dtype="float32")

    def verdict(converted: np.ndarray) -> ConversionReport:
        report = ConversionReport(source_format="tflite")
        report.outputs = compare_outputs(["logits"], [reference], [converted])
        _verify_quantized(report, probe, [reference], [converted])
        return report

    assert verdict(reference + 2 * step).verified is True
    assert verdict(reference + (QUANTIZED_LSB + 1) * step).verified is False
    flipped = reference.copy()
    flipped[1] = [0.295, 0.30, 0.0]  # the second row's two best are 0.5 steps apart: a tie
    report = verdict(flipped)
    assert report.verified is True and report.quantization["outputs"][0]["argmax_ties"] == 1
    flipped[0] = [0.20, 0.23, 0.10]  # the first row's winner changes by 3 steps: another class
    report = verdict(flipped)
    assert report.verified is False and report.quantization["outputs"][0]["argmax_agree"] == "0/2"


# ---- corrupt files -----------------------------------------------------------------------------


@pytest.mark.slow
def test_every_truncation_is_refused_without_tensorflow(tf_models):
    from zoo.tflite_structure import validate_tflite

    good = Path(tf_models["tflite"])
    summary = validate_tflite(good)
    assert summary["subgraphs"] == 1 and summary["operators"] > 0
    data = good.read_bytes()
    scratch = good.with_name("cut.tflite")
    for cut in range(8, len(data), max(1, len(data) // 400)):
        scratch.write_bytes(data[:cut])
        with pytest.raises(ModelFormatError, match="is not a valid TFLite model"):
            validate_tflite(scratch)
    scratch.unlink()


@pytest.mark.slow
def test_an_interpreter_crash_in_the_child_is_an_error(hostile, tf_models, tmp_path):
    """Without the structural check, the truncated file does kill the interpreter: only its child dies."""
    import json

    from converters.tflite_check import _spawned, run_interpreter

    # The interpreter reads past the end of the mapped file: what lies there depends on the address
    # layout (ASLR), so it usually dies (SIGSEGV/SIGBUS) and sometimes reads garbage and says so.
    crashed_or_refused = r"crashed \(SIG[A-Z]+\).*child process|the TFLite interpreter cannot load or run it"
    with pytest.raises(ModelFormatError, match=crashed_or_refused):
        run_interpreter(hostile["truncated"])  # a fork of this process
    good = run_interpreter(tf_models["tflite"])
    (values,) = good["values"].values()
    assert values.shape == (2, 3) and good["quantized"] is False
    # Where there is no fork, a new Python process: the same verdicts.
    failure = _spawned(str(hostile["truncated"]), str(tmp_path / "bad"), 0, 300)
    assert failure is not None and failure.startswith(("the TFLite interpreter crashed (SIG",
                                                       "the TFLite interpreter cannot load or run it"))
    assert _spawned(str(tf_models["tflite"]), str(tmp_path / "good"), 0, 300) is None
    assert json.loads((tmp_path / "good.json").read_text())["outputs"][0]["name"] in good["values"]


@pytest.mark.slow
def test_cli_convert_layers_and_add_of_corrupt_tflite_exit_1(hostile, zoo_cmd, zoo_env):
    from zoo.catalog import open_catalog

    cat = open_catalog()
    for kind, path in hostile.items():
        cat.add_model(local_model(f"{kind}.tflite", "tflite", path, fmt="tflite"))
    commands = [["convert", str(hostile["truncated"])], ["add", str(hostile["fake"])],
                ["convert", "truncated.tflite"], ["layers", "fake.tflite"]]
    for command in commands:
        out = subprocess.run([*zoo_cmd, *command], capture_output=True, text=True, timeout=300,
                             check=False, env={**os.environ})
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1, (command, out.returncode, out.stderr[-2000:])
        assert lines[-1].startswith("error: ") and "not a valid TFLite model" in lines[-1]
        assert "Traceback" not in out.stderr
    assert not cat.exists("truncated")  # `zoo convert PATH` adopted nothing

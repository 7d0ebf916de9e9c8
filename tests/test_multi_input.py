"""Multi-input / multi-output extractors: a torch text encoder (token ids + mask) and a GRU with state + sr.

Both models are real torch modules exported with torch.onnx; every feature is checked against torch itself.
"""
from __future__ import annotations

import json
import pickle
import sqlite3  # noqa: F401  bind the system SQLite (with FTS5) before tensorflow loads its own
import subprocess
import warnings

import numpy as np
import pytest

from zoo.errors import InputError
from zoo.options import ExtractorOptions
from zoo.datasources import as_source

VOCAB, WIDTH = 50, 16


def _text_encoder():
    """Embedding + one masked self-attention block + masked mean-pool: a small BERT-like encoder."""
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, WIDTH)
            self.query = torch.nn.Linear(WIDTH, WIDTH)
            self.key = torch.nn.Linear(WIDTH, WIDTH)
            self.value = torch.nn.Linear(WIDTH, WIDTH)
            self.proj = torch.nn.Linear(WIDTH, WIDTH)

        def forward(self, input_ids, attention_mask):
            h = self.embed(input_ids)
            scores = self.query(h) @ self.key(h).transpose(1, 2) / WIDTH ** 0.5
            keep = attention_mask[:, None, :].to(scores.dtype)
            scores = scores.masked_fill(keep == 0, -1e4)  # padding tokens get no attention
            h = torch.relu(self.proj(torch.softmax(scores, -1) @ self.value(h))) + h
            weights = attention_mask[:, :, None].to(h.dtype)
            return (h * weights).sum(1) / weights.sum(1).clamp(min=1)

    torch.manual_seed(0)
    return TextEncoder().eval()


def _recurrent():
    """A 2-layer GRU whose inputs are audio frames, the recurrent state and a scalar sample rate."""
    import torch

    class Recurrent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(4, 8, num_layers=2, batch_first=True)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, input, state, sr):
            x = input * (sr.to(input.dtype) / 16000.0)
            out, new_state = self.gru(x, state)
            return self.head(out[:, -1]), new_state

    torch.manual_seed(1)
    return Recurrent().eval()


def _export(module, args, path, names, outputs, axes):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=outputs, dynamic_axes=axes)
    return path


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    import torch

    module = _text_encoder()
    ids = torch.randint(0, VOCAB, (2, 7))
    path = tmp_path_factory.mktemp("text") / "text_encoder.onnx"
    _export(module, (ids, torch.ones_like(ids)), path, ["input_ids", "attention_mask"], ["pooled"],
            {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "pooled": {0: "batch"}})
    return module, path


@pytest.fixture(scope="module")
def rnn_model(tmp_path_factory):
    import torch

    module = _recurrent()
    path = tmp_path_factory.mktemp("rnn") / "vad.onnx"
    _export(module, (torch.randn(3, 5, 4), torch.zeros(2, 3, 8), torch.tensor(16000)), path,
            ["input", "state", "sr"], ["output", "stateN"],
            {"input": {0: "batch", 1: "time"}, "state": {1: "batch"}, "output": {0: "batch"}, "stateN": {1: "batch"}})
    return module, path


def _tokens(n, seq=9, seed=0):
    """Token ids and a mask with a different amount of padding per row (padding ids are 0)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(n, seq)).astype(np.int64)
    lengths = rng.integers(2, seq + 1, size=n)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return ids * mask, mask


def _torch_text(module, ids, mask):
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


def _torch_rnn(module, x, state, sr):
    import torch

    with torch.no_grad():
        out, new_state = module(torch.from_numpy(x), torch.from_numpy(state), torch.tensor(sr))
    return out.numpy(), new_state.numpy()


# --- a text encoder: token ids + attention mask ---------------------------------------------------

def test_text_encoder_registered_cut_and_fed_by_name(text_model):
    import zoo
    from zoo.extract import layers, load_extractor, model_inputs

    module, path = text_model
    zoo.add(path, name="text_encoder")
    assert model_inputs("text_encoder") == [
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "batch_axis": 0},
        {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "seq"], "batch_axis": 0},
    ]
    names = [layer.name for layer in layers("text_encoder")]
    assert names[0] == "embed" and "proj" in names
    extractor = load_extractor("text_encoder", -1, options=ExtractorOptions(batch_size=2))
    assert extractor.input_names == ["input_ids", "attention_mask"]
    assert extractor.output_shape == (None, WIDTH)
    ids, mask = _tokens(5)
    want = _torch_text(module, ids, mask)
    tol = dict(rtol=1e-4, atol=1e-5)
    # keywords, a dict, and ids positionally with the mask by name all agree with torch
    np.testing.assert_allclose(extractor(input_ids=ids, attention_mask=mask), want, **tol)
    np.testing.assert_allclose(extractor({"input_ids": ids, "attention_mask": mask}), want, **tol)
    np.testing.assert_allclose(extractor(ids, attention_mask=mask.astype(np.int32)), want, **tol)
    # the mask matters: without it the padding tokens would change the features
    assert not np.allclose(extractor(input_ids=ids, attention_mask=np.ones_like(mask)), want, atol=1e-3)
    # a batch of 5 in batches of 2 equals one batch of 5; a different sequence length works too
    whole = load_extractor("text_encoder", -1, options=ExtractorOptions(batch_size=64))
    np.testing.assert_allclose(whole(input_ids=ids, attention_mask=mask), extractor(input_ids=ids, attention_mask=mask),
                               rtol=1e-5, atol=1e-6)
    short_ids, short_mask = _tokens(3, seq=4, seed=1)
    np.testing.assert_allclose(extractor(input_ids=short_ids, attention_mask=short_mask),
                               _torch_text(module, short_ids, short_mask), **tol)


def test_cut_on_one_input_needs_only_that_input(text_model):
    from zoo.extract import load_extractor

    module, path = text_model
    with warnings.catch_warnings():  # the mask joins above it, but nothing from input_ids goes around it
        warnings.simplefilter("error")
        extractor = load_extractor(path, "embed")
    assert extractor.input_names == ["input_ids"]
    ids, mask = _tokens(4)
    want = module.embed.weight.detach().numpy()[ids]
    np.testing.assert_allclose(extractor(ids), want, rtol=1e-6)
    # a tokenizer's whole output can be passed: inputs the cut does not use are left out
    np.testing.assert_allclose(extractor({"input_ids": ids, "attention_mask": mask}), want, rtol=1e-6)


def test_bad_multi_input_calls_say_what_is_expected(text_model):
    from zoo.extract import load_extractor

    _, path = text_model
    extractor = load_extractor(path, -1)
    ids, mask = _tokens(4)
    with pytest.raises(InputError, match=r"missing input\(s\) attention_mask: .*needs input_ids int64 \(N, seq\), "
                                         r"attention_mask int64 \(N, seq\); .*attention_mask=\.\.\."):
        extractor(ids)
    with pytest.raises(InputError, match=r"has no input named 'token_type_idz'; it takes input_ids int64"):
        extractor(input_ids=ids, attention_mask=mask, token_type_idz=mask)
    with pytest.raises(InputError, match=r"input 'input_ids' has dtype float32; .* expects integers \(int64\) .*"
                                         r"astype\('int64'\)"):
        extractor(input_ids=ids.astype(np.float32), attention_mask=mask)
    with pytest.raises(InputError,
                       match=r"disagree on the batch size: input_ids has 4 \(axis 0\), attention_mask has 3"):
        extractor(input_ids=ids, attention_mask=mask[:3])
    with pytest.raises(InputError, match=r"input 'attention_mask' has 7 along its 'seq' axis but 'input_ids' has 9"):
        extractor(input_ids=ids, attention_mask=mask[:, :7])
    with pytest.raises(InputError, match="given twice"):
        extractor(ids, input_ids=ids, attention_mask=mask)
    with pytest.raises(InputError, match="not both"):
        extractor({"input_ids": ids}, attention_mask=mask)
    with pytest.raises(InputError, match=r"input 'attention_mask' has shape \(4, 9, 1\); .* expects \(N, seq\)"):
        extractor(input_ids=ids, attention_mask=mask[..., None])


def test_text_features_cached_from_arrays_and_npy_files(text_model, tmp_path):
    from zoo.extract import load_extractor
    from zoo.features import extract_features

    module, path = text_model
    extractor = load_extractor(path, -1, options=ExtractorOptions(batch_size=4))
    ids, mask = _tokens(11, seed=2)
    first = extract_features(extractor, {"input_ids": ids, "attention_mask": mask}, chunk_size=4, progress=False)
    assert first.reused is False and first.features.shape == (11, WIDTH)
    np.testing.assert_allclose(first.features, _torch_text(module, ids, mask), rtol=1e-4, atol=1e-5)
    # the same inputs as .npy files hash the same: the cache is reused
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    again = extract_features(extractor, {"input_ids": tmp_path / "ids.npy", "attention_mask": str(tmp_path / "mask.npy")},
                             progress=False)
    assert again.reused is True and again.key == first.key
    # files read in chunks give the features of the arrays they hold
    np.save(tmp_path / "ids10.npy", ids[:10])
    np.save(tmp_path / "mask10.npy", mask[:10])
    from_files = extract_features(extractor, {"input_ids": tmp_path / "ids10.npy", "attention_mask": tmp_path / "mask10.npy"},
                                  chunk_size=3, progress=False)
    assert from_files.reused is False
    np.testing.assert_allclose(from_files.features, first.features[:10], rtol=1e-5, atol=1e-6)
    # every input is in the fingerprint: another mask is another entry
    other = mask.copy()
    other[:, -1] = 1
    changed = extract_features(extractor, {"input_ids": ids, "attention_mask": other}, progress=False)
    assert changed.key != first.key and changed.reused is False
    np.testing.assert_allclose(changed.features, _torch_text(module, ids, other), rtol=1e-4, atol=1e-5)
    # a record array (one field per input) is an array like any other to the cache
    records = np.zeros(11, dtype=[("input_ids", "i8", (9,)), ("attention_mask", "i8", (9,))])
    records["input_ids"], records["attention_mask"] = ids, mask
    as_records = extract_features(extractor, records, chunk_size=4, progress=False)
    np.testing.assert_allclose(as_records.features, first.features, rtol=1e-6)
    with pytest.raises(InputError, match="disagree on the number of samples: attention_mask has 10, input_ids has 11"):
        extract_features(extractor, {"input_ids": ids, "attention_mask": mask[:10]}, progress=False)
    with pytest.raises(InputError, match=r"input 'attention_mask': .*nope.npy is not a file"):
        extract_features(extractor, {"input_ids": ids, "attention_mask": tmp_path / "nope.npy"}, progress=False)


def test_iterable_of_dict_batches_is_cached(text_model):
    from zoo.extract import load_extractor
    from zoo.features import cache_features

    module, path = text_model
    extractor = load_extractor(path, -1)
    ids, mask = _tokens(7, seed=3)
    batches = [{"input_ids": ids[i:i + 3], "attention_mask": mask[i:i + 3]} for i in range(0, 7, 3)]
    features = cache_features(extractor, as_source(iter(batches), extractor, key="tokens-v1"), progress=False)
    assert features.shape == (7, WIDTH)
    np.testing.assert_allclose(features, _torch_text(module, ids, mask), rtol=1e-4, atol=1e-5)


def test_sklearn_transformer_takes_a_record_array(text_model):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline

    from zoo.extract import ExtractorTransformer

    _, path = text_model
    rng = np.random.default_rng(4)
    ids, mask = _tokens(80, seed=4)
    y = rng.integers(0, 2, 80)
    ids[:, :3] = np.where(y == 1, 7, 3)[:, None]  # the first tokens say the class
    mask[:, :3] = 1
    records = np.zeros(80, dtype=[("input_ids", "i8", (9,)), ("attention_mask", "i8", (9,))])
    records["input_ids"], records["attention_mask"] = ids, mask
    # a record array slices like any array, so sklearn's splitters work on it
    train_x, test_x, train_y, test_y = train_test_split(records, y, random_state=0)
    pipe = make_pipeline(ExtractorTransformer(str(path), layer=-1), LogisticRegression(max_iter=2000))
    pipe.fit(train_x, train_y)
    assert pipe.score(test_x, test_y) > 0.9
    transformer = pipe[0]
    np.testing.assert_allclose(transformer.transform(records[:5]),
                               transformer.transform({"input_ids": ids[:5], "attention_mask": mask[:5]}), rtol=1e-6)
    restored = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_allclose(restored.predict_proba(test_x), pipe.predict_proba(test_x), rtol=1e-6)


# --- a recurrent model: audio, a state batched on axis 1, a scalar sample rate ----------------------

def test_recurrent_state_and_scalar_sample_rate(rnn_model):
    from zoo.extract import load_extractor, model_inputs

    module, path = rnn_model
    assert [(i["name"], i["batch_axis"]) for i in model_inputs(path)] == [("input", 0), ("state", 1), ("sr", None)]
    extractor = load_extractor(path, ["output", "stateN"], options=ExtractorOptions(batch_size=2))
    assert extractor.input_names == ["input", "state", "sr"]
    assert extractor.batch_axes == {"input": 0, "state": 1, "sr": None}
    assert extractor.output_shape == {"head": (None, 3), "gru": (2, None, 8)}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6, 4)).astype(np.float32)
    state = rng.normal(size=(2, 5, 8)).astype(np.float32)
    out = extractor(input=x, state=state, sr=8000)  # 5 samples in batches of 2, sr with every batch
    assert set(out) == {"head", "gru"} and out["gru"].shape == (2, 5, 8)
    want_out, want_state = _torch_rnn(module, x, state, 8000)
    np.testing.assert_allclose(out["head"], want_out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["gru"], want_state, rtol=1e-4, atol=1e-5)
    # sr matters, and a one-element array is taken as the scalar
    other = extractor(input=x, state=state, sr=np.array([16000]))
    np.testing.assert_allclose(other["head"], _torch_rnn(module, x, state, 16000)[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(other["head"], out["head"], atol=1e-4)
    with pytest.raises(InputError, match=r"state has 4 \(axis 1\)"):
        extractor(input=x, state=state[:, :4], sr=8000)


def test_cut_before_the_state_does_not_need_it(rnn_model):
    from zoo.extract import load_extractor

    _, path = rnn_model
    with warnings.catch_warnings():  # the state joins above it, but nothing from input or sr goes around it
        warnings.simplefilter("error")
        extractor = load_extractor(path, "Mul")  # input * sr / 16000
    assert extractor.input_names == ["input", "sr"]
    x = np.random.default_rng(1).normal(size=(3, 6, 4)).astype(np.float32)
    np.testing.assert_allclose(extractor(x, sr=8000), x * 0.5, rtol=1e-6)


def test_state_output_is_cached_sample_first(rnn_model, tmp_path):
    from zoo.extract import load_extractor
    from zoo.features import cache_features

    module, path = rnn_model
    extractor = load_extractor(path, "stateN")
    assert extractor.output_shape == (2, None, 8)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(7, 6, 4)).astype(np.float32)
    state = rng.normal(size=(2, 7, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "state.npy", state)  # batched on axis 1, in a file
    features = cache_features(extractor, {"input": tmp_path / "x.npy", "state": tmp_path / "state.npy",
                                          "sr": np.int64(16000)}, chunk_size=3, progress=False)
    want = _torch_rnn(module, x, state, 16000)[1]
    assert features.shape == (7, 2, 8)  # one row per sample
    np.testing.assert_allclose(features, want.transpose(1, 0, 2), rtol=1e-4, atol=1e-5)


def test_to_torch_of_a_multi_input_cut(text_model, rnn_model):
    import torch

    from zoo.extract import load_extractor

    module, path = text_model
    extractor = load_extractor(path, -1)
    torch_module = extractor.to_torch()
    ids, mask = _tokens(4, seed=5)
    # the module takes the cut's inputs in graph order (extractor.input_names)
    with torch.no_grad():
        got = torch_module(torch.from_numpy(ids), torch.from_numpy(mask))
    np.testing.assert_allclose(got.numpy(), _torch_text(module, ids, mask), rtol=1e-4, atol=1e-5)
    # a scalar input (the sample rate) is one of the module's inputs too; onnx_to_torch has no GRU
    # yet, so the cut stops below it
    _, rnn_path = rnn_model
    scaled = load_extractor(rnn_path, "Mul").to_torch()
    x = np.random.default_rng(6).normal(size=(2, 5, 4)).astype(np.float32)
    with torch.no_grad():
        got = scaled(torch.from_numpy(x), torch.tensor(8000))
    np.testing.assert_allclose(got.numpy(), x * 0.5, rtol=1e-6)


# --- the command line -------------------------------------------------------------------------------

def test_cli_layers_shows_inputs_and_extract_takes_named_inputs(text_model, rnn_model, tmp_path):
    from click.testing import CliRunner

    from zoo.cli import cli

    module, path = text_model
    runner = CliRunner()
    result = runner.invoke(cli, ["layers", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["#", "-#", "layer", "op"]
    assert lines[lines.index("") + 1].split() == ["input", "dtype", "shape"]
    rows = [line.split() for line in lines[lines.index("") + 2:]]
    assert rows == [["input_ids", "int64", "(N,", "seq)"], ["attention_mask", "int64", "(N,", "seq)"]]
    only = json.loads(runner.invoke(cli, ["layers", str(path), "--inputs", "--json"]).output)
    assert [i["name"] for i in only] == ["input_ids", "attention_mask"]

    ids, mask = _tokens(6, seed=7)
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "f.npy"
    args = ["extract", str(path), "-l", "-1", "-i", f"input_ids={tmp_path / 'ids.npy'}",
            "-i", f"attention_mask={tmp_path / 'mask.npy'}", "-o", str(out), "-b", "4", "--json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["rows"] == 6 and report["shape"] == [6, WIDTH] and report["reused"] is False
    assert report["input"] == {"input_ids": str(tmp_path / "ids.npy"), "attention_mask": str(tmp_path / "mask.npy")}
    np.testing.assert_allclose(np.load(out), _torch_text(module, ids, mask), rtol=1e-4, atol=1e-5)
    assert json.loads(runner.invoke(cli, args).output)["reused"] is True

    # one plain path for a model that needs two inputs: one line naming them, no traceback
    result = runner.invoke(cli, ["extract", str(path), "-l", "-1", "-i", str(tmp_path / "ids.npy"), "-o", str(out)])
    assert result.exit_code == 1 and "missing input(s) attention_mask" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(cli,
                           ["extract", str(path), "-i", str(tmp_path / "ids.npy"), "-i", "mask.npy", "-o", str(out)])
    assert result.exit_code == 1 and "give each as NAME=FILE.npy" in result.output
    result = runner.invoke(cli,
                           ["extract", str(path), "-i", "input_ids=nope.npy", "-i", "attention_mask=x", "-o", str(out)])
    assert result.exit_code == 1 and "input_ids=nope.npy: no such file" in result.output

    # several layers of the recurrent model, a scalar sample rate given as a number: an .npz
    rnn, rnn_path = rnn_model
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 6, 4)).astype(np.float32)
    state = rng.normal(size=(2, 3, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "state.npy", state)
    result = runner.invoke(cli, ["extract", str(rnn_path), "-l", "stateN", "-l", "output", "-i", f"input={tmp_path / 'x.npy'}",
                                 "-i", f"state={tmp_path / 'state.npy'}", "-i", "sr=8000", "-o", str(tmp_path / "f.npz"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["shape"] == {"head": [3, 3], "gru": [2, 3, 8]} and report["input"]["sr"] == 8000
    assert report["rows"] == 3
    want_out, want_state = _torch_rnn(rnn, x, state, 8000)
    with np.load(tmp_path / "f.npz") as archive:
        np.testing.assert_allclose(archive["head"], want_out, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(archive["gru"], want_state, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # a fresh `zoo` process: seconds of start-up
def test_zoo_extract_named_inputs_subprocess(text_model, tmp_path, zoo_cmd):
    module, path = text_model
    ids, mask = _tokens(3, seed=9)
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    run = subprocess.run([*zoo_cmd, "extract", str(path), "-l", "-1", "--input", f"input_ids={tmp_path / 'ids.npy'}",
                          "--input", f"attention_mask={tmp_path / 'mask.npy'}", "--output", str(tmp_path / "f.npy")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), _torch_text(module, ids, mask), rtol=1e-4, atol=1e-5)
    run = subprocess.run([*zoo_cmd, "extract", str(path), "-l", "-1", "--input", f"input_ids={tmp_path / 'ids.npy'}",
                          "--input", f"attention_mask={tmp_path / 'ids.npy'}", "--input", f"input_ids={tmp_path / 'ids.npy'}",
                          "--output", str(tmp_path / "f.npy")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stderr.startswith("error: ") and "given twice" in run.stderr


# --- hand-made graphs: unnamed axes, a fixed batch, preprocessing one input of two --------------------

def _save(tmp_path, name, nodes, inputs, outputs, initializers=(), opset=13):
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def test_unnamed_axes_like_silero_vad(tmp_path):
    """Silero VAD declares input (?, ?), state (2, ?, 128), sr (): the state's free axis is its batch."""
    from onnx import TensorProto, helper, numpy_helper

    from zoo.extract import load_extractor, model_inputs

    path = _save(tmp_path, "vad_like", [
        helper.make_node("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["input", "sr_f"], ["scaled"]),
        helper.make_node("ReduceSum", ["scaled", "axes"], ["energy"], keepdims=1),
        helper.make_node("Add", ["state", "energy"], ["stateN"], name="update"),
    ], [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, None]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, 3]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, None, 3])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes")])
    assert [(i["name"], i["batch_axis"]) for i in model_inputs(path)] == [("input", 0), ("state", 1), ("sr", None)]
    extractor = load_extractor(path, "stateN", options=ExtractorOptions(batch_size=2))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7)).astype(np.float32)
    state = rng.normal(size=(2, 5, 3)).astype(np.float32)
    got = extractor(input=x, state=state, sr=8000)
    want = state + (x / 8000).sum(1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_fixed_batch_multi_input_graph_pads_every_batched_input(tmp_path):
    from onnx import TensorProto, helper

    from zoo.extract import load_extractor

    # The Reshape target comes through an Identity, so no rewrite can prove a dynamic batch safe.
    path = _save(tmp_path, "fixed_two", [
        helper.make_node("Mul", ["x", "gain"], ["scaled"], name="scale"),
        helper.make_node("Constant", [], ["target"], value=helper.make_tensor("t", TensorProto.INT64, [2], [2, 3])),
        helper.make_node("Identity", ["target"], ["target_copy"]),
        helper.make_node("Reshape", ["scaled", "target_copy"], ["pinned"], name="pin"),
        helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["pinned", "ids_f"], ["out"], name="shift"),
    ], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
        helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 3]),
        helper.make_tensor_value_info("gain", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3])])
    extractor = load_extractor(path, "shift")
    assert extractor.meta.fixed_batch == 2 and extractor.batch_axes == {"x": 0, "ids": 0, "gain": None}
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    ids = rng.integers(0, 9, size=(5, 3))
    np.testing.assert_allclose(extractor(x=x, ids=ids, gain=np.float32(3.0)), x * 3 + ids, rtol=1e-6)


def test_preprocessing_applies_to_the_input_the_catalog_describes(tmp_path):
    from onnx import TensorProto, helper

    from zoo.catalog import open_catalog
    from zoo.extract import load_extractor
    from zoo.hashes import file_hash
    from zoo.records import Artifact, InputSpec, Model

    path = _save(tmp_path, "image_and_gain", [helper.make_node("Mul", ["image", "gain"], ["out"], name="scale")],
                 [helper.make_tensor_value_info("gain", TensorProto.FLOAT, []),
                  helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 2, 2])],
                 [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 2, 2])])
    open_catalog().add_model(Model(
        name="image_and_gain", framework="onnx",
        artifacts=[Artifact(role="model", filename=path.name, path=str(path), sha256=file_hash(path))],
        input=InputSpec(name="image", mean=[10.0, 20.0, 30.0], scale=1.0, layout="NCHW"),
    ))
    extractor = load_extractor("image_and_gain", "scale", options=ExtractorOptions(preprocess=True))
    assert extractor.input_names == ["gain", "image"] and extractor.input_spec.name == "image"
    raw = np.random.default_rng(2).integers(0, 256, size=(4, 2, 2, 3)).astype(np.uint8)  # NHWC pixels
    want = (raw.astype(np.float32) - np.array([10, 20, 30], np.float32)).transpose(0, 3, 1, 2) * 2
    # the positional array is the catalog's input; the scalar is not preprocessed
    np.testing.assert_allclose(extractor(raw, gain=2.0), want, rtol=1e-6)
    with pytest.raises(InputError, match=r"input 'gain' has dtype int64; .* expects float32"):
        extractor(raw, gain=2)


# --- a real published architecture: Hugging Face BERT (random weights, no download) -------------------

@pytest.mark.slow
def test_huggingface_bert_three_inputs_two_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("USE_TF", "0")  # transformers would import tensorflow too
    transformers = pytest.importorskip("transformers")
    import torch

    import zoo
    from zoo.extract import layers, load_extractor, model_inputs
    from zoo.features import extract_features

    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    bert = transformers.BertModel(config).eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = torch.randint(0, 100, (2, 9))
    path = _export(bert, (example, torch.ones_like(example), torch.zeros_like(example)), tmp_path / "bert.onnx", names,
                   ["last_hidden_state", "pooler_output"],
                   {**{k: {0: "batch", 1: "sequence"} for k in [*names, "last_hidden_state"]}, "pooler_output": {0: "batch"}})
    zoo.add(path, name="bert-tiny")
    assert [(i["name"], i["batch_axis"]) for i in model_inputs("bert-tiny")] == [(n, 0) for n in names]
    found = [layer.name for layer in layers("bert-tiny")]
    assert found[0] == "embeddings.word_embeddings" and found[-1] == "pooler.activation"

    ids, mask = _tokens(5, seq=11, seed=10)
    segments = (np.arange(11)[None, :] >= 5).astype(np.int64) * mask
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": segments}  # a tokenizer's output
    with torch.no_grad():
        want = bert(**{k: torch.from_numpy(v) for k, v in batch.items()})
    extractor = load_extractor("bert-tiny", ["encoder.layer.1.output.LayerNorm", "pooler.activation"],
                               options=ExtractorOptions(batch_size=2))
    assert extractor.input_names == names
    got = extractor(batch)
    assert set(got) == {"encoder.layer.1.output.LayerNorm", "pooler.activation"}
    np.testing.assert_allclose(got["encoder.layer.1.output.LayerNorm"], want.last_hidden_state.numpy(),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["pooler.activation"], want.pooler_output.numpy(), rtol=1e-4, atol=1e-4)
    # the word embeddings need the token ids only; the rest of a tokenizer's output is left out
    with warnings.catch_warnings():  # positions and segments join above it; the ids have no way around it
        warnings.simplefilter("error")
        words = load_extractor("bert-tiny", "embeddings.word_embeddings")
    assert words.input_names == ["input_ids"]
    np.testing.assert_allclose(words(**batch), bert.embeddings.word_embeddings.weight.detach().numpy()[ids], rtol=1e-6)
    # pooled features through the cache, in chunks, from the dict
    pooled = load_extractor("bert-tiny", "pooler.activation")
    cached = extract_features(pooled, batch, chunk_size=2, progress=False)
    np.testing.assert_allclose(cached.features, want.pooler_output.numpy(), rtol=1e-4, atol=1e-4)

"""The zoo index format: round trips, every malformed case, the docs, and the built-in zoos."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from zoo.errors import IndexFormatError
from zoo.index import FORMAT, SCHEMA, builtin_index_names, builtin_models, dump_index, parse_index
from zoo.records import FRAMEWORKS, ROLES

DOCS = Path(__file__).resolve().parent.parent / "docs" / "index-format.md"


def entry(**changes) -> dict:
    data = {
        "name": "tiny.acme",
        "framework": "onnx",
        "format": "onnx",
        "task": "image-classification",
        "tags": ["tiny"],
        "input": {"shape": [None, 3, 8, 8], "layout": "NCHW", "mean": [0.5, 0.5, 0.5]},
        "files": [{"role": "model", "filename": "tiny.onnx", "url": "https://example.org/tiny.onnx",
                   "size": 10, "sha256": "ab" * 32}],
    }
    data.update(changes)
    return data


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def files(*specs: dict) -> dict:
    """An index whose one entry has these files (each given a URL)."""
    return index(entry(files=[{"url": f"https://example.org/{i}", **spec} for i, spec in enumerate(specs)]))


def index(*entries: dict) -> dict:
    return {"format": FORMAT, "name": "acme", "models": list(entries)}


def with_file(**changes) -> dict:
    file = {"role": "model", "filename": "tiny.onnx", "url": "https://example.org/tiny.onnx"}
    file.update(changes)
    return index(entry(files=[file]))


def test_parse_fills_model_and_artifact():
    (model,) = parse_index(index(entry()), source="acme")
    assert model.name == "tiny.acme" and model.framework == "onnx" and model.source == "acme"
    assert model.input.shape == [None, 3, 8, 8] and model.input.layout == "NCHW"
    (artifact,) = model.artifacts
    assert artifact.checksum == "sha256:" + "ab" * 32
    assert artifact.urls == ["https://example.org/tiny.onnx"] and artifact.size == 10
    assert artifact.path is None and not model.is_local


def test_parse_accepts_text_and_bytes():
    text = json.dumps(index(entry()))
    assert parse_index(text, source="a") == parse_index(text.encode(), source="a")


@pytest.mark.parametrize(
    "file_fields, expected",
    [
        ({"sha1": "AB" * 20}, "sha1:" + "ab" * 20),
        ({"md5": "0f" * 16}, "md5:" + "0f" * 16),
        ({"gitblob": "12" * 20}, "gitblob:" + "12" * 20),
        ({"checksum": "SHA256:" + "Cd" * 32}, "sha256:" + "cd" * 32),
        ({}, None),
    ],
)
def test_checksum_forms(file_fields, expected):
    (model,) = parse_index(with_file(**file_fields), source="acme")
    assert model.artifacts[0].checksum == expected


def test_null_checksum_says_none_is_published():
    (model,) = parse_index(with_file(checksum=None, note="none published"), source="acme")
    artifact = model.artifacts[0]
    assert artifact.checksum is None
    assert artifact.meta == {"checksum_published": False, "note": "none published"}


def test_mirrors_archive_members_and_manual():
    data = with_file(role="archive", filename="m.tgz", url="https://a.example/m.tgz",
                     urls=["https://a.example/m.tgz", "https://b.example/m.tgz"],
                     extract="tar", members={"model": "m/model.tflite"})
    artifact = parse_index(data, source="acme")[0].artifacts[0]
    assert artifact.urls == ["https://a.example/m.tgz", "https://b.example/m.tgz"]
    assert artifact.extract == "tar" and artifact.meta["members"] == {"model": "m/model.tflite"}

    manual = index(entry(files=[{"role": "weights", "filename": "w.caffemodel",
                                 "manual": "download it by hand"}]))
    artifact = parse_index(manual, source="acme")[0].artifacts[0]
    assert artifact.urls == [] and artifact.meta["manual"] == "download it by hand"


def test_round_trip_of_every_builtin_model():
    models = builtin_models()
    for name in builtin_index_names():
        mine = [m for m in models if m.source == name]
        dumped = json.loads(json.dumps(dump_index(mine, name=name)))
        assert parse_index(dumped, source=name) == mine


def test_dump_leaves_out_local_facts():
    (model,) = parse_index(index(entry()), source="acme")
    model.artifacts[0].path = "/tmp/x.onnx"
    model.artifacts[0].sha256 = "cd" * 32
    model.removed_upstream = True
    dumped = dump_index([model], name="acme")
    text = json.dumps(dumped)
    assert "/tmp/x.onnx" not in text and "cd" * 32 not in text and "removed_upstream" not in text
    assert parse_index(dumped, source="acme")[0].artifacts[0].path is None


BAD = [
    # (what to do to a valid index, words the message must hold)
    (lambda d: "{not json", ["'acme'", "not valid JSON"]),
    (lambda d: [], ["'acme'", "expected a JSON object"]),
    (lambda d: {**d, "format": "zoo-index/2"}, ["field 'format'", "zoo-index/2", FORMAT]),
    (lambda d: {k: v for k, v in d.items() if k != "format"}, ["field 'format' missing"]),
    (lambda d: {k: v for k, v in d.items() if k != "name"}, ["field 'name'", "required"]),
    (lambda d: {**d, "models": {}}, ["field 'models'", "expected a list"]),
    (lambda d: index("resnet"), ["entry 0", "expected an object"]),
    (lambda d: index(entry(), entry(name=None)), ["entry 1", "field 'name'", "required"]),
    (lambda d: index(entry(name="my model")), ["field 'name'", "'my model'", "no spaces"]),
    (lambda d: index(entry(name="../evil")), ["field 'name'", "'../evil'"]),
    (lambda d: index(entry(), entry()), ["entry 1 ('tiny.acme')", "repeats entry 0"]),
    (lambda d: index(entry(framework=None)), ["field 'framework' is missing", "caffe"]),
    (lambda d: index(entry(licence="MIT")), ["field 'licence'", "did you mean 'license'"]),
    (lambda d: index(entry(source="x")), ["field 'source'", "not a known field"]),
    (lambda d: index(entry(description=3)), ["field 'description'", "expected a non-empty string"]),
    (lambda d: index(entry(tags="a,b")), ["field 'tags'", "list of strings"]),
    (lambda d: index(entry(parameters=-1)), ["field 'parameters'", "integer >= 0"]),
    (lambda d: index(entry(parameters=True)), ["field 'parameters'"]),
    (lambda d: index(entry(metrics={"top1": "high"})), ["field 'metrics'", "numbers"]),
    (lambda d: index(entry(meta=[])), ["field 'meta'", "expected an object"]),
    (lambda d: index(entry(input=[1, 3])), ["field 'input'", "expected an object"]),
    (lambda d: index(entry(input={"layout": "CHW"})), ["field 'input.layout'", "NCHW, NHWC"]),
    (lambda d: index(entry(input={"shape": [1, -3]})), ["field 'input.shape'", "sizes"]),
    (lambda d: index(entry(input={"mean": "imagenet"})), ["field 'input.mean'", "numbers"]),
    (lambda d: index(entry(input={"pixel_range": [0]})), ["field 'input.pixel_range'", "2 numbers"]),
    (lambda d: index(entry(input={"channel_order": "GBR"})), ["input.channel_order", "RGB, BGR"]),
    (lambda d: index(entry(input={"scale": "1/255"})), ["field 'input.scale'", "a number"]),
    (lambda d: index(entry(input={"mena": [1]})), ["field 'input.mena'", "did you mean 'mean'"]),
    (lambda d: index(entry(files=None)), ["field 'files' is missing"]),
    (lambda d: index(entry(files=[])), ["field 'files'", "non-empty list"]),
    (lambda d: index(entry(files=["x.onnx"])), ["field 'files[0]'", "expected an object"]),
    (lambda d: with_file(role="weight"), ["field 'files[0].role'", "'weight'", "weights"]),
    (lambda d: with_file(filename=None), ["field 'files[0].filename' is missing"]),
    (lambda d: with_file(filename="../b.onnx"), ["files[0].filename", "no '.' or '..' parts"]),
    (lambda d: with_file(filename="a/./b.onnx"), ["files[0].filename", "relative path"]),
    (lambda d: with_file(filename="/etc/b.onnx"), ["files[0].filename", "no leading '/'"]),
    (lambda d: with_file(filename="a//b.onnx"), ["files[0].filename", "relative path"]),
    (lambda d: with_file(filename="a\\b.onnx"), ["files[0].filename", "no backslash"]),
    (lambda d: with_file(filename="/".join("d" * 10) + ".onnx"), ["files[0].filename", "at most 8 folders"]),
    (lambda d: with_file(filename="nul/b.onnx"), ["files[0].filename", "NUL is a device name on Windows"]),
    (lambda d: with_file(url=None), ["files[0].url", "'manual'"]),
    (lambda d: with_file(url="example.org/x.onnx"), ["files[0].url", "absolute URL"]),
    (lambda d: with_file(urls="https://a/x"), ["files[0].urls", "list of URL strings"]),
    (lambda d: with_file(size="10MB"), ["files[0].size", "byte count"]),
    (lambda d: with_file(md5="abc"), ["files[0].md5", "32 hex digits", "3 characters"]),
    (lambda d: with_file(sha256="zz" * 32), ["files[0].sha256", "64 hex digits"]),
    (lambda d: with_file(sha1=123), ["files[0].sha1", "hex string"]),
    (lambda d: with_file(md5="0" * 32, sha1="0" * 40), ["files[0].md5", "conflicts with 'sha1'", "one checksum"]),
    (lambda d: with_file(checksum="crc32:12345678"), ["files[0].checksum", "'crc32'", "sha256"]),
    (lambda d: with_file(checksum="abc"), ["files[0].checksum", "'algo:hex'"]),
    (lambda d: with_file(extract="rar"), ["files[0].extract", "tar, zip"]),
    (lambda d: with_file(members={"model": "x"}), ["files[0].members", "'extract' is not"]),
    (lambda d: with_file(extract="tar", members={"model": "../../etc/passwd"}),
     ["files[0].members", "relative paths"]),
    (lambda d: with_file(sha265="0" * 64), ["files[0].sha265", "did you mean 'sha256'"]),
    (lambda d: index(entry(files=[entry()["files"][0]] * 2)), ["files[1]", "repeats role 'model'"]),
    # hostile values: bounds, not tracebacks
    (lambda d: index(entry(parameters=10**30)), ["field 'parameters'", "1000000000000000000000000000000", "2**63-1"]),
    (lambda d: with_file(size=10**30), ["files[0].size", "2**63-1"]),
    (lambda d: index(entry(input={"shape": [1, 10**30]})), ["field 'input.shape'", "sizes"]),
    (lambda d: index(entry(meta=nested(40))), ["field 'meta'", "deeper than 16 levels"]),
    (lambda d: with_file(meta=nested(40)), ["field 'files[0].meta'", "deeper than 16 levels"]),
    (lambda d: index(entry(meta={"blob": "x" * 70_000})), ["field 'meta'", "bytes of JSON", "65536"]),
    (lambda d: index(entry(meta={"loss": float("nan")})), ["field 'meta'", "NaN or Infinity"]),
    (lambda d: index(entry(meta={"when": {1, 2}})), ["field 'meta'", "not JSON"]),
    (lambda d: index(entry(metrics={"top1": float("inf")})), ["field 'metrics'", "finite"]),
    (lambda d: index(entry(input={"mean": [float("nan")] * 3})), ["field 'input.mean'", "numbers"]),
    (lambda d: index(entry(description="x" * 70_000)), ["field 'description'", "70000 characters"]),
    (lambda d: with_file(filename="a" * 300 + ".onnx"), ["files[0].filename", "305 bytes", "at most 241"]),
    (lambda d: with_file(filename="\u00e9" * 125), ["files[0].filename", "250 bytes"]),
    (lambda d: with_file(filename="a\x00b.onnx"), ["files[0].filename", "NUL or control character"]),
    (lambda d: with_file(filename="nul.onnx"), ["files[0].filename", "NUL is a device name on Windows"]),
    (lambda d: with_file(filename="Com1"), ["files[0].filename", "COM1 is a device name"]),
    (lambda d: with_file(filename="model.onnx."), ["files[0].filename", "ending in a dot"]),
    (lambda d: with_file(url="ftp://example.org/x.onnx"), ["files[0].url", "'ftp://", "http, https, file"]),
    (lambda d: with_file(url="https://example.org/a.onnx\r\nX-Evil: 1"), ["files[0].url", "no control characters"]),
    (lambda d: index(entry(name="Tiny.acme"), entry()), ["entry 1 ('tiny.acme')", "repeats entry 0 ignoring case"]),
    # files that would take the same place in the cache (issue 11 item 7)
    (lambda d: files({"role": "model", "filename": "ok"},
                     {"role": "archive", "filename": "ok.tar", "extract": "tar"}),
     ["files[1].filename", "'ok.tar'", "folder 'ok' that 'ok.tar' unpacks to", "files[0]'s file 'ok'"]),
    (lambda d: files({"role": "archive", "filename": "w", "extract": "zip"}, {"role": "labels", "filename": "W.d"}),
     ["files[1].filename", "files[0]'s folder 'w.d'", "ignoring case"]),
    (lambda d: files({"role": "other", "filename": "variables"}, {"role": "other", "filename": "Variables/v.index"}),
     ["files[0].filename", "files[1]'s folder 'Variables' that 'Variables/v.index' is in"]),
    (lambda d: files({"role": "archive", "filename": "sm.tar", "extract": "tar"}, {"role": "other", "filename": "sm/x"}),
     ["files[0].filename", "folder 'sm' that 'sm.tar' unpacks to", "files[1]'s folder 'sm'"]),
    (lambda d: files({"role": "model", "filename": "m.onnx"}, {"role": "labels", "filename": "m.onnx"}),
     ["files[1].filename", "same place in the cache as files[0]'s file 'm.onnx'"]),
    (lambda d: files({"role": "graph", "filename": "Net.prototxt"}, {"role": "weights", "filename": "net.PROTOTXT"}),
     ["files[1].filename", "ignoring case"]),
    (lambda d: files({"role": "model", "filename": "m.onnx"}, {"role": "labels", "filename": "m.onnx.part"}),
     ["files[1].filename", "files[0]'s download file 'm.onnx.part'"]),
]


@pytest.mark.parametrize("change, words", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_malformed_index_names_entry_and_field(change, words):
    data = change(copy.deepcopy(index(entry())))
    with pytest.raises(IndexFormatError) as caught:
        parse_index(data, source="acme")
    message = str(caught.value)
    assert message.startswith("index 'acme'") and "\n" not in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("text, words", [
    ('{"format": "zoo-index/1", "name": "acme", "models": [], "x": NaN}', ["not valid JSON", "NaN is not a JSON value"]),
    ('{"format": "zoo-index/1", "name": "acme", "models": [{"metrics": {"a": -Infinity}}]}', ["-Infinity"]),
    ("[" * 200_000 + "]" * 200_000, ["nests objects/lists too deeply"]),
    ('{"format": "zoo-index/1", "name": "acme", "models": [{"name": "x", "meta": ' + "[" * 5000 + "]" * 5000 + "}]}",
     ["too deeply"]),
])
def test_hostile_json_text_is_one_clear_error(text, words):
    with pytest.raises(IndexFormatError) as caught:
        parse_index(text, source="acme")
    message = str(caught.value)
    assert message.startswith("index 'acme'") and "\n" not in message
    for word in words:
        assert word in message, message


def test_a_remote_index_may_only_point_at_http_urls():
    local = with_file(url="file:///etc/passwd")
    assert parse_index(local, source="acme")[0].artifacts[0].urls == ["file:///etc/passwd"]  # a local index may
    for url in ("file:///etc/passwd", "FILE:///home/me/.ssh/id_rsa", "ftp://example.org/x"):
        with pytest.raises(IndexFormatError, match="served over the network may only point at http or https"):
            parse_index(with_file(url=url), source="acme", remote=True)
    assert parse_index(with_file(url="HTTPS://example.org/x"), source="acme", remote=True)


def test_limits_accept_the_largest_allowed_values():
    big = entry(parameters=2**63 - 1, meta=nested(16), description="x" * 65536)
    big["files"][0].update(size=2**63 - 1, filename="a" * 236 + ".onnx")
    (model,) = parse_index(index(big), source="acme")
    assert model.parameters == 2**63 - 1 and model.artifacts[0].size == 2**63 - 1


def test_message_of_the_issue_example():
    data = index(entry(name="a"), entry(name="b"), entry(name="c"),
                 entry(name="resnet9", framework="caffe2"))
    with pytest.raises(IndexFormatError) as caught:
        parse_index(data, source="acme")
    assert str(caught.value) == (
        "index 'acme' entry 3 ('resnet9'): field 'framework' is 'caffe2'; "
        "expected one of caffe, tensorflow, keras, tflite, onnx, pytorch"
    )


def _docs_json_blocks() -> list[str]:
    return re.findall(r"```json\n(.*?)```", DOCS.read_text(), flags=re.S)


def test_a_savedmodel_is_listed_file_by_file_in_its_sub_folders():
    """A SavedModel's files keep their folders (variables/...); the schema's pattern says the same as the code."""
    names = ["saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001",
             "assets/vocab.txt"]
    (model,) = parse_index(files(*({"role": "model" if n == "saved_model.pb" else "other", "filename": n}
                                   for n in names)), source="acme")
    assert [a.filename for a in model.artifacts] == names
    pattern = re.compile(SCHEMA["properties"]["models"]["items"]["properties"]["files"]["items"]["properties"]
                         ["filename"]["pattern"])
    assert all(pattern.match(n) for n in [*names, "a.b/c..d", ".hidden"])
    assert not any(pattern.match(n) for n in ["/abs", "a//b", "a/", "../x", "a/./b", "a/..", ".", "a\\b"])


def test_docs_example_parses():
    example, _schema = _docs_json_blocks()
    (model,) = parse_index(example, source="acme")
    assert model.name == "resnet9.acme" and len(model.artifacts) == 2
    assert model.artifacts[0].urls[1].startswith("https://mirror.")
    assert model.artifacts[1].meta["checksum_published"] is False


def test_docs_schema_is_the_code_schema():
    _example, schema = _docs_json_blocks()
    assert json.loads(schema) == json.loads(json.dumps(SCHEMA))


def test_schema_enums_follow_records():
    entry_schema = SCHEMA["properties"]["models"]["items"]
    assert entry_schema["properties"]["framework"]["enum"] == list(FRAMEWORKS)
    file_schema = entry_schema["properties"]["files"]["items"]
    # Every role but "signature", which an entry gives in its own `signature` field.
    assert file_schema["properties"]["role"]["enum"] == [r for r in ROLES if r != "signature"]


# ---- the built-in zoos -------------------------------------------------------------------------

CAFFE_NAMES = {
    "bvlc_alexnet", "bvlc_reference_caffenet", "bvlc_googlenet", "bvlc_reference_rcnn_ilsvrc13",
    "finetune_flickr_style", "vgg16.caffe", "vgg19.caffe", "resnet50.caffe", "resnet101.caffe",
    "resnet152.caffe", "squeezenet1_0.caffe", "squeezenet1_1.caffe", "open_nsfw",
}
KERAS_ARCHS = {"vgg16", "vgg19", "resnet50", "resnet101", "resnet152", "inception_v3", "xception",
               "efficientnet_b0"}


@pytest.fixture(scope="module")
def builtins():
    return {m.name: m for m in builtin_models()}


def test_builtin_indexes_are_caffe_and_tensorflow(builtins):
    assert builtin_index_names() == ["caffe", "tensorflow"]
    assert {m.name for m in builtins.values() if m.source == "caffe"} == CAFFE_NAMES
    assert len(builtins) == len(builtin_models())  # names unique across the built-ins


def test_every_builtin_entry_is_complete(builtins):
    for model in builtins.values():
        assert model.description and model.license and model.task and model.architecture, model.name
        assert model.format and model.dataset and model.tags and model.homepage, model.name
        spec = model.input
        assert spec.layout in ("NCHW", "NHWC") and spec.channel_order in ("RGB", "BGR"), model.name
        assert spec.shape and len(spec.shape) == 4 and spec.pixel_range == [0, 255], model.name
        for artifact in model.artifacts:
            # every file either carries the publisher's checksum or says none is published
            said = artifact.checksum or artifact.meta.get("checksum_published") is False
            assert said, (model.name, artifact.filename)
            assert artifact.checksum or artifact.meta.get("note"), (model.name, artifact.filename)
            assert artifact.urls or artifact.meta.get("manual"), (model.name, artifact.filename)


def test_builtin_caffe_entries(builtins):
    for name in CAFFE_NAMES:
        model = builtins[name]
        assert model.framework == "caffe" and model.input.layout == "NCHW", name
        assert model.input.channel_order == "BGR", name
        graph, weights = model.artifact("graph"), model.artifact("weights")
        assert graph.urls[0].startswith("https://") and graph.urls[0].endswith(".prototxt"), name
        assert weights.filename.endswith(".caffemodel"), name
    alexnet = builtins["bvlc_alexnet"]
    assert alexnet.artifact("graph").urls == [
        "https://raw.githubusercontent.com/BVLC/caffe/master/models/bvlc_alexnet/deploy.prototxt"]
    assert alexnet.artifact("weights").checksum == "sha1:9116a64c0fbe4459d18f4bb6b56d647b63920377"
    assert alexnet.input.shape == [None, 3, 227, 227] and alexnet.input.mean == [104, 117, 123]
    assert builtins["bvlc_googlenet"].input.shape[2:] == [224, 224]
    assert builtins["finetune_flickr_style"].license == "non-commercial"
    assert builtins["squeezenet1_1.caffe"].artifact("weights").checksum == (
        "gitblob:9d2fc33abf653a6e8b2ee6cc63ede0e72ec67f44")
    assert builtins["vgg16.caffe"].artifact("weights").checksum is None
    assert builtins["vgg16.caffe"].meta["prototxt_format"] == "V1"
    resnet = builtins["resnet50.caffe"].artifact("weights")
    assert resnet.urls == [] and "OneDrive" in resnet.meta["manual"]


def test_builtin_tensorflow_entries(builtins):
    keras = [m for m in builtins.values() if m.framework == "keras"]
    assert {m.architecture for m in keras} == KERAS_ARCHS
    assert len(keras) == 2 * len(KERAS_ARCHS)
    for model in keras:
        assert model.meta["keras_application"] and isinstance(model.meta["include_top"], bool)
        assert model.input.layout == "NHWC"
        (weights,) = model.artifacts
        assert weights.role == "weights" and weights.checksum.startswith("md5:")
        assert weights.urls[0].startswith("https://storage.googleapis.com/")
    resnet = builtins["resnet50_notop.keras"]
    assert resnet.meta == {**resnet.meta, "keras_application": "ResNet50", "include_top": False}
    assert resnet.artifact("weights").checksum == "md5:4d473c1dd8becc155b73f8504c6f6626"
    assert resnet.input.channel_order == "BGR"  # Keras "caffe" preprocessing
    assert builtins["inception_v3.keras"].input.std == [127.5, 127.5, 127.5]  # "tf": [-1, 1]

    tflite = builtins["mobilenet_v1.tflite"].artifact("archive")
    assert tflite.extract == "tar" and tflite.meta["members"]["model"].endswith(".tflite")
    frozen = builtins["mobilenet_v1.tf"]
    assert frozen.format == "frozen_graph" and frozen.meta["outputs"]
    assert builtins["inception_v3.tf"].input.shape == [1, 299, 299, 3]
    hub = [m for m in builtins.values() if m.format == "saved_model"]
    assert hub and all("tf-hub-format=compressed" in m.artifacts[0].urls[0] for m in hub)
    assert all("kaggle.com" in m.artifacts[0].urls[0] for m in hub)

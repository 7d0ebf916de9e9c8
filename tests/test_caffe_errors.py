"""User mistakes with Caffe files: one-line zoo.errors naming the layer, the file, the shapes and the fix."""
from __future__ import annotations

import pytest

from helpers.caffe import make_net, net_text
from zoo.errors import ConversionError, ModelFormatError, UnsupportedLayerError

CONV = 'layer {{ name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param {{ num_output: {n} kernel_size: 3 {extra} }} }}'


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_unsupported_layer_names_layer_type_and_choices(tmp_path):
    from converters.caffe import convert, make_random_caffemodel

    prototxt = tmp_path / "mvn.prototxt"
    prototxt.write_text(net_text([1, 3, 4, 4], 'layer { name: "norm" type: "MVN" bottom: "data" top: "norm" }'))
    with pytest.raises(UnsupportedLayerError) as exc:
        make_random_caffemodel(prototxt, tmp_path / "x.caffemodel")
    message = _one_line(exc)
    assert "'norm'" in message and "'MVN'" in message and "Convolution" in message and "ArgMax" in message
    assert not (tmp_path / "x.caffemodel").exists()
    # convert() checks layer types before reading a (possibly huge) caffemodel.
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(UnsupportedLayerError, match="'norm' has type 'MVN'"):
        convert(prototxt, empty)


def test_stochastic_pooling_is_refused(tmp_path):
    from converters.caffe import make_random_caffemodel

    prototxt = tmp_path / "p.prototxt"
    prototxt.write_text(net_text([1, 3, 4, 4], 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                                               'pooling_param { pool: STOCHASTIC kernel_size: 2 } }'))
    with pytest.raises(UnsupportedLayerError, match="layer 'p'.*STOCHASTIC.*MAX, AVE"):
        make_random_caffemodel(prototxt, tmp_path / "p.caffemodel")


def test_blob_shape_mismatch_names_layer_and_both_shapes(tmp_path):
    from converters.caffe import convert

    prototxt, _ = make_net(tmp_path, [1, 6, 8, 8], CONV.format(n=4, extra=""), name="a")
    _, other = make_net(tmp_path, [1, 6, 8, 8], CONV.format(n=5, extra=""), name="b")
    with pytest.raises(ConversionError) as exc:
        convert(prototxt, other)
    message = _one_line(exc)
    assert "layer 'c'" in message and "[5, 6, 3, 3]" in message and "[4, 6, 3, 3]" in message
    assert "b.caffemodel" in message


def test_missing_layer_and_blob_count(tmp_path):
    from converters.caffe import convert

    prototxt, _ = make_net(tmp_path, [1, 6, 8, 8], CONV.format(n=4, extra=""), name="a")
    renamed = CONV.format(n=4, extra="").replace('name: "c"', 'name: "conv"')
    _, other = make_net(tmp_path, [1, 6, 8, 8], renamed, name="b")
    with pytest.raises(ConversionError, match=r"layer 'c' \(Convolution\) has no weights in b.caffemodel"):
        convert(prototxt, other)
    no_bias, _ = make_net(tmp_path, [1, 6, 8, 8], CONV.format(n=4, extra="bias_term: false"), name="nb")
    with pytest.raises(ConversionError, match=r"has 2 blobs in a.caffemodel.*needs 1"):
        convert(no_bias, tmp_path / "a.caffemodel")


def test_unparseable_prototxt_gives_file_and_line(tmp_path):
    from converters.caffe import convert, input_spec

    prototxt = tmp_path / "broken.prototxt"
    prototxt.write_text('name: "x"\ninput: "data"\nlayer { name: "c" type: "ReLU" bottom: "data" top: "c"\n')
    with pytest.raises(ModelFormatError) as exc:
        input_spec(prototxt)
    message = _one_line(exc)
    assert "broken.prototxt" in message and "line 3" in message and 'Expected "}"' in message
    bad_value = tmp_path / "bad.prototxt"
    bad_value.write_text('name: "x"\ninput: "data"\ninput_dim: two\n')
    with pytest.raises(ModelFormatError, match=r"bad.prototxt: line 3"):
        convert(bad_value, bad_value)


def test_swapped_or_corrupt_files(tmp_path):
    from converters.caffe import convert

    prototxt, caffemodel = make_net(tmp_path, [1, 6, 8, 8], CONV.format(n=4, extra=""))
    with pytest.raises(ModelFormatError, match="t.caffemodel is not a text prototxt"):
        convert(caffemodel, prototxt)
    with pytest.raises(ModelFormatError, match="t.prototxt is not a binary Caffe NetParameter"):
        convert(prototxt, prototxt)
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(caffemodel.read_bytes()[:-7])
    with pytest.raises(ModelFormatError, match="truncated.caffemodel"):
        convert(prototxt, truncated)
    with pytest.raises(ModelFormatError, match="cannot read caffemodel"):
        convert(prototxt, tmp_path / "nope.caffemodel")
    with pytest.raises(ModelFormatError, match="cannot read prototxt"):
        convert(tmp_path / "nope.prototxt", caffemodel)


def test_weights_are_required(tmp_path):
    from converters.caffe import convert

    prototxt, caffemodel = make_net(tmp_path, [1, 6, 8, 8], CONV.format(n=4, extra=""))
    caffemodel.unlink()  # none beside the prototxt to pair it with
    with pytest.raises(ConversionError, match="needs the .caffemodel.*make_random_caffemodel"):
        convert(prototxt)


def test_either_file_of_a_pair_converts_and_the_other_is_found_beside_it(tmp_path):
    from converters.caffe import convert

    prototxt, caffemodel = make_net(tmp_path, [1, 6, 8, 8], CONV.format(n=4, extra=""))
    expected = convert(prototxt, caffemodel, verify=False)
    for conversion in (convert(prototxt, verify=False), convert(caffemodel, verify=False),
                       convert(caffemodel, prototxt=prototxt, verify=False)):
        assert conversion.model.SerializeToString() == expected.model.SerializeToString()
        assert list(conversion.report.source_files) == [str(prototxt), str(caffemodel)]


def test_bad_opset(tmp_path):
    from converters.caffe import convert

    prototxt, caffemodel = make_net(tmp_path, [1, 6, 8, 8], CONV.format(n=4, extra=""))
    with pytest.raises(ConversionError, match=r"opset 11 is not supported; choose 13\.\.\d+ \(default 17\)"):
        convert(prototxt, caffemodel, opset=11)


def test_net_structure_errors(tmp_path):
    from converters.caffe import input_spec, make_random_caffemodel

    no_input = tmp_path / "train_val.prototxt"
    no_input.write_text('name: "x"\nlayer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    with pytest.raises(ModelFormatError, match="declares no input.*deploy prototxt"):
        input_spec(no_input)
    dangling = tmp_path / "dangling.prototxt"
    dangling.write_text(net_text([1, 3, 4, 4], 'layer { name: "r" type: "ReLU" bottom: "dat" top: "r" }'))
    with pytest.raises(ConversionError, match="layer 'r' \\(ReLU\\) reads blob 'dat'.*known blobs: data"):
        make_random_caffemodel(dangling, tmp_path / "d.caffemodel")
    short_dims = tmp_path / "dims.prototxt"
    short_dims.write_text('name: "x"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\n')
    with pytest.raises(ModelFormatError, match="need 4 input_dim values, found 2"):
        input_spec(short_dims)
    bad_group = tmp_path / "group.prototxt"
    bad_group.write_text(net_text([1, 3, 4, 4], CONV.format(n=4, extra="group: 2")))
    with pytest.raises(ConversionError, match="layer 'c' \\(Convolution\\): group 2 does not divide"):
        make_random_caffemodel(bad_group, tmp_path / "g.caffemodel")


def test_mean_file_errors(tmp_path):
    from converters.caffe import input_spec, schema

    prototxt, _ = make_net(tmp_path, [1, 3, 8, 8], CONV.format(n=4, extra=""))
    gray = schema.messages().BlobProto(num=1, channels=1, height=2, width=2)
    gray.data.extend([1.0] * 4)
    mean_file = tmp_path / "gray.binaryproto"
    mean_file.write_bytes(gray.SerializeToString())
    with pytest.raises(ConversionError, match="gray.binaryproto has 1 channels; input 'data' has 3"):
        input_spec(prototxt, mean_file)
    with pytest.raises(ModelFormatError, match="cannot read mean file"):
        input_spec(prototxt, tmp_path / "none.binaryproto")


def test_non_utf8_comment_is_fine(tmp_path):
    from converters.caffe import input_spec

    prototxt = tmp_path / "latin1.prototxt"
    prototxt.write_bytes(net_text([1, 3, 4, 4], "# caf\xe9 net (Latin-1 comment)").encode("latin-1"))
    assert input_spec(prototxt)["shape"] == [None, 3, 4, 4]

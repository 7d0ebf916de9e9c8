"""The Caffe protobuf messages zoo needs, built at run time so no generated code pins a protobuf release."""
from __future__ import annotations

# Field names, numbers and defaults follow BVLC Caffe's caffe.proto (plus SSD's ``permute_param``, the
# field number OpenCV also uses). Only the messages a deploy net or a caffemodel needs are declared;
# text-format parsing skips anything else.
#
# Two descriptor pools are built. ``messages()`` has the declared types, for prototxt text.
# ``raw_messages()`` declares the packed float/double payloads of ``BlobProto`` as ``bytes``: a packed
# repeated field and a bytes field share the wire encoding, so a caffemodel's weights parse as one buffer
# that numpy reads without a Python float per value.

import functools
from types import SimpleNamespace

# (name, number, type, label, default). Label "o" = optional, "r" = repeated, "p" = repeated packed.
# Types are scalar names, or message / enum names declared below ("Parent.Enum" for nested enums).
_ENGINE = ("Engine", {"DEFAULT": 0, "CAFFE": 1, "CUDNN": 2})

_MESSAGES: dict[str, dict] = {
    "BlobShape": {"fields": [("dim", 1, "int64", "p", None)]},
    "BlobProto": {
        "fields": [
            ("num", 1, "int32", "o", 0),
            ("channels", 2, "int32", "o", 0),
            ("height", 3, "int32", "o", 0),
            ("width", 4, "int32", "o", 0),
            ("data", 5, "float", "p", None),
            ("diff", 6, "float", "p", None),
            ("shape", 7, "BlobShape", "o", None),
            ("double_data", 8, "double", "p", None),
            ("double_diff", 9, "double", "p", None),
        ]
    },
    "FillerParameter": {
        "enums": [("VarianceNorm", {"FAN_IN": 0, "FAN_OUT": 1, "AVERAGE": 2})],
        "fields": [
            ("type", 1, "string", "o", "constant"),
            ("value", 2, "float", "o", 0.0),
            ("min", 3, "float", "o", 0.0),
            ("max", 4, "float", "o", 1.0),
            ("mean", 5, "float", "o", 0.0),
            ("std", 6, "float", "o", 1.0),
            ("sparse", 7, "int32", "o", -1),
            ("variance_norm", 8, "FillerParameter.VarianceNorm", "o", "FAN_IN"),
        ],
    },
    "NetStateRule": {
        "fields": [
            ("phase", 1, "Phase", "o", None),
            ("min_level", 2, "int32", "o", None),
            ("max_level", 3, "int32", "o", None),
            ("stage", 4, "string", "r", None),
            ("not_stage", 5, "string", "r", None),
        ]
    },
    "NetState": {
        "fields": [
            ("phase", 1, "Phase", "o", "TEST"),
            ("level", 2, "int32", "o", 0),
            ("stage", 3, "string", "r", None),
        ]
    },
    "ParamSpec": {
        "enums": [("DimCheckMode", {"STRICT": 0, "PERMISSIVE": 1})],
        "fields": [
            ("name", 1, "string", "o", None),
            ("share_mode", 2, "ParamSpec.DimCheckMode", "o", None),
            ("lr_mult", 3, "float", "o", 1.0),
            ("decay_mult", 4, "float", "o", 1.0),
        ],
    },
    "NetParameter": {
        "fields": [
            ("name", 1, "string", "o", None),
            ("layers", 2, "V1LayerParameter", "r", None),
            ("input", 3, "string", "r", None),
            ("input_dim", 4, "int32", "r", None),
            ("force_backward", 5, "bool", "o", False),
            ("state", 6, "NetState", "o", None),
            ("debug_info", 7, "bool", "o", False),
            ("input_shape", 8, "BlobShape", "r", None),
            ("layer", 100, "LayerParameter", "r", None),
        ]
    },
    "TransformationParameter": {
        "fields": [
            ("scale", 1, "float", "o", 1.0),
            ("mirror", 2, "bool", "o", False),
            ("crop_size", 3, "uint32", "o", 0),
            ("mean_file", 4, "string", "o", None),
            ("mean_value", 5, "float", "r", None),
            ("force_color", 6, "bool", "o", False),
            ("force_gray", 7, "bool", "o", False),
        ]
    },
    "ArgMaxParameter": {
        "fields": [
            ("out_max_val", 1, "bool", "o", False),
            ("top_k", 2, "uint32", "o", 1),
            ("axis", 3, "int32", "o", None),
        ]
    },
    "BatchNormParameter": {
        "fields": [
            ("use_global_stats", 1, "bool", "o", None),
            ("moving_average_fraction", 2, "float", "o", 0.999),
            ("eps", 3, "float", "o", 1e-5),
        ]
    },
    "BiasParameter": {
        "fields": [
            ("axis", 1, "int32", "o", 1),
            ("num_axes", 2, "int32", "o", 1),
            ("filler", 3, "FillerParameter", "o", None),
        ]
    },
    "ConcatParameter": {
        "fields": [("concat_dim", 1, "uint32", "o", 1), ("axis", 2, "int32", "o", 1)]
    },
    "ConvolutionParameter": {
        "enums": [_ENGINE],
        "fields": [
            ("num_output", 1, "uint32", "o", None),
            ("bias_term", 2, "bool", "o", True),
            ("pad", 3, "uint32", "r", None),
            ("kernel_size", 4, "uint32", "r", None),
            ("group", 5, "uint32", "o", 1),
            ("stride", 6, "uint32", "r", None),
            ("weight_filler", 7, "FillerParameter", "o", None),
            ("bias_filler", 8, "FillerParameter", "o", None),
            ("pad_h", 9, "uint32", "o", 0),
            ("pad_w", 10, "uint32", "o", 0),
            ("kernel_h", 11, "uint32", "o", None),
            ("kernel_w", 12, "uint32", "o", None),
            ("stride_h", 13, "uint32", "o", None),
            ("stride_w", 14, "uint32", "o", None),
            ("engine", 15, "ConvolutionParameter.Engine", "o", "DEFAULT"),
            ("axis", 16, "int32", "o", 1),
            ("force_nd_im2col", 17, "bool", "o", False),
            ("dilation", 18, "uint32", "r", None),
        ],
    },
    "CropParameter": {
        "fields": [("axis", 1, "int32", "o", 2), ("offset", 2, "uint32", "r", None)]
    },
    "DropoutParameter": {"fields": [("dropout_ratio", 1, "float", "o", 0.5)]},
    "EltwiseParameter": {
        "enums": [("EltwiseOp", {"PROD": 0, "SUM": 1, "MAX": 2})],
        "fields": [
            ("operation", 1, "EltwiseParameter.EltwiseOp", "o", "SUM"),
            ("coeff", 2, "float", "r", None),
            ("stable_prod_grad", 3, "bool", "o", True),
        ],
    },
    "ELUParameter": {"fields": [("alpha", 1, "float", "o", 1.0)]},
    "ExpParameter": {
        "fields": [
            ("base", 1, "float", "o", -1.0),
            ("scale", 2, "float", "o", 1.0),
            ("shift", 3, "float", "o", 0.0),
        ]
    },
    "FlattenParameter": {
        "fields": [("axis", 1, "int32", "o", 1), ("end_axis", 2, "int32", "o", -1)]
    },
    "InnerProductParameter": {
        "fields": [
            ("num_output", 1, "uint32", "o", None),
            ("bias_term", 2, "bool", "o", True),
            ("weight_filler", 3, "FillerParameter", "o", None),
            ("bias_filler", 4, "FillerParameter", "o", None),
            ("axis", 5, "int32", "o", 1),
            ("transpose", 6, "bool", "o", False),
        ]
    },
    "InputParameter": {"fields": [("shape", 1, "BlobShape", "r", None)]},
    "LogParameter": {
        "fields": [
            ("base", 1, "float", "o", -1.0),
            ("scale", 2, "float", "o", 1.0),
            ("shift", 3, "float", "o", 0.0),
        ]
    },
    "LRNParameter": {
        "enums": [("NormRegion", {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1}), _ENGINE],
        "fields": [
            ("local_size", 1, "uint32", "o", 5),
            ("alpha", 2, "float", "o", 1.0),
            ("beta", 3, "float", "o", 0.75),
            ("norm_region", 4, "LRNParameter.NormRegion", "o", "ACROSS_CHANNELS"),
            ("k", 5, "float", "o", 1.0),
            ("engine", 6, "LRNParameter.Engine", "o", "DEFAULT"),
        ],
    },
    "PermuteParameter": {"fields": [("order", 1, "uint32", "r", None)]},
    "PoolingParameter": {
        "enums": [
            ("PoolMethod", {"MAX": 0, "AVE": 1, "STOCHASTIC": 2}),
            _ENGINE,
            ("RoundMode", {"CEIL": 0, "FLOOR": 1}),
        ],
        "fields": [
            ("pool", 1, "PoolingParameter.PoolMethod", "o", "MAX"),
            ("kernel_size", 2, "uint32", "o", None),
            ("stride", 3, "uint32", "o", 1),
            ("pad", 4, "uint32", "o", 0),
            ("kernel_h", 5, "uint32", "o", None),
            ("kernel_w", 6, "uint32", "o", None),
            ("stride_h", 7, "uint32", "o", None),
            ("stride_w", 8, "uint32", "o", None),
            ("pad_h", 9, "uint32", "o", 0),
            ("pad_w", 10, "uint32", "o", 0),
            ("engine", 11, "PoolingParameter.Engine", "o", "DEFAULT"),
            ("global_pooling", 12, "bool", "o", False),
            ("round_mode", 13, "PoolingParameter.RoundMode", "o", "CEIL"),
        ],
    },
    "PowerParameter": {
        "fields": [
            ("power", 1, "float", "o", 1.0),
            ("scale", 2, "float", "o", 1.0),
            ("shift", 3, "float", "o", 0.0),
        ]
    },
    "PReLUParameter": {
        "fields": [
            ("filler", 1, "FillerParameter", "o", None),
            ("channel_shared", 2, "bool", "o", False),
        ]
    },
    "ReLUParameter": {
        "enums": [_ENGINE],
        "fields": [
            ("negative_slope", 1, "float", "o", 0.0),
            ("engine", 2, "ReLUParameter.Engine", "o", "DEFAULT"),
        ],
    },
    "ReshapeParameter": {
        "fields": [
            ("shape", 1, "BlobShape", "o", None),
            ("axis", 2, "int32", "o", 0),
            ("num_axes", 3, "int32", "o", -1),
        ]
    },
    "ScaleParameter": {
        "fields": [
            ("axis", 1, "int32", "o", 1),
            ("num_axes", 2, "int32", "o", 1),
            ("filler", 3, "FillerParameter", "o", None),
            ("bias_term", 4, "bool", "o", False),
            ("bias_filler", 5, "FillerParameter", "o", None),
        ]
    },
    "SigmoidParameter": {
        "enums": [_ENGINE],
        "fields": [("engine", 1, "SigmoidParameter.Engine", "o", "DEFAULT")],
    },
    "SliceParameter": {
        "fields": [
            ("slice_dim", 1, "uint32", "o", 1),
            ("slice_point", 2, "uint32", "r", None),
            ("axis", 3, "int32", "o", 1),
        ]
    },
    "SoftmaxParameter": {
        "enums": [_ENGINE],
        "fields": [
            ("engine", 1, "SoftmaxParameter.Engine", "o", "DEFAULT"),
            ("axis", 2, "int32", "o", 1),
        ],
    },
    "TanHParameter": {
        "enums": [_ENGINE],
        "fields": [("engine", 1, "TanHParameter.Engine", "o", "DEFAULT")],
    },
}

# Layer parameters shared by the current and the V1 layer message: (field name, type, number in
# LayerParameter, number in V1LayerParameter or None when V1 has no such field).
_LAYER_PARAMS = [
    ("transform_param", "TransformationParameter", 100, 36),
    ("argmax_param", "ArgMaxParameter", 103, 23),
    ("concat_param", "ConcatParameter", 104, 9),
    ("convolution_param", "ConvolutionParameter", 106, 10),
    ("dropout_param", "DropoutParameter", 108, 12),
    ("eltwise_param", "EltwiseParameter", 110, 24),
    ("exp_param", "ExpParameter", 111, 41),
    ("inner_product_param", "InnerProductParameter", 117, 17),
    ("lrn_param", "LRNParameter", 118, 18),
    ("pooling_param", "PoolingParameter", 121, 19),
    ("power_param", "PowerParameter", 122, 21),
    ("relu_param", "ReLUParameter", 123, 30),
    ("sigmoid_param", "SigmoidParameter", 124, 38),
    ("softmax_param", "SoftmaxParameter", 125, 39),
    ("slice_param", "SliceParameter", 126, 31),
    ("tanh_param", "TanHParameter", 127, 37),
    ("prelu_param", "PReLUParameter", 131, None),
    ("reshape_param", "ReshapeParameter", 133, None),
    ("log_param", "LogParameter", 134, None),
    ("flatten_param", "FlattenParameter", 135, None),
    ("batch_norm_param", "BatchNormParameter", 139, None),
    ("elu_param", "ELUParameter", 140, None),
    ("bias_param", "BiasParameter", 141, None),
    ("scale_param", "ScaleParameter", 142, None),
    ("input_param", "InputParameter", 143, None),
    ("crop_param", "CropParameter", 144, None),
    ("permute_param", "PermuteParameter", 202, None),
]

_MESSAGES["LayerParameter"] = {
    "fields": [
        ("name", 1, "string", "o", None),
        ("type", 2, "string", "o", None),
        ("bottom", 3, "string", "r", None),
        ("top", 4, "string", "r", None),
        ("loss_weight", 5, "float", "r", None),
        ("param", 6, "ParamSpec", "r", None),
        ("blobs", 7, "BlobProto", "r", None),
        ("include", 8, "NetStateRule", "r", None),
        ("exclude", 9, "NetStateRule", "r", None),
        ("phase", 10, "Phase", "o", None),
        ("propagate_down", 11, "bool", "r", None),
    ]
    + [(name, number, kind, "o", None) for name, kind, number, _ in _LAYER_PARAMS]
}

# V1 layer type enum: the old net format names layer types with these constants.
V1_TYPES = {
    "NONE": (0, None),
    "ACCURACY": (1, "Accuracy"),
    "BNLL": (2, "BNLL"),
    "CONCAT": (3, "Concat"),
    "CONVOLUTION": (4, "Convolution"),
    "DATA": (5, "Data"),
    "DROPOUT": (6, "Dropout"),
    "EUCLIDEAN_LOSS": (7, "EuclideanLoss"),
    "FLATTEN": (8, "Flatten"),
    "HDF5_DATA": (9, "HDF5Data"),
    "HDF5_OUTPUT": (10, "HDF5Output"),
    "IM2COL": (11, "Im2col"),
    "IMAGE_DATA": (12, "ImageData"),
    "INFOGAIN_LOSS": (13, "InfogainLoss"),
    "INNER_PRODUCT": (14, "InnerProduct"),
    "LRN": (15, "LRN"),
    "MULTINOMIAL_LOGISTIC_LOSS": (16, "MultinomialLogisticLoss"),
    "POOLING": (17, "Pooling"),
    "RELU": (18, "ReLU"),
    "SIGMOID": (19, "Sigmoid"),
    "SOFTMAX": (20, "Softmax"),
    "SOFTMAX_LOSS": (21, "SoftmaxWithLoss"),
    "SPLIT": (22, "Split"),
    "TANH": (23, "TanH"),
    "WINDOW_DATA": (24, "WindowData"),
    "ELTWISE": (25, "Eltwise"),
    "POWER": (26, "Power"),
    "SIGMOID_CROSS_ENTROPY_LOSS": (27, "SigmoidCrossEntropyLoss"),
    "HINGE_LOSS": (28, "HingeLoss"),
    "MEMORY_DATA": (29, "MemoryData"),
    "ARGMAX": (30, "ArgMax"),
    "THRESHOLD": (31, "Threshold"),
    "DUMMY_DATA": (32, "DummyData"),
    "SLICE": (33, "Slice"),
    "MVN": (34, "MVN"),
    "ABSVAL": (35, "AbsVal"),
    "SILENCE": (36, "Silence"),
    "CONTRASTIVE_LOSS": (37, "ContrastiveLoss"),
    "EXP": (38, "Exp"),
    "DECONVOLUTION": (39, "Deconvolution"),
}

_MESSAGES["V1LayerParameter"] = {
    "enums": [("LayerType", {name: number for name, (number, _) in V1_TYPES.items()})],
    "fields": [
        ("bottom", 2, "string", "r", None),
        ("top", 3, "string", "r", None),
        ("name", 4, "string", "o", None),
        ("type", 5, "V1LayerParameter.LayerType", "o", None),
        ("blobs", 6, "BlobProto", "r", None),
        ("blobs_lr", 7, "float", "r", None),
        ("weight_decay", 8, "float", "r", None),
        ("include", 32, "NetStateRule", "r", None),
        ("exclude", 33, "NetStateRule", "r", None),
        ("loss_weight", 35, "float", "r", None),
        ("param", 1001, "string", "r", None),
    ]
    + [(name, v1, kind, "o", None) for name, kind, _, v1 in _LAYER_PARAMS if v1 is not None],
}

_TOP_ENUMS = [("Phase", {"TRAIN": 0, "TEST": 1})]

_SCALARS = {
    "double": 1, "float": 2, "int64": 3, "uint64": 4, "int32": 5, "bool": 8, "string": 9,
    "bytes": 12, "uint32": 13,
}  # FieldDescriptorProto.Type values
_RAW_BLOB_FIELDS = {"data", "diff", "double_data", "double_diff"}


def _file_descriptor(raw: bool):
    from google.protobuf import descriptor_pb2

    fdp = descriptor_pb2.FileDescriptorProto(
        name="zoo_caffe_raw.proto" if raw else "zoo_caffe.proto", package="caffe", syntax="proto2"
    )
    enum_names = {name for name, _ in _TOP_ENUMS}
    for message, spec in _MESSAGES.items():
        enum_names.update(f"{message}.{name}" for name, _ in spec.get("enums", []))

    def add_enum(container, name, values):
        enum = container.enum_type.add(name=name)
        for value_name, number in values.items():
            enum.value.add(name=value_name, number=number)

    for name, values in _TOP_ENUMS:
        add_enum(fdp, name, values)
    for message, spec in _MESSAGES.items():
        msg = fdp.message_type.add(name=message)
        for name, values in spec.get("enums", []):
            add_enum(msg, name, values)
        for name, number, kind, label, default in spec["fields"]:
            field = msg.field.add(name=name, number=number)
            field.label = 3 if label in "rp" else 1  # LABEL_REPEATED / LABEL_OPTIONAL
            if raw and message == "BlobProto" and name in _RAW_BLOB_FIELDS:
                field.type = _SCALARS["bytes"]
                field.label = 1
                continue
            if kind in _SCALARS:
                field.type = _SCALARS[kind]
            elif kind in enum_names:
                field.type = 14  # TYPE_ENUM
                field.type_name = f".caffe.{kind}"
            else:
                field.type = 11  # TYPE_MESSAGE
                field.type_name = f".caffe.{kind}"
            if label == "p":
                field.options.packed = True
            if default is not None:
                if isinstance(default, bool):
                    field.default_value = "true" if default else "false"
                elif isinstance(default, float):
                    field.default_value = repr(default)
                else:
                    field.default_value = str(default)
    return fdp


def _build(raw: bool) -> SimpleNamespace:
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    fd = pool.Add(_file_descriptor(raw))
    del fd  # pool.Add returns a FileDescriptorProto in some releases and a FileDescriptor in others
    classes = {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}"))
        for name in _MESSAGES
    }
    return SimpleNamespace(**classes)


@functools.cache
def messages() -> SimpleNamespace:
    """Message classes by name (``messages().NetParameter``), for prototxt text and small blobs."""
    return _build(raw=False)


@functools.cache
def raw_messages() -> SimpleNamespace:
    """Message classes whose BlobProto float payloads are raw little-endian bytes (fast caffemodel I/O)."""
    return _build(raw=True)


LAYER_PARAM_FIELDS = tuple(name for name, _, _, _ in _LAYER_PARAMS)

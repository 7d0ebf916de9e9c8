"""The ONNX op families; importing this package registers every op's lowering (converters.onnx_to_torch._registry)."""
from converters.onnx_to_torch.ops import (  # noqa: F401
    control,
    elementwise,
    nn,
    pool,
    quant,
    reduce,
    rnn,
    signal,
    tensor,
    vision,
)

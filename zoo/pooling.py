"""Keras-style global pooling of a cut's 4-D output over its spatial axes ("avg" or "max")."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zoo.errors import InputError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["POOLINGS", "check_pooling", "pool", "pooled_shape", "spatial_axes"]

POOLINGS = ("avg", "max")


def check_pooling(pooling: str | None) -> str | None:
    """The pooling name, or InputError naming the choices."""
    if pooling is None or pooling in POOLINGS:
        return pooling
    from zoo.errors import option

    raise InputError(f"{option('pooling', pooling)} is not one of {', '.join(POOLINGS)}; or leave it out for no pooling")


def spatial_axes(layout: str | None) -> tuple[int, int]:
    """The height and width axes of a 4-D tensor: (1, 2) for NHWC, else (2, 3) (NCHW)."""
    return (1, 2) if layout == "NHWC" else (2, 3)


def pooled_shape(shape: Any, layout: str | None, layer: str = "") -> Any:
    """The output shape after pooling: (N, C) for a 4-D output; 2-D shapes pass unchanged."""
    if shape is None or len(shape) == 2:
        return shape
    if len(shape) != 4:
        raise InputError(
            f"pooling needs a 4-D output (N, C, H, W) or (N, H, W, C); layer {layer} gives "
            f"{len(shape)}-D {tuple(shape)}: cut at a convolutional layer, or leave pooling out"
        )
    keep = [d for i, d in enumerate(shape) if i not in spatial_axes(layout)]
    return tuple(keep)


def pool(array: np.ndarray, pooling: str | None, layout: str | None, layer: str = "") -> np.ndarray:
    """Mean or max over the spatial axes of a 4-D batch; a 2-D batch (already vectors) is returned as is."""
    if pooling is None or array.ndim == 2:
        return array
    pooled_shape(array.shape, layout, layer)  # raises for 3-D, 5-D...
    axes = spatial_axes(layout)
    return array.mean(axis=axes) if pooling == "avg" else array.max(axis=axes)


def pool_module(pooling: str, layout: str | None):
    """The same pooling as a torch module (scriptable, saveable), for models built on the cut."""
    from zoo._global_pool import GlobalPool

    return GlobalPool(pooling, list(spatial_axes(layout)))

"""Images in, model inputs out: decode, resize, centre-crop, then the model's InputSpec (order, mean, std...).

Every place images enter zoo (an extractor called on paths, the feature cache on a folder, `zoo
train`/`zoo sweep`/`zoo extract`/`zoo predict`) goes through here, so a net sees the same pixels
whichever way they came in.

Unreadable images, one rule everywhere (`read_images`): a file Pillow cannot decode (truncated,
not an image, a text file in a class folder) is left out and reported, by default; with
``on_error="raise"`` (``--on-error raise``) the first one stops the run with an error naming it.
Reported means: the feature cache lists it in ``CachedFeatures.skipped`` (index, path, reason)
and drops its label with it; an extractor called on image files warns with a
`zoo.errors.SkippedInputsWarning` that carries the same list; `zoo extract` writes it to its
index and `zoo predict` to its table; the CLI names the skipped files. A folder whose images all
fail is an error. Rows of features never include a skipped file, so they stay aligned with the
files that were read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from zoo.errors import InputError, option

if TYPE_CHECKING:
    import numpy as np

    from zoo.records import InputSpec

__all__ = [
    "IMAGE_SUFFIXES",
    "Geometry",
    "class_folders",
    "geometry",
    "image_files",
    "as_paths",
    "is_image_input",
    "load_image",
    "load_images",
    "read_images",
    "stack_images",
    "preprocess",
    "to_layout",
]

# What a flat folder's images are recognised by (a class folder takes every file, and reports the
# ones Pillow cannot read as skipped).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
# ImageNet nets evaluated with a centre crop were resized to 256 for a 224 (or 227) crop.
_CROP_RATIO = 256 / 224


@dataclass(frozen=True)
class Geometry:
    """How an image reaches the net's size: resize (shorter side, or exact (H, W)), then a centre crop."""

    resize: int | tuple[int, int] | None
    crop: tuple[int, int] | None
    channels: int = 3

    def to_dict(self) -> dict[str, Any]:
        resize = list(self.resize) if isinstance(self.resize, tuple) else self.resize
        return {"resize": resize, "crop": list(self.crop) if self.crop else None, "channels": self.channels}


def _pair(value: Any, what: str) -> tuple[int, int]:
    """(H, W) from an int (a square) or a two-item list; InputError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        return int(value[0]), int(value[1])
    raise InputError(f"{what}={value!r} is not a size; give an int or [height, width] of positive ints")


def net_size(spec: InputSpec | None) -> tuple[int | None, int | None, int | None]:
    """(height, width, channels) the spec's shape asks for; None where it does not say."""
    shape = list(getattr(spec, "shape", None) or [])
    if len(shape) != 4:
        return None, None, None
    layout = getattr(spec, "layout", None) or ("NCHW" if shape[1] in (1, 3) else "NHWC")
    h, w, c = (shape[2], shape[3], shape[1]) if layout == "NCHW" else (shape[1], shape[2], shape[3])
    fixed = lambda d: d if isinstance(d, int) and d > 0 else None  # noqa: E731
    return fixed(h), fixed(w), fixed(c)


def geometry(spec: InputSpec | None, image_size: Sequence[int] | None = None) -> Geometry:
    """The resize and crop for a model's images: the spec's own, else a default from its input size.

    `image_size` (H, W) overrides everything with an exact resize. Without ``resize``/``crop`` in
    the spec, an ImageNet-sized NCHW colour net (Caffe, PyTorch) is resized to 256 on the shorter
    side and centre-cropped to its input (227 or 224), as BVLC and torchvision evaluate; any other
    net (Keras, TF, small nets) is resized straight to its input size, as Keras loads images.
    """
    height, width, channels = net_size(spec)
    channels = channels if channels in (1, 3) else 3
    if image_size is not None:
        return Geometry(_pair(tuple(image_size), "image_size"), None, channels)
    resize = getattr(spec, "resize", None)
    crop = getattr(spec, "crop", None)
    if resize is not None or crop is not None:
        if isinstance(resize, (list, tuple)):
            resize = _pair(tuple(resize), "resize")
        elif resize is not None:
            resize = _pair(resize, "resize")[0]
        crop = _pair(tuple(crop) if isinstance(crop, list) else crop, "crop") if crop is not None else None
        if crop is None and isinstance(resize, int) and height and width and (height, width) != (resize, resize):
            crop = (height, width)  # a shorter-side resize alone leaves a non-square image
        return Geometry(resize, crop, channels)
    if not (height and width):
        return Geometry(None, None, channels)
    layout = getattr(spec, "layout", None)
    if layout == "NCHW" and channels == 3 and min(height, width) >= 200:
        side = max(height, width)
        return Geometry(256 if side <= 256 else int(round(side * _CROP_RATIO)), (height, width), channels)
    return Geometry((height, width), None, channels)


# --- which files ----------------------------------------------------------------------------------

def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def as_paths(value: Any) -> list[Any] | None:
    """`value` as a list of paths when it is several: a list or tuple, a numpy array of strings, a
    pandas Series (anything with ``to_numpy``) of paths; None for anything else (one path too)."""
    if hasattr(value, "to_numpy"):  # pandas (a numpy array has no to_numpy)
        value = value.to_numpy()
    if hasattr(value, "dtype") and hasattr(value, "ndim"):
        if value.ndim != 1 or value.dtype.kind not in "UO" or not len(value):
            return None
        value = value.tolist()
    if isinstance(value, (list, tuple)) and value and all(_is_path(v) for v in value):
        return list(value)
    return None


def is_image_input(value: Any) -> bool:
    """True for an image file, a folder, or several paths (a list, a numpy array or a pandas Series
    of them): what an extractor decodes itself."""
    if _is_path(value):
        return Path(value).suffix.lower() != ".npy"
    return as_paths(value) is not None


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def class_folders(root: Path) -> tuple[list[str], list[Path], list[int]] | None:
    """(class names, files, class index per file) of a folder with one sub-folder per class, else None."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and _visible(p))
    if not classes:
        return None
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and _visible(path):
                files.append(path)
                labels.append(index)
    if not files:
        raise InputError(f"the class folders of {root} ({', '.join(classes)}) hold no files")
    return classes, files, labels


def image_files(value: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The images a path stands for: one file, a flat folder's images (sorted), or a list as given."""
    if not _is_path(value):
        paths = [Path(v).expanduser() for v in (as_paths(value) or value)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise InputError(f"{missing[0]} is not a file ({len(missing)} of {len(paths)} paths missing); "
                             "give paths of image files")
        return paths
    path = Path(value).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path} does not exist; give an image file, a folder of images or a list of paths")
    files = sorted(p for p in path.iterdir() if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(
            f"{path} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}...); give a folder of images, "
            "or one sub-folder per class"
        )
    return files


# --- decoding -------------------------------------------------------------------------------------

def _resize_size(resize: int | tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """(H, W) after a resize: exact for a pair, else the shorter side to `resize`, aspect kept."""
    if isinstance(resize, tuple):
        return resize
    if height <= width:
        return resize, max(1, int(resize * width / height))
    return max(1, int(resize * height / width)), resize


def _crop_box(crop: tuple[int, int], height: int, width: int, what: str) -> tuple[int, int, int, int]:
    ch, cw = crop
    if ch > height or cw > width:
        raise InputError(
            f"{what} is {height}x{width} after resizing, smaller than the {ch}x{cw} crop; set the "
            "spec's resize to at least the crop size"
        )
    top, left = (height - ch) // 2, (width - cw) // 2
    return left, top, left + cw, top + ch


def load_image(path: str | os.PathLike, geo: Geometry) -> np.ndarray:
    """One image as (H, W, C) float32 pixels 0-255 in RGB (or gray) order, resized and cropped."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("L" if geo.channels == 1 else "RGB")
        if geo.resize is not None:
            height, width = _resize_size(geo.resize, image.height, image.width)
            if (height, width) != (image.height, image.width):
                image = image.resize((width, height), Image.BILINEAR)
        if geo.crop is not None:
            image = image.crop(_crop_box(geo.crop, image.height, image.width, str(path)))
        pixels = np.asarray(image, dtype=np.float32)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


ON_ERROR = ("skip", "raise")


def read_images(
    paths: Sequence[str | os.PathLike], geo: Geometry, on_error: str = "skip", start: int = 0
) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Decode `paths`: the images that could be read, and the ones left out (index, path, reason).

    The one rule for unreadable images (see the module's docstring): skipped and reported, or
    with ``on_error="raise"`` an InputError naming the first one. `start` is the index of the
    first path among all inputs (the reported index counts from it).
    """
    if on_error not in ON_ERROR:
        raise InputError(f"on_error={on_error!r} is not one of 'skip', 'raise'")
    decoded, skipped = [], []
    for index, path in enumerate(paths, start=start):
        try:
            decoded.append(load_image(path, geo))
        except InputError:
            raise
        except Exception as exc:  # Pillow raises many types for a bad file
            reason = f"{type(exc).__name__}: {exc}"
            if on_error == "raise":
                raise InputError(f"cannot read image {path} ({reason}); remove or fix it, or skip unreadable "
                                 f"files ({option('on_error', 'skip')}, the default)") from None
            skipped.append({"index": index, "path": str(path), "reason": reason})
    return decoded, skipped


def describe_skipped(skipped: Sequence[dict[str, Any]], limit: int = 5) -> str:
    """The first `limit` skipped inputs with their reasons, and how many more there are."""
    shown = "; ".join(f"{s.get('path')} ({s.get('reason')})" for s in skipped[:limit])
    return shown + (f"; and {len(skipped) - limit} more" if len(skipped) > limit else "")


def stack_images(decoded: Sequence[np.ndarray]) -> np.ndarray:
    """Decoded images as one (N, H, W, C) batch; they must share a size (the net's, or image_size's)."""
    import numpy as np

    shapes = {im.shape for im in decoded}
    if len(shapes) > 1:
        raise InputError(
            f"the images have different sizes ({', '.join(sorted(map(str, shapes))[:3])}); the model's input "
            "has no fixed size to resize them to: pass " + option("image_size", value=(224, 224), cli="224,224")
        )
    return np.stack(decoded)


def load_images(paths: Sequence[str | os.PathLike], geo: Geometry) -> np.ndarray:
    """Images as one (N, H, W, C) float32 batch; an unreadable file is an InputError naming it
    (`read_images` leaves such files out instead, and says which)."""
    return stack_images(read_images(paths, geo, "raise")[0])


# --- the InputSpec --------------------------------------------------------------------------------

def to_pixel_range(pixels: np.ndarray, spec: InputSpec | None) -> np.ndarray:
    """Decoded 0-255 pixels onto the scale the spec's mean/scale refer to (its ``pixel_range``)."""
    import numpy as np

    low, high = (getattr(spec, "pixel_range", None) or [0, 255])
    if (low, high) == (0, 255):
        return pixels
    return pixels * np.float32((high - low) / 255.0) + np.float32(low)


def to_layout(pixels: np.ndarray, layout: str | None) -> np.ndarray:
    """(N, H, W, C) pixels in the model's layout (NCHW transposes; NHWC stays)."""
    return pixels.transpose(0, 3, 1, 2) if layout == "NCHW" else pixels


def preprocess(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Raw pixels (N, H, W, C) RGB, or in the model's layout -> the model's input.

    Reorders channels to ``channel_order``, then ``(x * scale - mean) / std`` per channel, in the
    model's layout (NCHW or NHWC). A batch of another height/width than a fixed-size net is
    resized and cropped as its images would be (see :func:`geometry`).
    """
    import numpy as np

    layout = spec.layout or "NCHW"
    if layout not in ("NCHW", "NHWC") or x.ndim != 4:
        raise InputError(
            f"{option('preprocess', True)} takes a batch of images (N, H, W, C) "
            f"or (N, C, H, W); got shape {tuple(x.shape)} for a {layout} model; leave it out and prepare "
            "the inputs yourself"
        )
    x = x.astype(np.float32)
    channel_axis = 1 if layout == "NCHW" else 3
    height, width, channels = net_size(spec)
    # Images in the other layout are transposed when the channel axis says so unambiguously.
    if channels is not None:
        other_axis = 3 if channel_axis == 1 else 1
        if x.shape[channel_axis] != channels and x.shape[other_axis] == channels:
            x = x.transpose(0, 3, 1, 2) if layout == "NCHW" else x.transpose(0, 2, 3, 1)
    if height and width:
        spatial = x.shape[2:4] if layout == "NCHW" else x.shape[1:3]
        if tuple(spatial) != (height, width):
            nhwc = x.transpose(0, 2, 3, 1) if layout == "NCHW" else x
            nhwc = _resize_batch(nhwc, geometry(spec))
            x = to_layout(nhwc, layout)
    if spec.channel_order == "BGR":
        x = np.flip(x, axis=channel_axis)
    shape = [1, 1, 1, 1]
    shape[channel_axis] = -1
    if spec.scale is not None:
        x = x * np.float32(spec.scale)
    if spec.mean is not None:
        x = x - np.asarray(spec.mean, np.float32).reshape(shape)
    if spec.std is not None:
        x = x / np.asarray(spec.std, np.float32).reshape(shape)
    return np.ascontiguousarray(x, dtype=np.float32)


def preprocess_module(spec: InputSpec):
    """The same preprocessing as a torch module (scriptable), for the torch form of a cut base.

    It takes pixels already at the net's size; `preprocess` also resizes and crops.
    """
    from zoo._preprocess_module import Preprocess

    return Preprocess(spec.layout, spec.channel_order, spec.scale, spec.mean, spec.std, spec.pixel_range)


def _resize_batch(nhwc: np.ndarray, geo: Geometry) -> np.ndarray:
    """Resize and crop a float (N, H, W, C) batch channel by channel (Pillow's float mode)."""
    import numpy as np
    from PIL import Image

    out = []
    for image in nhwc:
        height, width = image.shape[:2]
        if geo.resize is not None:
            height, width = _resize_size(geo.resize, height, width)
        channels = []
        for c in range(image.shape[2]):
            plane = Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32))  # mode "F"
            if (height, width) != image.shape[:2]:
                plane = plane.resize((width, height), Image.BILINEAR)
            if geo.crop is not None:
                plane = plane.crop(_crop_box(geo.crop, height, width, "an input image"))
            channels.append(np.asarray(plane, dtype=np.float32))
        out.append(np.stack(channels, axis=-1))
    return np.stack(out)

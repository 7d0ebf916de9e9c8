"""The cache folder's layout and the one folder-name rule.

Layout under `root(cache_dir)` (``$ZOO_CACHE`` or the platform's user cache folder):
``models/<name>/`` fetched files and trained-model copies, ``onnx/<name>/<name>.onnx`` converted
models, ``cuts/<sha256 of the source>/<cut key>.onnx|.json`` cut graphs, ``features/<key>/``
cached features. Ground floor: only paths, so converters may use it. Writing whole files is
`zoo.atomic`'s; listing and pruning what is here (`zoo cache list/rm`) is `zoo.cache_manager`'s.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from zoo import config
# Their home is zoo.atomic; kept here for code written when this module also did the writing.
from zoo.atomic import atomic_open, atomic_path, write_atomic  # noqa: F401

# Characters a cache folder name may keep; the rest become "_" (a model name never escapes its folder).
_UNSAFE = re.compile(r"[^\w.+=@-]")


def root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder (`cache_dir`, $ZOO_CACHE or the user cache folder); not created here."""
    return config.cache_dir(cache_dir)


def folder_name(name: str) -> str:
    """The folder a model's files live in: characters outside ``[\\w.+=@-]`` become ``_``, no leading dot."""
    return _UNSAFE.sub("_", name).lstrip(".") or "_"


def model_folder(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/models/<name>/``: a model's fetched files, or the copy `zoo train`/`zoo pretrain` saved."""
    return root(cache_dir) / "models" / folder_name(name)


def onnx_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `convert(name)` writes the ONNX file."""
    folder = folder_name(name)
    return root(cache_dir) / "onnx" / folder / f"{folder}.onnx"


def cuts_folder(source_sha256: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/cuts/<sha256 of the source ONNX>/``: the cut graphs of one model file."""
    return root(cache_dir) / "cuts" / source_sha256


def signatures_folder(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/signatures/<name>/``: `zoo sign`'s bundle and the lineage statements it signs.

    Not a cache kind `zoo cache rm` clears: a signature cannot be made again without its key.
    """
    return root(cache_dir) / "signatures" / folder_name(name)


def features_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/features/``: one folder per cached (extractor, data) pair."""
    return root(cache_dir) / "features"


__all__ = ["cuts_folder", "features_folder", "folder_name", "model_folder", "onnx_path", "root"]

"""zoo: a model-zoo catalog and converter for transfer learning.

Find a pretrained model, fetch it, convert it to ONNX, cut it at a layer and freeze it:

>>> import zoo
>>> zoo.search("resnet", framework="caffe")[0].name
'resnet50.caffe'
>>> extractor = zoo.load_extractor("bvlc_alexnet", layer="fc7")   # doctest: +SKIP

Importing zoo is cheap: each name below is imported from its module on first use, so
`import zoo` never pulls in torch, tensorflow or onnxruntime.
"""
from __future__ import annotations

import importlib
import importlib.util
import sqlite3  # noqa: F401  bind the system SQLite (with FTS5) before tensorflow can load its own
from typing import TYPE_CHECKING, Any

# Before anything imports TensorFlow, onnxruntime or Ray: their banners and notices stay off the
# terminal unless ZOO_LOG_LEVEL=INFO (or `zoo --verbose`); see zoo.logs. Only environment defaults.
from zoo.logs import quiet as _quiet  # noqa: E402

_quiet()

# public name -> module that defines it
_API: dict[str, str] = {
    # records and errors
    "Model": "zoo.records",
    "Artifact": "zoo.records",
    "InputSpec": "zoo.records",
    "ConversionReport": "converters.report",
    "ZooError": "zoo.errors",
    # options objects
    "TrainingConfig": "zoo.options",
    "ExtractorOptions": "zoo.options",
    "PretrainConfig": "zoo.options",
    "RetryPolicy": "zoo.transport",
    # catalog
    "Catalog": "zoo.catalog",
    "open_catalog": "zoo.catalog",
    "close_all": "zoo.catalog",
    "search": "zoo.catalog",
    "info": "zoo.catalog",
    "list_models": "zoo.catalog",
    "remove": "zoo.catalog",
    "add": "zoo.local",
    "scan": "zoo.local",
    "edit": "zoo.local",
    "add_source": "zoo.sources",
    "list_sources": "zoo.sources",
    "sync_sources": "zoo.sources",
    "remove_source": "zoo.sources",
    "export_index": "zoo.publish",
    # fetch and convert
    "fetch": "zoo.download",
    "verify": "zoo.download",
    "convert": "zoo.conversion",
    # provenance
    "Signer": "zoo.signing",
    "sign": "zoo.signatures",
    "verify_signatures": "zoo.signatures",
    # extract and transfer
    "layers": "zoo.extract",
    "LayerInfo": "zoo.extract",
    "load_extractor": "zoo.extract",
    "Extractor": "zoo.extract",
    "ExtractorTransformer": "zoo.extract",
    "DataSource": "zoo.datasources",
    "as_source": "zoo.datasources",
    "FeatureCache": "zoo.features",
    "cache_features": "zoo.features",
    "extract_features": "zoo.features",
    "save_features": "zoo.features",
    "save_layer_features": "zoo.features",
    "Engine": "zoo.engines",
    "run_extractor": "zoo.engines",
    "RayEngine": "zoo.ray_engine",
    "transfer_model": "zoo.transfer",
    "train": "zoo.transfer",
    "fit_head": "zoo.transfer",
    "sweep": "zoo.layer_sweep",
    "predict": "zoo.predictions",
    "Predictions": "zoo.predictions",
    "pretrain": "zoo.pretraining",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name == "__version__":  # from the package metadata, read on first use
        from zoo.config import version

        return version()
    module = _API.get(name)
    if module is None:
        # `zoo.features.extract_features` in a fresh interpreter: a submodule, imported on first use.
        if not name.startswith("_") and importlib.util.find_spec(f"zoo.{name}") is not None:
            value = importlib.import_module(f"zoo.{name}")
            globals()[name] = value
            return value
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from converters.report import ConversionReport
    from zoo.catalog import Catalog, close_all, info, list_models, open_catalog, remove, search
    from zoo.conversion import convert
    from zoo.errors import ZooError
    from zoo.extract import Extractor, ExtractorTransformer, LayerInfo, layers, load_extractor
    from zoo.datasources import DataSource, as_source
    from zoo.engines import Engine, run_extractor
    from zoo.features import FeatureCache, cache_features, extract_features, save_features, save_layer_features
    from zoo.options import ExtractorOptions, PretrainConfig, TrainingConfig
    from zoo.download import fetch, verify
    from zoo.local import add, edit, scan
    from zoo.predictions import Predictions, predict
    from zoo.pretraining import pretrain
    from zoo.publish import export_index
    from zoo.ray_engine import RayEngine
    from zoo.records import Artifact, InputSpec, Model
    from zoo.signatures import sign, verify_signatures
    from zoo.signing import Signer
    from zoo.sources import add_source, list_sources, remove_source, sync_sources
    from zoo.transport import RetryPolicy
    from zoo.layer_sweep import sweep
    from zoo.transfer import fit_head, train, transfer_model

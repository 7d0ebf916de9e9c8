"""Ray Data engine for the feature cache: chunks run on an actor pool, written in order by the caller.

Registered as ``engine="ray"`` in `zoo.engines`; each actor reads its chunks through the data
source's own `chunks` and runs them with `zoo.engines.run_extractor`, as the local engine does.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo.engines import Computed, run_extractor
from zoo.errors import EngineError, InputError, ZooError, require

__all__ = ["RayEngine"]

# Blocks of chunk descriptors handed to Ray Data: one chunk each up to this many, so the pool
# balances finely; beyond it a block carries several chunks (a few ms of scheduling each).
MAX_BLOCKS = 4096


@dataclass(frozen=True)
class RayEngine:
    """Run a feature extraction on a Ray actor pool: one onnxruntime session per actor.

    Each actor reads its chunks itself (an .npy slice, image files, a Parquet row group) with the
    same code as the in-process path, so the features are the same; this process writes them
    into the feature cache in order, so a run resumes at the first chunk missing. Files are read
    where the actors run: on a cluster of several machines the data must sit at the same path on
    every node (a shared file system); arrays in memory and the model are sent through Ray. The
    nodes need zoo and onnxruntime installed, like this machine.

    >>> zoo.extract_features(extractor, "train.parquet", engine=RayEngine(actors=2))  # doctest: +SKIP

    Attributes:
        address: the Ray cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``); None uses
            the Ray already initialised in this process, ``$RAY_ADDRESS``, or a new local instance.
        actors: actors in the pool; None fills the cluster's CPUs (CPUs // threads).
        threads: onnxruntime intra-op threads per actor, and CPUs Ray reserves for it. Set
            explicitly because Ray sets ``OMP_NUM_THREADS=1`` in its workers.
    """

    address: str | None = None
    actors: int | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        import importlib.util

        if self.actors is not None and (not isinstance(self.actors, int) or self.actors < 1):
            raise InputError(f"actors={self.actors!r} must be a whole number of at least 1")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise InputError(f"threads={self.threads!r} must be a whole number of at least 1")
        if importlib.util.find_spec("ray") is None:  # say so now, not after reading the data
            require("ray", "ray")

    def computed(self, source: Any, extractor: Any, start: int, chunk_size: int) -> Iterator[Computed]:
        """(first row, inputs consumed, features or None, skipped) of each chunk from `start`, in order.

        Checks the data and the extractor and connects to Ray at once; the chunks come as iterated.
        """
        ranges = _ranges(source, start, chunk_size)
        _check_portable(extractor)
        ray = _connect(self.address)
        return self._results(ray, source, extractor, ranges)

    def _results(self, ray: Any, source: Any, extractor: Any, ranges: list[tuple[int, int]]) -> Iterator[Computed]:
        if not ranges:
            return
        import ray.data

        actors = self._pool_size(ray, len(ranges))
        dataset = ray.data.from_items(
            [{"lo": lo, "hi": hi} for lo, hi in ranges], override_num_blocks=min(len(ranges), MAX_BLOCKS)
        ).map_batches(
            _ChunkWorker,
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=self.threads,
            fn_constructor_kwargs={
                "source": source,
                "extractor": extractor,
                "model": _model_bytes(extractor),
                "threads": self.threads,
            },
        )
        context = dataset.context
        context.execution_options.preserve_order = True  # the cache file is written front to back
        context.enable_progress_bars = False  # the cache shows its own bar
        if hasattr(context, "print_on_execution_start"):
            context.print_on_execution_start = False
        if hasattr(context, "raise_original_map_exception"):  # a worker's own exception, not Ray's wrapper
            context.raise_original_map_exception = True
        rows = iter(dataset.iter_rows())
        done = 0
        try:
            for row in rows:
                lo, _ = ranges[done]
                assert int(row["lo"]) == lo, (row["lo"], lo)  # Ray Data keeps the order asked for
                done += 1
                if row["error"]:
                    raise _error(row["error"])
                blob = row["features"]
                out = np.load(io.BytesIO(blob), allow_pickle=False) if len(blob) else None
                yield lo, int(row["consumed"]), out, json.loads(row["skipped"])
        except Exception as exc:  # Ray wraps what its workers raise; show the user's error as is
            raise _unwrapped(exc) from None
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()
        assert done == len(ranges), (done, len(ranges))

    def _pool_size(self, ray: Any, chunks: int) -> int:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        actors = self.actors or max(1, cpus // self.threads)
        if actors * self.threads > cpus:
            raise InputError(
                f"{actors} actors of {self.threads} thread(s) need {actors * self.threads} CPUs but the Ray "
                f"cluster has {cpus}; give fewer actors (`--actors`) or threads (`--threads`)"
            )
        return min(actors, chunks)


def _ranges(source: Any, start: int, chunk_size: int) -> list[tuple[int, int]]:
    """Chunk boundaries from `start`, as the source sets them (Parquet: within row groups)."""
    if source.length is None:
        raise InputError(
            "engine='ray' needs data whose rows can be read anywhere: an array, a .npy file, an image "
            "folder or Parquet; an iterable of batches runs in this process (engine='local')"
        )
    return source.ranges(start, chunk_size)


def _check_portable(extractor: Any) -> None:
    """Fail before starting Ray when the extractor cannot be copied into the actors."""
    try:
        import cloudpickle
    except ImportError:  # Ray vendors its own copy
        from ray import cloudpickle
    try:
        cloudpickle.dumps(extractor)
    except Exception as exc:
        raise InputError(
            f"the extractor ({type(extractor).__name__}) cannot be sent to Ray workers ({type(exc).__name__}: "
            f"{exc}); use one from zoo.load_extractor, make it picklable (open sessions lazily), or "
            "use engine='local'"
        ) from None


def _model_bytes(extractor: Any) -> bytes | None:
    """The cut model of a zoo Extractor, sent along for nodes that do not share this file system."""
    from zoo.extract import Extractor

    if isinstance(extractor, Extractor) and extractor.model_path.is_file():
        return extractor.model_path.read_bytes()
    return None


def _connect(address: str | None) -> Any:
    """The Ray this process already uses, or one started / joined at `address`."""
    ray = require("ray", "ray")
    if not ray.is_initialized():
        _check_reachable(address or os.environ.get("RAY_ADDRESS"))
    require("ray.data", "ray")  # ray without its [data] extra lacks pyarrow and pandas
    if ray.is_initialized():
        return ray
    try:
        from zoo.logs import ray_options

        ray.init(address=address, include_dashboard=False, **ray_options())
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or os.environ.get("RAY_ADDRESS") or "a new local instance"
        raise EngineError(
            f"cannot start or join Ray at {where} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "check the address (`ray status` on the head node), or leave --address out for a local instance"
        ) from None
    return ray


def _reported(exc: ZooError) -> str:
    """A worker's zoo error as text for its output row: its type, message and fields (JSON values)."""
    fields = {k: v for k, v in exc.fields.items() if _plain(v)}
    return json.dumps({"type": type(exc).__name__, "message": str(exc), "fields": fields})


def _plain(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _error(text: str) -> ZooError:
    """The zoo error a worker reported in its output row, raised again here, fields and all."""
    from zoo import errors

    reported = json.loads(text)
    kind = getattr(errors, reported["type"], None)
    if not (isinstance(kind, type) and issubclass(kind, ZooError)):
        return EngineError(reported["message"])
    try:
        return kind(reported["message"], **reported.get("fields", {}))
    except TypeError:  # fields this zoo's class does not take
        return kind(reported["message"])


def _check_reachable(address: str | None) -> None:
    """Fail fast on a host:port nobody listens on: ray.init retries such an address for minutes."""
    import socket

    if not address:
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():  # "auto", "local": Ray finds the cluster itself
        return
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=10):
            pass
    except OSError as exc:
        raise EngineError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start one with "
            "`ray start --head`, check the address (`ray status` on the head node), or leave --address "
            "out for a local instance"
        ) from None


def _unwrapped(exc: BaseException) -> BaseException:
    """An EngineError naming what failed in Ray: the worker's own exception when Ray passes it on."""
    if isinstance(exc, ZooError) and type(exc).__module__.startswith("zoo"):
        return exc
    cause = getattr(exc, "cause", None)  # RayTaskError keeps the worker's exception here
    inner = cause if isinstance(cause, BaseException) else exc
    lines = str(inner).strip().splitlines()
    return EngineError(
        f"the Ray job failed ({type(inner).__name__}: {lines[0] if lines else ''}); the chunks already "
        "written are kept, run again to resume"
    )


class _ChunkWorker:
    """One Ray actor: its own copy of the source and extractor, with its own onnxruntime session."""

    # A zoo error (bad input, unreadable image with on_error="raise") travels back in the output
    # row rather than as an exception: Ray wraps exceptions differently from version to version.

    def __init__(self, source: Any, extractor: Any, model: bytes | None, threads: int) -> None:
        self.source, self.extractor, self.error = source, None, ""
        try:
            for path in source.paths():
                if not path.exists():
                    import ray

                    raise InputError(
                        f"{path} is not on Ray node {ray.util.get_node_ip_address()}; the Ray engine reads "
                        "data where its actors run: put it on storage every node mounts at the same path, "
                        "or use engine='local'"
                    )
            self.extractor = _local_extractor(extractor, model, threads)
        except ZooError as exc:
            self.error = _reported(exc)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: dict[str, list] = {"lo": [], "consumed": [], "features": [], "skipped": [], "error": []}
        for lo, hi in zip(batch["lo"], batch["hi"]):
            first, consumed, blob, skipped, error = int(lo), 0, b"", [], self.error
            if not error:
                try:
                    first, consumed, blob, skipped = self._chunk(int(lo), int(hi))
                except ZooError as exc:
                    error = _reported(exc)
            for name, value in zip(rows, (first, consumed, blob, json.dumps(skipped), error)):
                rows[name].append(value)
        return {
            "lo": np.asarray(rows["lo"], dtype=np.int64),
            "consumed": np.asarray(rows["consumed"], dtype=np.int64),
            "features": np.asarray(rows["features"], dtype=object),
            "skipped": np.asarray(rows["skipped"], dtype=object),
            "error": np.asarray(rows["error"], dtype=object),
        }

    def _chunk(self, lo: int, hi: int) -> tuple[int, int, bytes, list[dict]]:
        chunks = self.source.chunks(lo, hi - lo)
        try:
            first, inputs, skipped = next(chunks)
        finally:
            chunks.close()
        blob = b""
        rows = self.source.rows(inputs)  # a dict of named inputs counts its samples, not its keys
        if rows:
            buffer = io.BytesIO()
            np.save(buffer, run_extractor(self.extractor, inputs, rows), allow_pickle=False)
            blob = buffer.getvalue()
        return first, rows + len(skipped), blob, skipped


def _local_extractor(extractor: Any, model: bytes | None, threads: int) -> Any:
    """This actor's extractor: explicit onnxruntime threads, the model from bytes when its file is elsewhere."""
    from zoo.extract import Extractor

    if not isinstance(extractor, Extractor):
        return extractor
    extractor.threads = threads  # the copy unpickled in this actor, not the caller's
    if model is not None and not extractor.model_path.is_file():
        extractor.open_session(model)  # a node without the cut file: the model comes from its bytes
    return extractor
